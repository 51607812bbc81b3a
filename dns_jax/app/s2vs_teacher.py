"""An S2VS teacher trained on the collection itself (`dns-jax build --teacher s2vs`): no labels and
no downloaded weights.

    path = train_s2vs_teacher(videos, 'WORK/features/features.hdf5', 'WORK/models/s2vs_teacher',
                              recipe=None, seed=0, backbone='resnet50_1by2_opennsfw',
                              pca='WORK/features/pca.npz')
    pretrained.load_teacher('s2vs:' + path)        # or pretrained.load('s2vs', path)

The network is trained self-supervised (configs/s2vs.py:teacher, dns_jax.training.s2vs) on the
frames of the collection's videos, with the build's own frozen extractor: the same backbone and
the same PCA whitening, so it reads the features the build scores (`features_hdf5` gives their
width). The work directory is a training workdir: rerunning the call resumes (frames, view bank
and steps already done are kept) and a finished run returns at once.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from dns_jax.features.extractor import load_extractor
from dns_jax.features.video import load_video
from dns_jax.training.config import ConfigError
from dns_jax.training.s2vs import default_s2vs_config, train_s2vs, validate_s2vs_config

RECIPE = "teacher"          # configs/s2vs.py:teacher


class TeacherInterrupted(RuntimeError):
    """Training was stopped (SIGTERM/SIGINT) after saving a checkpoint; rerun to resume."""


def _features_dims(path: str) -> int:
    import h5py
    found = []
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: found.append(obj.shape) if isinstance(obj, h5py.Dataset) and not found else None)
    if not found:
        raise ValueError(f"{path} holds no features")
    return int(found[0][-1])


def teacher_config(recipe=None, seed: int = 0, dims: Optional[int] = None, backbone: Optional[str] = None,
                   pca: Optional[str] = None, progress: bool = True) -> ml_collections.ConfigDict:
    """configs/s2vs.py:teacher with `recipe` (a ConfigDict or dict of s2vs keys, e.g.
    {'num_train_steps': 500}) written over it, then the build's settings: the features' width,
    backbone, PCA file and seed. Validated."""
    cfg = default_s2vs_config(RECIPE)
    if recipe is not None:
        given = recipe.to_dict() if hasattr(recipe, "to_dict") else dict(recipe)
        cfg = validate_s2vs_config(_deep_merge(cfg.to_dict(), given))
    if dims is not None:
        cfg.model.dims = cfg.extractor.dims = int(dims)
    if backbone:
        cfg.extractor.backbone = backbone
    if pca:
        cfg.extractor.pca = os.path.abspath(pca)
    cfg.seed = int(seed)
    cfg.progress_bar = bool(progress)
    return validate_s2vs_config(cfg)


def _deep_merge(base: dict, given: dict) -> dict:
    out = dict(base)
    for k, v in given.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def check_features(cfg, videos: Sequence[Tuple[str, str]], features_hdf5: str, min_cosine: float = 0.95) -> float:
    """The mean cosine between the features `features_hdf5` holds for the first of `videos` and
    the ones the teacher's frozen extractor computes from the same frames; a ConfigError when they
    differ (another backbone or PCA than the build's: the teacher would learn on other features
    than it scores)."""
    import h5py
    with h5py.File(features_hdf5, "r") as h5:
        vid, path = next(((v, p) for v, p in videos if v in h5), (None, None))
        if vid is None:
            raise ConfigError(f"none of the videos has features in {features_hdf5}")
        stored = h5[vid][:]
    e = cfg.extractor
    extractor = load_extractor(e.backbone, e.pca, e.dims, batch_size=len(stored),
                               precision=None if e.precision == "default" else e.precision)
    a = cfg.augmentation
    ours = extractor(load_video(path, fps=cfg.data.fps, rs_size=a.source_size, cc_size=a.frame_size))
    n = min(len(ours), len(stored))
    cosine = float(np.mean(np.sum(ours[:n] * stored[:n], axis=-1)))
    if cosine < min_cosine:
        raise ConfigError(f"the teacher's extractor ({e.backbone}, PCA {e.pca}) does not reproduce the features in "
                          f"{features_hdf5} (mean cosine {cosine:.3f} on video {vid!r}): pass the build's backbone "
                          "and PCA file")
    return cosine


def train_s2vs_teacher(videos: Sequence[Tuple[str, str]], features_hdf5: Optional[str], out_dir: str,
                       recipe=None, seed: int = 0, progress: bool = True,
                       log: Callable[[str], None] = print, *, backbone: Optional[str] = None,
                       pca: Optional[str] = None) -> str:
    """Train (or finish training) the S2VS teacher of a collection; returns `out_dir`, a checkpoint
    directory `pretrained.load('s2vs', out_dir)` reads.

    Args:
      videos: [(id, path)] of the collection (ids as in `features_hdf5`).
      features_hdf5: the collection's whitened features; their width is the network's input width
        (None: the recipe's model.dims).
      out_dir: the training work directory (created; rerun to resume).
      recipe: s2vs config keys written over configs/s2vs.py:teacher (None: that recipe as is).
      seed: the run's seed.
      progress, log: progress bars; where stage messages go.
      backbone: the build's backbone (None: the recipe's, the offline 'resnet50_1by2_opennsfw').
      pca: the build's whitening file (features/pca.npz or the official download). None: fitted
        here on the same frames, which matches the build's own fit only approximately.

    Raises ConfigError / S2VSDataError (ValueErrors) for a bad recipe, a backbone or PCA that does
    not reproduce `features_hdf5` (checked on one video when `pca` is given) or a collection that
    cannot be trained on (fewer usable videos than the batch); TeacherInterrupted when stopped.
    """
    dims = _features_dims(features_hdf5) if features_hdf5 else None
    cfg = teacher_config(recipe, seed, dims, backbone, pca, progress)
    if dims is not None and cfg.model.dims != dims:
        raise ConfigError(f"the features in {features_hdf5} are {dims}-d, the recipe's network {cfg.model.dims}-d")
    if pca is None:
        log("s2vs teacher: no PCA file given, fitting the whitening on the collection's frames")
    elif features_hdf5:
        check_features(cfg, videos, features_hdf5)
    result = train_s2vs(cfg, out_dir, videos=list(videos), say=log)
    if result.preempted:
        raise TeacherInterrupted(f"S2VS teacher training stopped at step {result.step} of "
                                 f"{cfg.num_train_steps} (checkpoint saved in {out_dir}); rerun to resume")
    last = result.history[-1] if result.history else None
    if last is not None:
        log(f"s2vs teacher: {result.step} steps on {len(result.ids)} videos, final loss {last['loss']:.3f}, "
            f"{last['clips_per_second']:.1f} clips/s")
    return out_dir
