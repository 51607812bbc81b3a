"""`train_and_evaluate(config, workdir)`: distillation of a DnS student, or selector training.

The run resumes from the latest checkpoint in `workdir` (parameters, optimizer state, step, input
position), writes metrics to TensorBoard / metrics.jsonl, validates when configured and keeps the
best network in WORKDIR/best, and saves on SIGTERM before stopping.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from dns_jax import pretrained
from dns_jax.datasets import synthetic
from dns_jax.datasets.stores import FeatureStore, MemoryFeatures, global_descriptors, open_features
from dns_jax.training import pipeline, resume
from dns_jax.training.config import ConfigError, validate_config
from dns_jax.training.evaluators import FIVREvaluator, SelectorEvaluator, SyntheticEvaluator
from dns_jax.training.metric_writers import (  # clu: needed only to train
    create_writer,
    mean_scalars,
    publish_scalars,
)
from dns_jax.training.pairs import PairFileError, PairSet, drop_missing, read_pairs, selector_labels, write_pairs
from dns_jax.training.step import (
    TrainState,
    global_batch,
    init_state,
    make_loss_fn,
    make_mesh,
    make_optimizer,
    make_train_step,
    shardings,
    state_from_variables,
)
from dns_jax.training.teacher import select_pairs, teacher_scorer

log = logging.getLogger("dns_jax.training")


@dataclass
class TrainResult:
    state: TrainState                 # final state (host arrays)
    step: int
    steps_per_epoch: int
    preempted: bool = False
    validation: Dict[str, float] = field(default_factory=dict)    # last validation
    best: Optional[Dict[str, Any]] = None                          # {'metric', 'value', 'step'}
    history: List[Dict[str, float]] = field(default_factory=list)  # every validation, with 'step'


# ---------------------------------------------------------------------------------------------
# setup helpers

def initialize_distributed(cfg) -> None:
    """Join the multi-host job described by cfg.distributed (no-op when off or already joined)."""
    d = cfg.distributed
    if not d.initialize or jax.distributed.is_initialized():
        return
    kwargs = {}
    if d.coordinator_address:
        kwargs["coordinator_address"] = d.coordinator_address
    if d.num_processes > 0:
        kwargs["num_processes"] = d.num_processes
    if d.process_id >= 0:
        kwargs["process_id"] = d.process_id
    # CPU processes exchange gradients through gloo (the default of recent jax; older ones had none)
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d of %d devices local", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def _model_kwargs(cfg) -> Dict[str, Any]:
    kw = dict(cfg.model.to_dict())
    if "bits" in kw and not kw["bits"]:
        kw.pop("bits")
    return kw


def _tag(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(spec)) or spec)[-60:]


def _log_missing(workdir, report, pair_source, store, max_fraction, is_main):
    if not report.missing:
        return
    msg = report.message(pair_source, store.source)
    if report.named and len(report.missing) / report.named > max_fraction:
        raise PairFileError(msg + f". That is more than max_missing_fraction={max_fraction:g} of the "
                            "videos: is this the right feature file?")
    log.warning(msg)
    if is_main:
        path = os.path.join(workdir, "missing_videos.txt")
        with open(path, "w") as f:
            f.write("\n".join(report.missing) + "\n")
        log.warning("the full list of missing videos is in %s", path)


def _teacher_pairs(cfg, workdir, store: FeatureStore, ids: List[str], is_main: bool, extra_meta) -> PairSet:
    """Pairs of `ids` scored by cfg.teacher, cached in WORKDIR/pairs/ (recomputed if the
    settings recorded in the file differ)."""
    tj = cfg.teacher_job
    path = os.path.join(workdir, "pairs", f"{cfg.dataset}_{_tag(cfg.teacher)}.json.gz")
    wanted = {"teacher_spec": cfg.teacher, **extra_meta, **tj.to_dict()}
    if os.path.exists(path):
        cached = read_pairs(path)
        if all(cached.meta.get(k) == v for k, v in wanted.items()):
            return cached
    r, d = store.shape()
    scorer = teacher_scorer(cfg.teacher, dims=d, batch_size=tj.batch_size)
    ps = select_pairs(store, scorer, ids, tj.num_candidates, tj.num_positives, tj.positive_threshold,
                      tj.num_negatives, seed=cfg.seed, log=log.info)
    ps.meta.update(wanted)
    if is_main:
        write_pairs(ps, path)
    return ps


@dataclass
class Data:
    store: FeatureStore
    sampler: Any
    kind: str
    evaluator: Any = None


def _student_data(cfg, workdir, is_main, module) -> Data:
    evaluator = None
    if cfg.dataset == "synthetic":
        col = synthetic.from_config(cfg.synthetic)
        store = MemoryFeatures(col.videos, source="synthetic collection")
        pair_source = cfg.pairs or "teacher pairs"
        pairs = (read_pairs(cfg.pairs) if cfg.pairs else
                 _teacher_pairs(cfg, workdir, store, col.train_ids, is_main,
                                {"synthetic": cfg.synthetic.to_dict()}))
        if cfg.validation.dataset == "synthetic":
            scorer = teacher_scorer(cfg.teacher, dims=cfg.synthetic.dims, batch_size=cfg.validation.batch_size)
            evaluator = SyntheticEvaluator(cfg.network, module, store, col.holdout_ids, col.family, scorer,
                                           cfg.validation.batch_size)
    else:
        store = open_features(cfg.features)
        pair_source = cfg.pairs or "teacher pairs"
        pairs = read_pairs(cfg.pairs) if cfg.pairs else _teacher_pairs(
            cfg, workdir, store, sorted(store.ids()), is_main, {"features": os.path.abspath(cfg.features)})
    pairs, report = drop_missing(pairs, store)
    _log_missing(workdir, report, pair_source, store, cfg.max_missing_fraction, is_main)
    if cfg.validation.dataset == "fivr5k":
        evaluator = FIVREvaluator(cfg.network, module, cfg.validation.features, cfg.validation.batch_size)
    sampler = pipeline.TripletSampler(pairs, seed=cfg.seed, trainset_percentage=cfg.trainset_percentage)
    return Data(store, sampler, "student", evaluator)


def _selector_data(cfg, workdir, is_main, module) -> Data:
    sc = cfg.selector
    if cfg.dataset == "synthetic":
        # fine similarities: the teacher; coarse ones: cosine of mean-pooled descriptors mapped
        # to [0, 1] like the targets of a coarse student (a stand-in coarse network), so the label
        # marks pairs the cheap similarity gets wrong
        col = synthetic.from_config(cfg.synthetic)
        store = MemoryFeatures(col.videos, source="synthetic collection")
        fine = (read_pairs(sc.fine_pairs) if sc.fine_pairs else
                _teacher_pairs(cfg, workdir, store, col.train_ids, is_main, {"synthetic": cfg.synthetic.to_dict()}))
        fine, report = drop_missing(fine, store)
        _log_missing(workdir, report, "the fine pair file", store, cfg.max_missing_fraction, is_main)
        if sc.coarse_pairs:
            cp, _ = drop_missing(read_pairs(sc.coarse_pairs), store)
            coarse = {(cp.index[q], cp.index[t]): s for q, t, s, _ in cp.all_pairs()}
        else:
            ids = fine.video_ids()
            desc = dict(zip(ids, global_descriptors(store, ids)))
            coarse = {(fine.index[q], fine.index[t]): float(desc[fine.index[q]] @ desc[fine.index[t]]) / 2 + 0.5
                      for q, t, _, _ in fine.all_pairs()}
    else:
        store = open_features(cfg.features)
        fine, report = drop_missing(read_pairs(sc.fine_pairs), store)
        _log_missing(workdir, report, sc.fine_pairs, store, cfg.max_missing_fraction, is_main)
        cp, report = drop_missing(read_pairs(sc.coarse_pairs), store)
        _log_missing(workdir, report, sc.coarse_pairs, store, cfg.max_missing_fraction, is_main)
        coarse = {(cp.index[q], cp.index[t]): s for q, t, s, _ in cp.all_pairs()}
    items, labels, unmatched = selector_labels(fine, coarse, sc.threshold, sc.get("target", "gap"))
    if unmatched:
        log.warning("%d fine pairs have no coarse similarity; skipped", unmatched)
    if not items:
        raise PairFileError("no selector pair has both a fine and a coarse similarity")
    order = np.random.default_rng(42).permutation(len(items))   # official split: 3 %, seed 42
    n_val = int(math.ceil(len(items) * sc.val_size)) if sc.val_size > 0 else 0
    val, train = order[:n_val], order[n_val:]
    sampler = pipeline.SelectorSampler([items[i] for i in train], [labels[i] for i in train],
                                       sc.pairs_per_class, seed=cfg.seed)
    evaluator = None
    if cfg.validation.dataset == "selector" and n_val:
        evaluator = SelectorEvaluator(module, store, [items[i] for i in val], [labels[i] for i in val],
                                      cfg.validation.batch_size)
    log.info("selector: %d training pairs (%d positive), %d held out", len(train),
             int(sum(labels[i] for i in train)), n_val)
    return Data(store, sampler, "selector", evaluator)


def _check_dims(cfg, store: FeatureStore):
    r, d = store.shape()
    if d != cfg.model.dims:
        raise ConfigError(f"the features are {d}-d ({store.source}) but model.dims is {cfg.model.dims}; "
                          f"set --config.model.dims={d}")


def _restored_position(workdir, cfg, loader, data_state) -> Dict[str, int]:
    """The grain iterator state saved with a checkpoint (or, for checkpoints that only hold
    (epoch, batch), the equivalent one), checked against this run's seed and epoch length."""
    if data_state.get("seed") != cfg.seed:
        raise resume.TrainingError(
            f"{workdir} was trained with seed {data_state.get('seed')}, this config has seed {cfg.seed}")
    saved = pipeline.Position(int(data_state["epoch"]), int(data_state["batch"]))
    if "iterator" not in data_state:
        return {"next_index": loader.index_of(saved)}
    state = {"next_index": int(data_state["iterator"]["next_index"])}
    if loader.position_of(state["next_index"]) != saved:
        log.warning("%s was saved at epoch %d, batch %d, which is batch %d of this run's epochs of %d "
                    "batches (batch size or collection changed?): continuing from there", workdir,
                    saved.epoch, saved.batch, state["next_index"], loader.steps_per_epoch)
    return state


