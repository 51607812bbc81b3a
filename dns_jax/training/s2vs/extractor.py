"""The frozen frame-feature extractor of S2VS training: backbone, L3-iMAC, PCA whitening.

`extractor.pca` names the whitening (the official `pca_resnet50_vcdb_1M.pth`, a `dns-jax pca`
file, or a build's `features/pca.npz`); when it is empty the whitening is fitted here on the
training videos' own frames (the centre `frame_size` crop of every decoded frame, as DnS feature
extraction sees them) and kept in WORKDIR/pca.npz, and the whitened features of those frames are
written to WORKDIR/features.hdf5 (one `[T, R, D]` dataset per video, for evaluating the network).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterator, Sequence, Tuple

import numpy as np

from dns_jax.features.extractor import Extractor, FeatureExtractor, load_extractor
from dns_jax.features.pca import PCAFitter, apply_whitening, load_pca
from dns_jax.fileio import atomic_savez

PCA_FILE = "pca.npz"
FEATURES_FILE = "features.hdf5"


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The centre `size` x `size` square of frames [T, H, W, 3]."""
    h, w = frames.shape[1:3]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frames[:, top:top + size, left:left + size]


def plain_features(extractor: Extractor, frames, ids: Sequence[str], lengths: Sequence[int],
                   frame_size: int) -> Iterator[Tuple[str, np.ndarray]]:
    """(id, features [T, R, D]) of every video: its decoded frames, centre crop, no augmentation.
    The frames of consecutive videos share the extractor's fixed-size batches (short videos would
    otherwise each pay for a whole batch)."""
    def all_frames():
        for vid, n in zip(ids, lengths, strict=True):
            yield from centre_crop(frames.read(vid, np.arange(n)), frame_size)

    pending, queue = [], list(zip(ids, lengths, strict=True))
    for out in extractor.stream(all_frames()):
        pending.append(out)
        have = sum(len(p) for p in pending)
        while queue and have >= queue[0][1]:
            x = np.concatenate(pending)
            vid, n = queue.pop(0)
            yield vid, x[:n]
            pending, have = [x[n:]], have - n


def _write_features(path: str, features: Dict[str, np.ndarray]) -> None:
    import h5py
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as h5:
        for vid, x in features.items():
            h5.create_dataset(vid, data=x)
    os.replace(tmp, path)


def fit_collection_pca(raw: Extractor, frames, ids: Sequence[str], lengths: Sequence[int], frame_size: int,
                       dims: int, workdir: str, log: Callable[[str], None]) -> str:
    """Fit the whitening on the training videos (see the module docstring) unless WORKDIR/pca.npz
    exists; returns its path."""
    path = os.path.join(workdir, PCA_FILE)
    if os.path.exists(path):
        return path
    fitter, feats = PCAFitter(), {}
    for vid, x in plain_features(raw, frames, ids, lengths, frame_size):
        fitter.update(x)
        feats[vid] = x
    if fitter.count < 2:
        raise ValueError(f"only {fitter.count} region vectors to fit the PCA whitening on")
    pca = fitter.result()
    if dims > pca["mean"].shape[0]:
        raise ValueError(f"extractor.dims={dims} is more than the backbone's {pca['mean'].shape[0]}-d regions")
    if fitter.count < 2 * dims:
        log(f"pca: WARNING only {fitter.count} region vectors for a {dims}-d whitening: most components "
            "are noise; use fewer dims (model.dims, extractor.dims) for a collection this small")
    mean, dvt = (np.asarray(v) for v in (load_pca(pca, dims)[k] for k in ("mean", "DVt")))
    _write_features(os.path.join(workdir, FEATURES_FILE),
                    {vid: apply_whitening(x, mean, dvt) for vid, x in feats.items()})
    atomic_savez(path, **{k: np.asarray(v) for k, v in pca.items()})
    log(f"pca: whitening fitted on {fitter.count} region vectors of {len(feats)} videos -> {path}")
    return path


def load_frozen_extractor(backbone: str, pca, dims: int, batch_frames: int, precision: str
                          ) -> Tuple[FeatureExtractor, dict]:
    """(FeatureExtractor module with PCA, its variables) of the given weights."""
    ex = load_extractor(backbone, pca, dims, batch_size=batch_frames,
                        precision=None if precision == "default" else precision)
    return ex.model, ex.variables


def raw_extractor(backbone: str, batch_frames: int, precision: str) -> Extractor:
    """The extractor without whitening (region vectors of the backbone's width)."""
    return load_extractor(backbone, None, batch_size=batch_frames,
                          precision=None if precision == "default" else precision)
