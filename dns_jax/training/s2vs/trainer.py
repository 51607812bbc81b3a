"""`train_s2vs(config, workdir)`: self-supervised training of the S2VS network (configs/s2vs.py).

Stages, each resumable (rerunning the same command continues where it stopped):
  1. frames   every video decoded once at data.fps into WORKDIR/frames.hdf5 (frames.py)
  2. pca      the whitening fitted on the videos when extractor.pca is empty (extractor.py)
  3. bank     mode 'feature_bank': the augmented views extracted once (bank.py)
  4. train    the steps (step.py), a checkpoint every checkpoint_every_steps and at the end:
              orbax, the same layout as the distillation runs (training/resume.py), so
              `dns_jax.pretrained.load('s2vs', WORKDIR)` loads the latest network; metrics go to
              clu writers (WORKDIR/metrics.jsonl, TensorBoard); SIGTERM saves and stops.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax

from dns_jax import pretrained
from dns_jax.augmentation import build_overlay_bank
from dns_jax.features.extract_folder import list_videos
from dns_jax.models.chamfer_start import chamfer_start
from dns_jax.training import resume
from dns_jax.training.config import ConfigError
from dns_jax.training.metric_writers import create_writer, mean_scalars, publish_scalars
from dns_jax.training.s2vs import bank as bank_lib
from dns_jax.training.s2vs import extractor as ext
from dns_jax.training.s2vs.config import (
    NETWORK,
    augmentation_config,
    model_config,
    validate_s2vs_config,
)
from dns_jax.training.s2vs.data import (
    BankLoader,
    EpochSampler,
    PixelLoader,
    S2VSDataError,
    check_collection,
    video_list,
)
from dns_jax.training.s2vs.frames import FrameStore, build_frame_store
from dns_jax.training.s2vs.step import (
    frozen_variables,
    make_bank_fn,
    make_optimizer,
    make_s2vs_train_step,
)
from dns_jax.training.step import (
    TrainState,
    global_batch,
    init_state,
    make_mesh,
    shardings,
    state_from_variables,
)
from dns_jax.training.trainer import init_variables_from, initialize_distributed

log = logging.getLogger("dns_jax.training")

FRAMES_FILE = "frames.hdf5"
BANK_FILE = "view_bank.hdf5"


@dataclass
class S2VSResult:
    state: TrainState                   # final state (host arrays)
    step: int
    workdir: str
    preempted: bool = False
    history: List[Dict[str, float]] = field(default_factory=list)   # every logged line, with 'step'
    ids: List[str] = field(default_factory=list)                    # the videos trained on
    failed: List[tuple] = field(default_factory=list)               # (id, path, why) not decodable


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


@dataclass
class Collection:
    ids: List[str]
    lengths: List[int]
    frames: FrameStore
    failed: List[tuple]


def prepare_frames(cfg, workdir: str, videos: Optional[Sequence], is_main: bool, say: Callable) -> Collection:
    """Stage 1, and the checks of what it found (too few videos, videos shorter than the window)."""
    if videos is None:
        if not cfg.data.videos:
            raise ConfigError("data.videos is empty: give a folder of videos or a list file "
                              "(--config.data.videos=DIR)")
        videos = list_videos(cfg.data.videos)
    listing = video_list(videos, cfg.data.percentage)
    if not listing:
        raise S2VSDataError(f"no videos to train on in {cfg.data.videos or 'the given list'}")
    path = os.path.join(workdir, FRAMES_FILE)
    a = cfg.augmentation
    failed = []
    if is_main:
        failed = build_frame_store(listing, path, cfg.data.fps, a.source_size, cfg.data.jpeg_quality, say).failed
    _barrier("s2vs-frames")
    store = FrameStore(path)
    bad = {v for v, _, _ in failed}
    ids = [v for v, _ in listing if v not in bad]
    lengths = {v: store.length(v) for v in ids}
    check_collection(lengths, cfg.batch_size, a.window_size, cfg.data.short_videos, cfg.data.fps)
    return Collection(ids, [lengths[v] for v in ids], store, failed)


def prepare_extractor(cfg, workdir: str, col: Collection, is_main: bool, say: Callable):
    """Stage 2: (FeatureExtractor module, its variables, the PCA file) with the configured or a
    fitted PCA."""
    e = cfg.extractor
    pca = e.pca
    if not pca:
        pca = os.path.join(workdir, ext.PCA_FILE)
        if is_main and not os.path.exists(pca):
            raw = ext.raw_extractor(e.backbone, e.batch_frames, e.precision)
            ext.fit_collection_pca(raw, col.frames, col.ids, col.lengths, cfg.augmentation.frame_size, e.dims,
                                   workdir, say)
        _barrier("s2vs-pca")
    module, variables = ext.load_frozen_extractor(e.backbone, pca, e.dims, e.batch_frames, e.precision)
    return module, variables, pca


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _settings(cfg, pca_path: str) -> Dict[str, Any]:
    """What the view bank depends on: the PCA by its content (not where it lies); not the label
    mode (targets are built at each step) nor the extractor's batch size."""
    augmentation = {k: v for k, v in cfg.augmentation.to_dict().items() if k != "labels"}
    extractor = {k: v for k, v in cfg.extractor.to_dict().items() if k != "batch_frames"}
    extractor["pca"] = _file_digest(pca_path)
    return {"augmentation": augmentation, "extractor": extractor, "fps": cfg.data.fps,
            "jpeg_quality": cfg.data.jpeg_quality, "seed": cfg.seed, "batch_size": cfg.feature_bank.batch_size}


