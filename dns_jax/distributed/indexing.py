"""Distributed indexing of feature files on Ray: `index_ray`, the `dns-jax index --ray` path.

A Ray Data pipeline over the videos still to index:

    ids  ->  read (CPU tasks: features from the HDF5 / npz / npy / tfds stores, checked)
         ->  index (actors, one per GPU or CPU slot: the jitted fine, coarse and selector networks;
             each batch of `shard_size` videos is staged as one immutable shard, atomically)
    driver: one commit step (`Index.adopt`) lists every staged shard in the manifest.

The index is the one `build_index` makes (same ids, fine representations bit for bit, coarse
vectors and self-similarities to float rounding: they are computed in other batches), in another
shard order. Resumable: the driver holds the index's writer lock; a rerun first adopts what an
earlier run staged but did not commit (a killed driver), skips every committed id, and restarts
only the videos of unfinished batches (a killed worker leaves at most a temporary directory,
removed). A retried batch finds its shard staged already (shards are named by their ids), and a
video that still reaches the index twice is listed once (see `Index.adopt`). Unreadable videos are
recorded as skipped with the reason; a staged shard written by other networks or another index
format is set aside (staging/rejected/) with a one-line error, and the rest is committed.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from dns_jax.compile_cache import enable_compilation_cache
from dns_jax.datasets.stores import open_features, read_checked
from dns_jax.distributed.cluster import ClusterError, PortableNetwork, cluster, exit_once, require_ray, worker_resources
from dns_jax.index.build import BuildReport, iter_videos, open_for_writing
from dns_jax.index.store import Index, clean_staging, describe_network, stage_shard, staged_parts
from dns_jax.retrieval import coarse_index, scorer_for, self_similarities
from dns_jax.validation import FeatureError

_STORES: Dict[str, object] = {}       # feature stores opened by a reading worker process


def _read_features(batch: Dict[str, np.ndarray], paths: Sequence[str], dims: int) -> Dict[str, np.ndarray]:
    """Ray Data task: {'file', 'id'} -> {'id', 'features' (object array of [T, R, D]), 'error'}."""
    ids = [str(v) for v in batch["id"]]
    feats, errors = [], []
    for k, vid in zip(batch["file"], ids):
        path = paths[int(k)]
        try:
            if path not in _STORES:
                _STORES[path] = open_features(path)
            feats.append(read_checked(_STORES[path], vid, dims))
            errors.append("")
        except (FeatureError, OSError) as e:
            feats.append(np.zeros((0, 1, 1), np.float32))
            errors.append(str(e))
    out = np.empty(len(feats), object)
    out[:] = feats
    return {"id": np.array(ids, object), "features": out, "error": np.array(errors, object)}


class _IndexWorker:
    """Ray Data actor: the three networks, loaded once; one staged shard per batch."""

    def __init__(self, directory: str, fine: PortableNetwork, coarse: PortableNetwork, selector: PortableNetwork,
                 binary: str, fine_kind: str, fine_dims: int, faults: Optional[dict] = None):
        enable_compilation_cache()          # $DNS_JAX_COMPILATION_CACHE, as the command-line tools
        self.directory = directory
        self.fine, self.coarse, self.selector = fine.load(), coarse.load(), selector.load()
        self.scorer = scorer_for(self.fine, binary)
        self.networks = {"fine": describe_network(self.fine), "coarse": describe_network(self.coarse),
                         "selector": describe_network(self.selector)}
        self.kind, self.dims = fine_kind, fine_dims
        self.faults = faults or {}

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        ids, videos, skipped = [], [], {}
        for vid, x, err in zip(batch["id"], batch["features"], batch["error"]):
            if err:
                skipped[str(vid)] = str(err)
            else:
                ids.append(str(vid))
                videos.append(np.asarray(x))
        before = self.scorer.zero_codes_seen
        fine = self.scorer.index(videos) if videos else []
        coarse = coarse_index(self.coarse, videos) if videos else np.zeros((0, 1), np.float32)
        selfsim = self_similarities(self.selector, videos) if videos else np.zeros(0, np.float32)
        hook = None
        if self.faults.get("worker_exit_before_rename"):
            hook = lambda tmp: exit_once(self.faults["worker_exit_before_rename"])  # noqa: E731
        part = stage_shard(self.directory, ids, fine, coarse, selfsim, networks=self.networks,
                           fine_kind=self.kind, fine_dims=self.dims, skipped=skipped,
                           zero_codes=self.scorer.zero_codes_seen - before, before_rename=hook)
        return {"part": np.array([part], object), "videos": np.array([len(ids)]),
                "skipped": np.array([json.dumps(skipped)], object)}


def index_ray(directory: str, feature_files: Sequence[str], fine_model, coarse_model, selector_model, *,
              ids: Optional[Sequence[str]] = None, shard_size: int = 128, binary: str = "packed",
              address: Optional[str] = None, workers: Optional[int] = None, num_cpus: Optional[int] = None,
              worker_cpus: Optional[float] = None, progress: bool = True,
              log: Callable[[str], None] = print, _faults: Optional[dict] = None) -> BuildReport:
    """`build_index` on a Ray cluster: create or extend the index in `directory` (a path every
    worker can write: a shared filesystem on a multi-node cluster) with the videos of
    `feature_files`, reading them in Ray tasks and indexing them in `workers` actors (default: one
    per GPU, else one per CPU slot), `shard_size` videos per staged shard. `address`: a running
    cluster (`host:port`, `ray://host:port`, `auto`); None starts a local one of `num_cpus` CPUs.
    Returns a BuildReport (added, already indexed, skipped {id: reason})."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    require_ray()
    index, scorer = open_for_writing(directory, fine_model, coarse_model, selector_model, binary)
    report = BuildReport()
    before = len(index)
    try:
        clean_staging(directory)
        _adopt(index, staged_parts(directory), log, "staged by an earlier run")
        stores = [open_features(p) for p in feature_files]
        todo, order, missing = [], {}, {}
        for store, vid, reason in iter_videos(stores, ids):
            if vid in index or vid in order:
                report.already += 1
            elif reason is not None:
                missing[vid] = reason
            else:
                order[vid] = len(todo)
                todo.append({"file": stores.index(store), "id": vid})
        if todo:
            with cluster(address, num_cpus) as ray:
                _run_pipeline(ray, index, todo, order, feature_files, scorer, fine_model, coarse_model,
                              selector_model, binary, shard_size, workers, worker_cpus, progress, log, report,
                              _faults or {})
        if missing:
            index.add([], [], np.zeros((0, 1), np.float32), np.zeros(0, np.float32), skipped=missing)
            report.skipped.update(missing)
            for vid, reason in missing.items():
                log(f"skipped {vid}: {reason}")
        report.added = len(index) - before
    finally:
        index.close()
    return report


