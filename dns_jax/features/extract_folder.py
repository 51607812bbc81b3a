"""Extract DnS frame features for a video collection into one HDF5 file.

    dns-jax extract --videos DIR_OR_LIST --output feats.hdf5 \\
        --backbone resnet50.pth --pca pca_resnet50_vcdb_1M.pth [--dims 512]

* `--videos`: a directory (every video file below it; id = relative path without extension, so
  `1/1_1_Y.flv` gets the CC_WEB_VIDEO-style id `1/1_1_Y`) or a text file with one video per line,
  either `id<TAB>path` (the ViSiL query/database file format) or a bare path (id = file stem).
* The output holds one float32 dataset `[T, R, D]` per video id at the file's root (the layout of
  the official DnS feature files; ids containing `/` become nested groups, as in h5py).
* Resumable: ids already in the file are skipped. Each video is written under a scratch group and
  moved to its id only when complete (then flushed), so an interrupted run never leaves a partial
  dataset; leftovers of the scratch group are deleted on the next run. The extraction settings are
  stored in the file's attributes and a resumed run with other settings is refused.
* Videos that cannot be read (missing, empty, corrupt, truncated, without a video stream) are
  recorded as failed with the reason, the run goes on with the rest and ends with a summary that
  lists them (exit status 1 if any). A video that decodes only in part counts as failed unless
  `--keep-partial` is given (then the frames that decode are kept, as the official OpenCV loader
  does, with a warning).
* Frames are decoded and sent through the network batch by batch, so memory does not grow with the
  length of a video.

Without `--backbone`, the offline `resnet50_1by2_opennsfw` backbone is used: its 1920-d features
work for models trained on them but are NOT the features the published DnS networks expect (those
need torchvision's ResNet-50 ImageNet weights and the official PCA).
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import pathlib
import time
import uuid
from typing import Callable, Sequence

import numpy as np

from .extractor import extract_video
from .video import VideoError

SCRATCH = "__dns_jax_partial__"
ATTR = "dns_jax.features"
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".flv", ".wmv", ".mpg", ".mpeg", ".m4v",
                    ".3gp", ".ts", ".ogv", ".vob", ".mts", ".m2ts", ".asf", ".divx"}

Summary = collections.namedtuple("Summary", "extracted skipped failed frames seconds")


def list_videos(spec) -> list:
    """`[(video_id, path)]` from a directory or a list file (see the module docstring)."""
    spec = pathlib.Path(spec)
    if spec.is_dir():
        files = sorted(p for p in spec.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        videos = [(p.relative_to(spec).with_suffix("").as_posix(), str(p)) for p in files]
    elif spec.is_file():
        videos = []
        for n, line in enumerate(spec.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "\t" in line:
                vid, path = (s.strip() for s in line.split("\t", 1))
            else:
                vid, path = pathlib.Path(line).stem, line
            if not vid or not path:
                raise ValueError(f"{spec}:{n}: expected 'id<TAB>path' or a path, got {line!r}")
            videos.append((vid.strip("/"), path))
    else:
        raise FileNotFoundError(f"--videos {spec}: no such directory or list file")
    seen = collections.Counter(v for v, _ in videos)
    dups = sorted(v for v, c in seen.items() if c > 1)
    if dups:
        raise ValueError(f"{spec}: duplicate video ids {dups[:5]}{' ...' if len(dups) > 5 else ''}")
    return videos


def write_features_atomic(h5, video_id: str, features: np.ndarray, compression):
    """Write under the scratch group, then rename to the id: the id exists only when complete."""
    tmp = f"{SCRATCH}/{uuid.uuid4().hex}"
    h5.create_dataset(tmp, data=features, compression=compression)
    h5.flush()
    parent = video_id.rsplit("/", 1)[0] if "/" in video_id else None
    if parent:
        h5.require_group(parent)
    h5.move(tmp, video_id)
    h5.flush()


def prepare_output(h5, output, settings: dict | None) -> str:
    """Record the extraction settings in the open file's attributes (ValueError if it was written
    with other ones) and drop the scratch group of an interrupted write. Returns the settings JSON."""
    settings_json = json.dumps(settings or {}, sort_keys=True)
    if ATTR in h5.attrs and h5.attrs[ATTR] != settings_json:
        raise ValueError(f"{output} was written with other extraction settings:\n  file: {h5.attrs[ATTR]}\n"
                         f"  now:  {settings_json}\nuse another --output or the same settings")
    h5.attrs[ATTR] = settings_json
    if SCRATCH in h5:  # an interrupted write of an earlier run
        del h5[SCRATCH]
    return settings_json


def has_features(h5, video_id: str) -> bool:
    """Whether the open HDF5 file holds the (complete) features of `video_id`."""
    import h5py
    return video_id in h5 and isinstance(h5[video_id], h5py.Dataset)


def _features(extractor: Callable, path: str, chunk: int, load_kwargs: dict) -> np.ndarray:
    """Features of one video, streamed: an `Extractor` takes decoded frames batch by batch, any
    other callable `chunk` frames at a time, so memory does not grow with the video's length."""
    return extract_video(extractor, path, batch_frames=chunk, **load_kwargs)