def _check_batch(cfg) -> None:
    n = jax.device_count()
    if cfg.batch_size % n:
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {n} devices")


def _loader(cfg, workdir, col, extractor, frozen, pca_path, aug_cfg, overlays, is_main, say, closers):
    """Stage 3 (the view bank) and the grain loader of the configured mode."""
    sampler = EpochSampler(len(col.ids), cfg.batch_size, cfg.seed)
    kw = dict(num_threads=cfg.data.num_threads, prefetch=cfg.data.prefetch,
              process_index=jax.process_index(), process_count=jax.process_count())
    if cfg.mode == "pixels":
        return PixelLoader(col.frames, col.ids, col.lengths, cfg.augmentation.source_frames, sampler, cfg.seed, **kw)
    path = os.path.join(workdir, BANK_FILE)
    if is_main:
        fn = make_bank_fn(extractor, aug_cfg, overlays, cfg.extractor.batch_frames, frozen)
        bank_lib.build_view_bank(path, col.frames, col.ids, col.lengths, cfg.feature_bank.views,
                                 cfg.feature_bank.batch_size, cfg.augmentation.source_frames, cfg.seed,
                                 _settings(cfg, pca_path), fn, say, progress=cfg.progress_bar)
    _barrier("s2vs-bank")
    bank = bank_lib.ViewBank(path, cfg.feature_bank.views, len(col.ids))
    closers.append(bank)
    return BankLoader(bank, sampler, cfg.seed, **kw)