def _run_pipeline(ray, index: Index, todo: List[dict], order: Dict[str, int], feature_files, scorer, fine_model,
                  coarse_model, selector_model, binary, shard_size, workers, worker_cpus, progress, log,
                  report: BuildReport, faults: dict) -> None:
    batches = max(1, math.ceil(len(todo) / shard_size))
    res = worker_resources(ray, workers, worker_cpus, batches=batches)
    kind = "packed" if scorer.packed else "float32"
    dims = index.manifest["fine"]["dims"]
    ds = ray.data.from_items(todo, override_num_blocks=batches)
    ds = ds.map_batches(_read_features, batch_size=max(1, min(shard_size, 32)), num_cpus=res["reader_cpus"],
                        fn_kwargs={"paths": [os.path.abspath(p) for p in feature_files], "dims": fine_model.module.dims})
    ds = ds.map_batches(_IndexWorker, batch_size=shard_size, compute=ray.data.ActorPoolStrategy(size=res["workers"]),
                        num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
                        fn_constructor_kwargs=dict(directory=os.path.abspath(index.directory),
                                                   fine=PortableNetwork.of(fine_model),
                                                   coarse=PortableNetwork.of(coarse_model),
                                                   selector=PortableNetwork.of(selector_model),
                                                   binary=binary, fine_kind=kind, fine_dims=dims, faults=faults))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"indexing ({res['workers']} Ray workers)", unit="video", file=sys.stderr)
    parts = 0
    failure = None
    try:
        for row in ds.iter_rows():
            skipped = json.loads(row["skipped"])
            report.skipped.update(skipped)
            for vid, reason in skipped.items():
                log(f"skipped {vid}: {reason}")
            parts += 1
            if bar is not None:
                bar.update(int(row["videos"]) + len(skipped))
            if faults.get("driver_exit_after_parts") and parts >= faults["driver_exit_after_parts"]:
                os._exit(1)
    except Exception as e:                  # a worker that died for good, a lost node: keep what is staged
        failure = e
    finally:
        if bar is not None:
            bar.close()
    staged = sorted(staged_parts(index.directory), key=lambda p: _first_position(p, order))
    _adopt(index, staged, log, "")
    if failure is not None:
        raise ClusterError(f"the Ray job stopped before the end ({type(failure).__name__}: "
                           f"{' '.join(str(failure).split())[:300]}); the {len(index)} videos committed so far are "
                           "kept: run the same command again to finish") from None


def _first_position(part: str, order: Dict[str, int]) -> int:
    """Where the part's first video was in the input (parts are committed in input order)."""
    try:
        with open(os.path.join(part, "ids.json")) as f:
            ids = json.load(f)
    except OSError:
        return len(order)
    return min((order.get(v, len(order)) for v in ids), default=len(order))


def _adopt(index: Index, parts: List[str], log, when: str) -> None:
    if not parts:
        return
    rejected = index.adopt(parts)
    for part, reason in rejected.items():
        log(f"error: staged shard {os.path.basename(part)}{' (' + when + ')' if when else ''} was not added: "
            f"{reason}; moved to {os.path.join(index.directory, 'staging', 'rejected')}")