def extract_to_hdf5(videos: Sequence, output, extractor: Callable, *, settings: dict | None = None,
                    load_kwargs: dict | None = None, chunk_frames: int = 256, workers: int = 1,
                    compression=None, progress: bool = True, log=print) -> Summary:
    """Extract `videos` (`[(id, path)]`) with `extractor` (frames -> `[T, R, D]`) into `output`.

    `settings` (JSON-able) is stored in the file's attributes; resuming with different settings
    raises ValueError. `load_kwargs` go to `iter_frames` (`strict` defaults to True here: a video
    that decodes only in part is a failure). An `Extractor` receives the frames of a video batch by
    batch as they are decoded; another callable gets `chunk_frames` frames per call. `workers`
    threads read videos ahead while the extractor runs. Returns a `Summary` (failed =
    `[(id, path, message)]`).
    """
    import h5py
    from tqdm import tqdm

    load_kwargs = dict(load_kwargs or {})
    load_kwargs.setdefault("strict", True)
    t0 = time.time()
    failed, extracted, frames = [], 0, 0
    with h5py.File(output, "a") as h5:
        prepare_output(h5, output, settings)
        todo = [(v, p) for v, p in videos if not has_features(h5, v)]
        skipped = len(videos) - len(todo)
        if skipped:
            log(f"{skipped} of {len(videos)} videos already in {output}, skipping them")

        def job(item):  # decode in a worker thread, extract there too (the extractor is thread-safe)
            vid, path = item
            return _features(extractor, path, chunk_frames, load_kwargs)

        bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
        pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
        pending = collections.deque()
        try:
            items = iter(todo)
            for item in items:  # keep workers + 1 videos in flight
                pending.append((item, pool.submit(job, item)))
                if len(pending) > workers:
                    break
            while pending:
                (vid, path), fut = pending.popleft()
                nxt = next(items, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(job, nxt)))
                try:
                    feats = fut.result()
                except (VideoError, OSError, ValueError) as e:
                    failed.append((vid, path, f"{type(e).__name__}: {e}"))
                else:
                    write_features_atomic(h5, vid, feats, compression)
                    extracted += 1
                    frames += feats.shape[0]
                bar.update(1)
                bar.set_postfix(frames=frames, failed=len(failed),
                                fps=f"{frames / max(time.time() - t0, 1e-9):.1f}")
        finally:  # on an error or Ctrl-C, do not start the videos still queued
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
            if SCRATCH in h5:  # empty after the last rename
                del h5[SCRATCH]
        bar.close()
    summary = Summary(extracted, skipped, failed, frames, time.time() - t0)
    log(f"extracted {extracted} videos ({frames} frames) in {summary.seconds:.1f} s; "
        f"skipped {skipped} already present; {len(failed)} failed")
    for vid, path, msg in failed:
        log(f"  FAILED {vid} ({path}): {msg}")
    return summary