def train_s2vs(config, workdir: str, videos: Optional[Sequence] = None,
               say: Optional[Callable[[str], None]] = None) -> S2VSResult:
    """Train S2VS as `config` says (see the module docstring); `videos` ([(id, path)]) replaces
    config.data.videos; `say` receives the stage messages (default: the log)."""
    cfg = validate_s2vs_config(config)
    say = say or log.info
    initialize_distributed(cfg)
    _check_batch(cfg)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    model_cfg = model_config(cfg)
    module = pretrained.build_module(NETWORK, model_cfg)
    meta = resume.network_meta(NETWORK, model_cfg)
    ckpt = resume.TrainCheckpointer(workdir, keep=cfg.keep_checkpoints)
    col = None
    closers: List[Any] = [ckpt]
    try:
        ckpt.check_network(NETWORK, model_cfg)
        initial = init_variables_from(cfg, module, model_cfg) if cfg.init_from else None
        col = prepare_frames(cfg, workdir, videos, is_main, say)
        closers.append(col.frames)
        finished = (ckpt.latest_step() or 0) >= cfg.num_train_steps
        aug_cfg = augmentation_config(cfg)
        overlays = build_overlay_bank(seed=cfg.seed) if "frame" in aug_cfg.strong.enabled else None
        mesh = make_mesh()
        replicated, _ = shardings(mesh)
        extractor, frozen, loader = None, {}, None
        if not finished:
            extractor, ex_vars, pca_path = prepare_extractor(cfg, workdir, col, is_main, say)
            frozen = frozen_variables(ex_vars, mesh)
            loader = _loader(cfg, workdir, col, extractor, frozen, pca_path, aug_cfg, overlays, is_main, say,
                             closers)
        tx = make_optimizer(cfg)
        base = jax.random.PRNGKey(cfg.seed)
        state = (state_from_variables(initial, tx) if initial is not None
                 else init_state(module, tx, jax.random.fold_in(base, 0)))
        if initial is None and cfg.init == "visil_f":       # the network starts computing ViSiL_f
            state = state_from_variables(chamfer_start({"params": state.params, **state.model_state},
                                                       cfg.init_noise), tx)
        state = jax.device_put(state, replicated)
        if ckpt.latest_step() is not None:
            state, data_state = ckpt.restore(state, replicated)
            if data_state.get("seed") != cfg.seed:
                raise resume.TrainingError(f"{workdir} was trained with seed {data_state.get('seed')}, "
                                           f"this config has seed {cfg.seed}")
            say(f"resumed {workdir} from step {int(state.step)}")
        step_fn = make_s2vs_train_step(module, tx, mesh, cfg, aug_cfg,
                                       extractor if cfg.mode == "pixels" else None,
                                       overlays if cfg.mode == "pixels" else None)
        step_rng = jax.device_put(jax.random.fold_in(base, 1), replicated)
        result = _loop(cfg, workdir, state, loader, step_fn, step_rng, frozen, mesh, ckpt, meta, is_main, col)
    finally:
        for c in reversed(closers):
            c.close()
    return result


def _loop(cfg, workdir, state, loader, step_fn, step_rng, frozen, mesh, ckpt, meta, is_main, col) -> S2VSResult:
    total = cfg.num_train_steps
    step = int(state.step)
    result = S2VSResult(state, step, workdir, ids=list(col.ids), failed=list(col.failed))
    if step >= total:
        result.state = jax.device_get(state)
        return result
    writer = create_writer(workdir, is_main)
    guard = resume.PreemptionGuard()
    pbar = None
    if cfg.progress_bar and is_main:
        from tqdm import tqdm
        pbar = tqdm(total=total, initial=step, unit="step", desc=NETWORK, dynamic_ncols=True)

    def save():
        ckpt.save(state, meta, {"iterator": {"next_index": int(step)}, "seed": cfg.seed, "step": int(step),
                                "mode": cfg.mode})

    pending, t_log, steps_logged = [], time.time(), 0
    batches = loader.iterator(step)
    try:
        for batch in batches:
            state, metrics = step_fn(state, global_batch(batch, mesh), step_rng, frozen)
            step += 1
            pending.append(metrics)
            steps_logged += 1
            if pbar is not None:
                pbar.update(1)
            if step % cfg.log_every_steps == 0 or step == total:
                host = jax.device_get(pending)
                scalars = mean_scalars(host)
                scalars["clips_per_second"] = steps_logged * cfg.batch_size / max(time.time() - t_log, 1e-9)
                scalars["epoch"] = step / loader.sampler.steps_per_epoch
                publish_scalars(writer, step, scalars, pbar)
                result.history.append({"step": step, **scalars})
                pending, t_log, steps_logged = [], time.time(), 0
            if step % cfg.checkpoint_every_steps == 0:
                save()
            if guard.stop(step):
                result.preempted = True
                break
            if step >= total:
                break
        save()
        ckpt.wait()
    finally:
        batches.close()
        guard.restore()
        if pbar is not None:
            pbar.close()
        writer.close()
    result.state = jax.device_get(state)
    result.step = step
    return result
