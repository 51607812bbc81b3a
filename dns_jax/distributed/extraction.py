"""Distributed feature extraction on Ray: video files -> one HDF5 feature file.

    summary = extract_features_ray(videos, 'features.hdf5', extractor, settings={...}, address=None)

The same contract as `features.extract_folder.extract_to_hdf5` (same file layout, settings check,
resumable, failed videos listed and not fatal), run as a Ray Data pipeline:

    (id, path)  ->  decode (CPU tasks: PyAV, 1 frame per second, resize and crop)
                ->  extract (actors, one per GPU or CPU slot: the jitted extractor; each batch of
                    `part_size` videos is staged as one part: <output>.parts/part-<hash>/,
                    written atomically, with the settings it was extracted with)
    driver: commits the parts into the HDF5 file (each video atomically, as extract_to_hdf5 does),
            in input order, then deletes them.

Features are the single-process ones, bit for bit (an Extractor runs the same fixed-size frame
batches). Resumable: ids already in the file are skipped; a rerun first commits the parts an
earlier (killed) run staged; a killed worker leaves at most a temporary directory. A part staged
with other settings is set aside (<output>.parts/rejected/) with a one-line error.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import dns_jax
from dns_jax.compile_cache import enable_compilation_cache
from dns_jax.distributed.cluster import (
    ClusterError,
    PortableExtractor,
    cluster,
    exit_once,
    require_ray,
    worker_resources,
)
from dns_jax.features.extract_folder import SCRATCH, Summary, has_features, prepare_output, write_features_atomic
from dns_jax.features.extractor import Extractor
from dns_jax.features.video import VideoError, iter_frames
from dns_jax.fileio import atomic_write_json, fsync_dir

PART_META = "part.json"


def parts_dir(output) -> str:
    return os.fspath(output) + ".parts"


def _decode(batch: Dict[str, np.ndarray], load_kwargs: dict) -> Dict[str, np.ndarray]:
    """Ray Data task: {'id', 'path'} -> + 'frames' (object array of [T, H, W, 3] uint8), 'error'."""
    frames, errors = [], []
    for path in batch["path"]:
        try:
            got = list(iter_frames(str(path), **load_kwargs))
            if not got:
                raise VideoError(f"no frames could be decoded from {path}")
            sizes = {f.shape for f in got}
            if len(sizes) > 1:
                raise VideoError(f"{path}: the frame size changes mid-stream {sorted(sizes)[:2]}; pass cc_size "
                                 "to crop the frames alike")
            frames.append(np.stack(got))
            errors.append("")
        except (VideoError, OSError, ValueError) as e:
            frames.append(np.zeros((0, 1, 1, 3), np.uint8))
            errors.append(f"{type(e).__name__}: {e}")
    out = np.empty(len(frames), object)
    out[:] = frames
    return {"id": batch["id"], "path": batch["path"], "frames": out, "error": np.array(errors, object)}


def _run_extractor(extractor, frames: np.ndarray, chunk_frames: int) -> np.ndarray:
    """Features of one decoded video, as extract_to_hdf5 computes them (an Extractor on its fixed
    batches; another callable on chunks of `chunk_frames` frames)."""
    if isinstance(extractor, Extractor):
        return np.asarray(extractor(frames), np.float32)
    out = [np.asarray(extractor(frames[s:s + chunk_frames])) for s in range(0, frames.shape[0], chunk_frames)]
    return np.concatenate(out).astype(np.float32, copy=False)


def _part_name(ids: Sequence[str]) -> str:
    return "part-" + hashlib.sha1(json.dumps(list(map(str, ids))).encode()).hexdigest()[:20]


class _ExtractWorker:
    """Ray Data actor: the extractor, built once; one staged part per batch."""

    def __init__(self, output: str, extractor: PortableExtractor, settings_json: str, chunk_frames: int,
                 faults: Optional[dict] = None):
        enable_compilation_cache()          # $DNS_JAX_COMPILATION_CACHE, as the command-line tools
        self.root = parts_dir(output)
        self.extractor = extractor.load()
        self.settings_json = settings_json
        self.chunk_frames = chunk_frames
        self.faults = faults or {}

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        ids = [str(v) for v in batch["id"]]
        name = _part_name(ids)
        final = os.path.join(self.root, name)
        done, failed, frames = [], [], 0
        if not os.path.exists(os.path.join(final, PART_META)):
            tmp = os.path.join(self.root, f".tmp-{name}-{os.getpid()}-{time.monotonic_ns()}")
            os.makedirs(tmp)
            for k, (vid, path, x, err) in enumerate(zip(ids, batch["path"], batch["frames"], batch["error"])):
                if not err:
                    try:
                        feats = _run_extractor(self.extractor, np.asarray(x), self.chunk_frames)
                    except (VideoError, ValueError) as e:
                        err = f"{type(e).__name__}: {e}"
                if err:
                    failed.append([vid, str(path), str(err)])
                    continue
                with open(os.path.join(tmp, f"{len(done)}.npy"), "wb") as f:
                    np.save(f, feats)
                    f.flush()
                    os.fsync(f.fileno())
                done.append(vid)
                frames += feats.shape[0]
            atomic_write_json(os.path.join(tmp, PART_META), {"settings": self.settings_json, "ids": done,
                                                            "failed": failed, "dns_jax_version": dns_jax.__version__},
                              durable=True)
            fsync_dir(tmp)
            if self.faults.get("worker_exit_before_rename"):
                exit_once(self.faults["worker_exit_before_rename"])
            try:
                os.rename(tmp, final)
            except OSError:              # staged meanwhile by a retried task
                shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(self.root)
        with open(os.path.join(final, PART_META)) as f:
            meta = json.load(f)
        return {"part": np.array([final], object), "videos": np.array([len(meta["ids"])]),
                "failed": np.array([json.dumps(meta["failed"])], object)}


def staged_feature_parts(output) -> List[str]:
    root = parts_dir(output)
    if not os.path.isdir(root):
        return []
    for n in os.listdir(root):
        if n.startswith(".tmp-"):
            shutil.rmtree(os.path.join(root, n), ignore_errors=True)
    return [os.path.join(root, n) for n in sorted(os.listdir(root))
            if n.startswith("part-") and os.path.exists(os.path.join(root, n, PART_META))]


def commit_parts(h5, output, parts: Sequence[str], settings_json: str, compression, log) -> tuple:
    """Write the staged parts' videos into the open HDF5 file (each atomically; ids already there
    are left alone), then delete the parts. Returns (extracted, frames, failed [(id, path, msg)]).
    A part extracted with other settings is moved to <output>.parts/rejected/ with an error line."""
    extracted, frames, failed = 0, 0, []
    for part in parts:
        with open(os.path.join(part, PART_META)) as f:
            meta = json.load(f)
        if meta.get("settings") != settings_json:
            dest = os.path.join(parts_dir(output), "rejected")
            os.makedirs(dest, exist_ok=True)
            shutil.rmtree(os.path.join(dest, os.path.basename(part)), ignore_errors=True)
            os.replace(part, os.path.join(dest, os.path.basename(part)))
            log(f"error: staged part {os.path.basename(part)} was extracted with other settings "
                f"({meta.get('settings')}, now {settings_json}); not added, moved to {dest}")
            continue
        for k, vid in enumerate(meta["ids"]):
            if has_features(h5, vid):
                continue
            feats = np.load(os.path.join(part, f"{k}.npy"))
            write_features_atomic(h5, vid, feats, compression)
            extracted += 1
            frames += feats.shape[0]
        failed.extend((v, p, m) for v, p, m in meta["failed"] if not has_features(h5, v))
        h5.flush()
        shutil.rmtree(part, ignore_errors=True)
    if SCRATCH in h5:                       # empty after the last rename
        del h5[SCRATCH]
    return extracted, frames, failed


def extract_features_ray(videos: Sequence, output, extractor: Callable, *, settings: Optional[dict] = None,
                         load_kwargs: Optional[dict] = None, chunk_frames: int = 256, part_size: int = 8,
                         compression=None, address: Optional[str] = None, workers: Optional[int] = None,
                         num_cpus: Optional[int] = None, worker_cpus: Optional[float] = None,
                         progress: bool = True, log: Callable[[str], None] = print,
                         _faults: Optional[dict] = None) -> Summary:
    """`extract_to_hdf5` on a Ray cluster: extract `videos` ([(id, path)], paths every worker can
    read) with `extractor` (a features.Extractor, or any picklable callable frames -> [T, R, D])
    into `output` (on a filesystem the workers share: parts are staged beside it). Decoding runs in
    Ray tasks, the extractor in `workers` actors (default one per GPU, else one per CPU slot).
    Returns a Summary (extracted, skipped = already in the file, failed [(id, path, message)],
    frames, seconds)."""
    import h5py
    from tqdm import tqdm

    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    require_ray()
    load_kwargs = dict(load_kwargs or {})
    load_kwargs.setdefault("strict", True)
    t0 = time.time()
    output = os.path.abspath(os.fspath(output))
    failed: List[tuple] = []
    extracted = frames = 0
    with h5py.File(output, "a") as h5:
        settings_json = prepare_output(h5, output, settings)
        e, f, bad = commit_parts(h5, output, staged_feature_parts(output), settings_json, compression, log)
        extracted, frames = extracted + e, frames + f
        failed.extend(bad)
        todo = [(v, p) for v, p in videos if not has_features(h5, v)]
    skipped = len(videos) - len(todo) - extracted
    if skipped:
        log(f"{skipped} of {len(videos)} videos already in {output}, skipping them")
    error = None
    if todo:
        order = {v: i for i, (v, _) in enumerate(todo)}
        os.makedirs(parts_dir(output), exist_ok=True)
        with cluster(address, num_cpus) as ray:
            batches = max(1, math.ceil(len(todo) / part_size))
            res = worker_resources(ray, workers, worker_cpus, batches=batches)
            rows = [{"id": v, "path": os.path.abspath(p)} for v, p in todo]
            ds = ray.data.from_items(rows, override_num_blocks=batches)
            ds = ds.map_batches(_decode, batch_size=1, num_cpus=res["reader_cpus"], fn_kwargs={"load_kwargs": load_kwargs})
            ds = ds.map_batches(_ExtractWorker, batch_size=part_size,
                                compute=ray.data.ActorPoolStrategy(size=res["workers"]),
                                num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
                                fn_constructor_kwargs=dict(output=output, extractor=PortableExtractor.of(extractor),
                                                           settings_json=settings_json, chunk_frames=chunk_frames,
                                                           faults=_faults))
            bar = tqdm(total=len(todo), unit="video", disable=not progress, file=sys.stderr,
                       desc=f"extracting ({res['workers']} Ray workers)")
            stop_after = (_faults or {}).get("driver_exit_after_parts")
            try:
                for parts, row in enumerate(ds.iter_rows(), 1):
                    bar.update(int(row["videos"]) + len(json.loads(row["failed"])))
                    if stop_after and parts >= stop_after:
                        os._exit(1)             # test hook: a driver killed before its commit
            except Exception as exc:           # a worker that died for good: commit what is staged
                error = exc
            finally:
                bar.close()
        with h5py.File(output, "a") as h5:
            parts = sorted(staged_feature_parts(output), key=lambda p: _first(p, order))
            e, f, bad = commit_parts(h5, output, parts, settings_json, compression, log)
            extracted, frames = extracted + e, frames + f
            failed.extend(bad)
    summary = Summary(extracted, skipped, failed, frames, time.time() - t0)
    log(f"extracted {extracted} videos ({frames} frames) in {summary.seconds:.1f} s; "
        f"skipped {skipped} already present; {len(failed)} failed")
    for vid, path, msg in failed:
        log(f"  FAILED {vid} ({path}): {msg}")
    if error is not None:
        raise ClusterError(f"the Ray job stopped before the end ({type(error).__name__}: "
                           f"{' '.join(str(error).split())[:300]}); what was extracted is in {output}: run the same "
                           "command again to finish") from None
    return summary


def _first(part: str, order: Dict[str, int]) -> int:
    try:
        with open(os.path.join(part, PART_META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return len(order)
    ids = meta["ids"] + [v for v, _, _ in meta["failed"]]
    return min((order.get(v, len(order)) for v in ids), default=len(order))