def _shapes(variables) -> List[Tuple[str, Tuple[int, ...]]]:
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    return [(jax.tree_util.keystr(k), tuple(np.shape(v))) for k, v in leaves]


def init_variables_from(cfg, module, model_kwargs) -> Dict[str, Any]:
    """The Flax variables of the checkpoint / .pth in cfg.init_from, checked against `module`
    (its shapes, without initialising it)."""
    network = cfg.network
    init = pretrained.load(network, cfg.init_from, **{k: v for k, v in model_kwargs.items() if k == "precision"})
    variables = dict(init.variables)
    if _shapes(variables) != _shapes(pretrained.abstract_variables(module)):
        raise ConfigError(f"init_from {cfg.init_from!r} holds a {network} of another shape "
                          f"({init.config}) than model {model_kwargs}")
    log.info("initialised from %s", cfg.init_from)
    return variables


_DEFAULT_METRIC = {"fivr5k": "DSVR", "synthetic": "spearman", "selector": "accuracy"}


def _lower_is_better(metric: str) -> bool:
    return metric.startswith("l1") or "loss" in metric


# ---------------------------------------------------------------------------------------------
# the run

def train_and_evaluate(config, workdir: str) -> TrainResult:
    """Train `config.network` as configured; checkpoints, metrics and pair files go to `workdir`."""
    cfg = validate_config(config)
    initialize_distributed(cfg)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    network = cfg.network

    model_kwargs = _model_kwargs(cfg)
    module = pretrained.build_module(network, model_kwargs)
    meta = resume.network_meta(network, model_kwargs)
    ckpt = resume.TrainCheckpointer(workdir, keep=cfg.keep_checkpoints)
    tx = make_optimizer(cfg.learning_rate, cfg.weight_decay)
    base = jax.random.PRNGKey(cfg.seed)
    try:
        ckpt.check_network(network, model_kwargs)   # before any expensive data preparation
        initial = init_variables_from(cfg, module, model_kwargs) if cfg.init_from else None
        data = (_selector_data if network == "selector" else _student_data)(cfg, workdir, is_main, module)
        _check_dims(cfg, data.store)
    except BaseException:
        ckpt.close()
        raise

    state = (state_from_variables(initial, tx) if initial is not None
             else init_state(module, tx, jax.random.fold_in(base, 0)))
    mesh = make_mesh()
    replicated, _ = shardings(mesh)
    state = jax.device_put(state, replicated)
    num_devices = jax.device_count()
    global_rows = int(math.ceil(cfg.batch_size / num_devices) * num_devices)
    loader = pipeline.BatchLoader(
        data.sampler, data.store, data.kind, cfg.batch_size, global_rows, cfg.length_buckets,
        seed=cfg.seed, augmentation=cfg.augmentation and data.kind == "student",
        max_augmented_frames=cfg.max_augmented_frames, num_threads=cfg.num_threads,
        prefetch=cfg.prefetch, process_index=jax.process_index(), process_count=jax.process_count())
    steps_per_epoch = loader.steps_per_epoch
    data_position = {"next_index": 0}       # the grain iterator's state
    if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(state, replicated)
        data_position = _restored_position(workdir, cfg, loader, data_state)
        pos = loader.position_of(data_position["next_index"])
        log.info("resumed %s from step %d (epoch %d, batch %d)", workdir, int(state.step), pos.epoch, pos.batch)
    total = cfg.num_train_steps if cfg.num_train_steps > 0 else cfg.num_epochs * steps_per_epoch
    eval_every = cfg.validation.every_steps if cfg.validation.every_steps > 0 else steps_per_epoch
    metric = cfg.validation.metric or _DEFAULT_METRIC.get(cfg.validation.dataset, "")

    step_fn = make_train_step(make_loss_fn(network, module, cfg.r_parameter), tx, mesh)
    step_rng = jax.device_put(jax.random.fold_in(base, 1), replicated)
    writer = create_writer(workdir, is_main)
    guard = resume.PreemptionGuard()
    best = (ckpt.best_meta() or {}).get("validation")
    result = TrainResult(state, int(state.step), steps_per_epoch, best=best)

    def save(iterator_state):
        pos = loader.position_of(iterator_state["next_index"])
        ckpt.save(state, meta, {**pos.to_dict(), "iterator": dict(iterator_state), "seed": cfg.seed,
                                "step": int(state.step)})

    def validate():
        nonlocal best
        if data.evaluator is None:
            return
        t0 = time.time()
        values = data.evaluator.run(state.variables())
        writer.write_scalars(int(state.step), {f"val/{k}": v for k, v in values.items()})
        log.info("step %d validation (%.1fs): %s", int(state.step), time.time() - t0,
                 json.dumps({k: round(v, 4) for k, v in values.items()}))
        result.validation = values
        result.history.append({"step": int(state.step), **values})
        if metric not in values:
            raise ConfigError(f"validation.metric {metric!r} is not one of {sorted(values)}")
        value = values[metric]
        better = best is None or (value < best["value"] if _lower_is_better(metric) else value > best["value"])
        if better:
            best = {"metric": metric, "value": float(value), "step": int(state.step)}
            ckpt.save_best(state, {**meta, "validation": best})
            result.best = best

    rate_name = "pairs_per_second" if data.kind == "selector" else "triplets_per_second"
    step = int(state.step)
    pbar = None
    if cfg.progress_bar and is_main:
        from tqdm import tqdm
        pbar = tqdm(total=total, initial=step, unit="step", desc=network, dynamic_ncols=True)
    pending: List[Dict[str, jax.Array]] = []
    rows, t_log = 0, time.time()
    position_now = data_position
    batches = None
    try:
        if step < total:
            batches = iter(loader)
            batches.set_state(data_position)
            for batch in batches:
                state, metrics = step_fn(state, global_batch(batch.arrays, mesh), step_rng)
                step += 1
                position_now = batches.get_state()
                pending.append(metrics)
                rows += batch.num_real
                if pbar is not None:
                    pbar.update(1)
                if step % cfg.log_every_steps == 0 or step == total:
                    host = jax.device_get(pending)
                    scalars = mean_scalars(host)
                    elapsed = max(time.time() - t_log, 1e-9)
                    scalars[rate_name] = rows / elapsed
                    scalars["epoch"] = batch.epoch + (batch.index + 1) / steps_per_epoch
                    publish_scalars(writer, step, scalars, pbar)
                    pending, rows, t_log = [], 0, time.time()
                if step % cfg.checkpoint_every_steps == 0:
                    save(position_now)
                if step % eval_every == 0 and step < total:
                    validate()
                if guard.stop(step):
                    result.preempted = True
                    break
                if step >= total:
                    break
        if not result.preempted:
            validate()
        save(position_now)
        ckpt.wait()
    finally:
        if batches is not None:
            batches.close()   # stops grain's reader threads
        guard.restore()
        if pbar is not None:
            pbar.close()
        writer.close()
        ckpt.close()
    result.state = jax.device_get(state)
    result.step = step
    return result
