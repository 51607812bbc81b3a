"""Input of S2VS training: which videos each step sees, their frame windows, and grain loaders.

Every global batch is a pure function of (seed, step): epoch `step // steps_per_epoch` is a
permutation of the videos drawn from (seed, epoch) and the batch is its next `batch_size` videos
(distinct: the last incomplete batch of an epoch is dropped); each row's random choices come from
(seed, step, row). So grain's reader threads may build batches in any order, a resumed run reads
the batches an uninterrupted run reads, and each host builds only its rows of the global batch.

* `PixelLoader` (mode 'pixels'): `videos` uint8 [n, source_frames, S, S, 3], a window of
  `source_frames` consecutive frames per video (official `load_frames(window=2 * window_sz)`:
  start ~ U{0 .. len - source_frames - 1}); a shorter video is repeated to fill it.
* `BankLoader` (mode 'feature_bank'): `weak`, `strong` [n, W, R, D] (a stored view of each
  video, drawn independently for the two roles), `video` [n] (the video's index), `host` [n] (the
  video its strong view was mixed into, -1 if none) and `lam` [n] (the host's share): the targets
  follow from these whether or not the host is in the batch (step.source_targets).
"""
from __future__ import annotations

import collections
import sys
from typing import Dict, List, Sequence

import grain
import numpy as np

# tags of the random streams (seed, tag, ...), so that no two uses share one
_EPOCH, _WINDOW, _VIEW = 11, 12, 13


class S2VSDataError(ValueError):
    """A video collection S2VS cannot train on (too few videos, videos shorter than the window)."""


def check_collection(lengths: Dict[str, int], batch_size: int, window: int, short_videos: str,
                     fps: float) -> None:
    """The clear errors of a collection that cannot give a batch, or has videos shorter than the
    window when `short_videos` is 'error'."""
    if len(lengths) < batch_size:
        raise S2VSDataError(f"only {len(lengths)} usable videos, fewer than the batch of {batch_size}: "
                            f"add videos or lower batch_size (--config.batch_size={max(len(lengths), 2)})")
    short = sorted((n, v) for v, n in lengths.items() if n < window)
    if short and short_videos == "error":
        names = ", ".join(f"{v} ({n} frames)" for n, v in short[:5]) + (" ..." if len(short) > 5 else "")
        raise S2VSDataError(f"{len(short)} videos are shorter than the {window}-frame window at {fps:g} "
                            f"frame/s: {names}; lower augmentation.window_size (and source_frames), or "
                            "set data.short_videos='loop' to repeat their frames")


def tile(index: np.ndarray, count: int) -> np.ndarray:
    """`index` repeated end to end until it has `count` entries (then cut)."""
    reps = -(-count // max(len(index), 1))
    return np.tile(index, reps)[:count]


def window_index(rng: np.random.Generator, length: int, count: int) -> np.ndarray:
    """Frame indices of a window of `count` consecutive frames of a `length`-frame video (official
    start ~ randint(max(length - count, 1)) when the video is longer); a shorter video is looped."""
    if length > count:
        start = int(rng.integers(max(length - count, 1)))
        return np.arange(start, start + count)
    return tile(np.arange(length), count)


class EpochSampler:
    """Video indices of each global batch (module docstring)."""

    def __init__(self, num_videos: int, batch_size: int, seed: int = 0):
        if num_videos < batch_size:
            raise S2VSDataError(f"{num_videos} videos are fewer than the batch of {batch_size}")
        self.num_videos, self.batch_size, self.seed = num_videos, batch_size, seed
        self.steps_per_epoch = num_videos // batch_size
        self._cache: Dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = self._cache.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, _EPOCH, epoch]).permutation(self.num_videos)
            self._cache = {epoch: order}        # one epoch at a time is enough for any reader
        return order

    def batch(self, step: int) -> np.ndarray:
        epoch, b = divmod(int(step), self.steps_per_epoch)
        return self.epoch_order(epoch)[b * self.batch_size:(b + 1) * self.batch_size]


class _Loader:
    """Grain over global batches: element i of `dataset()` is this process's rows of batch i."""

    def __init__(self, sampler: EpochSampler, seed: int, num_threads: int = 2, prefetch: int = 2,
                 process_index: int = 0, process_count: int = 1):
        if sampler.batch_size % process_count:
            raise S2VSDataError(f"batch_size {sampler.batch_size} must be divisible by the "
                                f"{process_count} processes")
        self.sampler, self.seed = sampler, seed
        self.num_threads, self.prefetch = max(0, num_threads), max(1, prefetch)
        per = sampler.batch_size // process_count
        self.rows = range(process_index * per, (process_index + 1) * per)

    def build(self, step: int) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def dataset(self) -> "grain.MapDataset":
        return grain.MapDataset.range(sys.maxsize // 2).map(self.build)

    def iterator(self, start_step: int):
        """A grain iterator of batches from `start_step`; `get_state()` is {'next_index': step}."""
        if self.num_threads == 0:
            options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        else:
            options = grain.ReadOptions(num_threads=self.num_threads,
                                        prefetch_buffer_size=self.prefetch + self.num_threads)
        it = iter(self.dataset().to_iter_dataset(options))
        if start_step:
            it.set_state({"next_index": int(start_step)})
        return it


class PixelLoader(_Loader):
    def __init__(self, frames, ids: Sequence[str], lengths: Sequence[int], source_frames: int,
                 sampler: EpochSampler, seed: int, **kwargs):
        super().__init__(sampler, seed, **kwargs)
        self.frames, self.ids, self.lengths = frames, list(ids), list(lengths)
        self.source_frames = source_frames

    def build(self, step: int) -> Dict[str, np.ndarray]:
        videos = self.sampler.batch(step)
        out = []
        for r in self.rows:
            v = int(videos[r])
            rng = np.random.default_rng([self.seed, _WINDOW, int(step), r])
            out.append(self.frames.read(self.ids[v], window_index(rng, self.lengths[v], self.source_frames)))
        return {"videos": np.stack(out)}


class BankLoader(_Loader):
    def __init__(self, bank, sampler: EpochSampler, seed: int, **kwargs):
        super().__init__(sampler, seed, **kwargs)
        self.bank = bank

    def build(self, step: int) -> Dict[str, np.ndarray]:
        videos = self.sampler.batch(step)
        rng = np.random.default_rng([self.seed, _VIEW, int(step)])
        weak_view = rng.integers(self.bank.views, size=len(videos))
        strong_view = rng.integers(self.bank.views, size=len(videos))
        weak, strong, hosts, lams = [], [], [], []
        for r in self.rows:
            v = int(videos[r])
            weak.append(self.bank.weak(int(weak_view[r]), v))
            s, host, lam = self.bank.strong(int(strong_view[r]), v)
            strong.append(s)
            hosts.append(host)
            lams.append(lam)
        return {"weak": np.stack(weak), "strong": np.stack(strong),
                "video": np.asarray([videos[r] for r in self.rows], np.int32),
                "host": np.asarray(hosts, np.int32), "lam": np.asarray(lams, np.float32)}


def video_list(ids_paths: Sequence, percentage: float = 100.0) -> List[tuple]:
    """[(id, path)] sorted by id (the official order), cut to the first `percentage` percent."""
    videos = sorted((str(v), str(p)) for v, p in ids_paths)
    dups = sorted(v for v, n in collections.Counter(v for v, _ in videos).items() if n > 1)
    if dups:
        raise S2VSDataError(f"duplicate video ids: {dups[:5]}")
    return videos[:max(1, int(len(videos) * percentage / 100))] if videos else []
