"""Input pipeline: per-epoch sampling, augmentation plans, padded batches, a grain iterator.

Every batch is a pure function of (seed, epoch, batch number): triplets are drawn per epoch from a
generator seeded with (seed, epoch), each row is augmented with a generator seeded with (seed,
epoch, batch, row), so grain's reader threads can build batches in any order, a run resumed from
(epoch, batch) sees exactly the batches an uninterrupted run sees, and every host can plan the
whole global batch (and agree on its padded length) while reading only its own rows.

`BatchLoader.dataset()` is a `grain.MapDataset` whose element i is global batch i of the run
(epoch i // steps_per_epoch, batch i % steps_per_epoch); `iter(loader)` turns it into a grain
iterator with `num_threads` reader threads and a prefetch buffer. The iterator's
`get_state()` / `set_state()` ({'next_index': i}) is the data position stored in checkpoints.

Student batches: `videos` [n, 3, T, R, D] (anchor, positive, negative), `masks` [n, 3, T],
`targets` [n, 2] (teacher similarity of the positive and negative pair), `weights` [n] (0 for rows
that only pad the last batch of an epoch to the fixed batch shape).
Selector batches: `videos` [n, 2, T, R, D] (query, target), `masks` [n, 2, T], `coarse` [n],
`labels` [n], `weights` [n].
"""
from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import grain
import numpy as np

from dns_jax.datasets.stores import FeatureStore
from dns_jax.training.augment import augment_indices
from dns_jax.training.pairs import PairSet
from dns_jax.validation import FeatureError


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; beyond the last, the next multiple of the last bucket."""
    for b in buckets:
        if length <= b:
            return int(b)
    last = int(buckets[-1])
    return int(math.ceil(length / last) * last)


# ---------------------------------------------------------------------------------------------
# what one epoch holds

class TripletSampler:
    """Official StudentPairGenerator sampling: every query with a positive and a negative among the
    kept videos gives one (anchor, positive, negative) triplet per epoch, in shuffled order."""

    def __init__(self, pairs: PairSet, seed: int = 0, trainset_percentage: float = 100.0):
        index = pairs.index
        videos = list(range(len(index)))
        if trainset_percentage < 100:
            rng = np.random.default_rng([seed, 7])
            rng.shuffle(videos)
            videos = videos[:int(len(index) * trainset_percentage / 100)]
        keep = set(videos)
        self.index = index
        self.seed = seed
        self.pools: List[Tuple[int, List[Tuple[int, float]], List[Tuple[int, float]]]] = []
        for q in sorted(pairs.pairs):
            if q not in keep:
                continue
            p = pairs.pairs[q]
            pos = [(t, s) for t, s in sorted(p.get("positives", {}).items()) if t in keep]
            neg = [(t, s) for t, s in sorted(p.get("negatives", {}).items()) if t in keep]
            if pos and neg:
                self.pools.append((q, pos, neg))
        if not self.pools:
            raise FeatureError("no query has both a positive and a negative among the available videos; "
                               "nothing to train on")

    def __len__(self):
        return len(self.pools)

    def epoch(self, epoch: int) -> List[tuple]:
        """[(anchor_id, positive_id, negative_id, sim_pos, sim_neg)] for `epoch`, shuffled."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        out = []
        for q, pos, neg in self.pools:
            p, sp = pos[int(rng.integers(len(pos)))]
            n, sn = neg[int(rng.integers(len(neg)))]
            out.append((self.index[q], self.index[p], self.index[n], sp, sn))
        order = rng.permutation(len(out))
        return [out[i] for i in order]


class SelectorSampler:
    """Official SelectorPairGenerator: each epoch draws `pairs_per_class` pairs of each label
    without replacement (capped at the smaller class), in shuffled order."""

    def __init__(self, items: Sequence[Tuple[str, str, float]], labels: Sequence[float],
                 pairs_per_class: int, seed: int = 0):
        self.items = list(items)
        self.labels = np.asarray(labels, np.float32)
        if len(self.items) != len(self.labels) or not self.items:
            raise FeatureError("the selector needs a non-empty list of labelled pairs")
        classes, counts = np.unique(self.labels, return_counts=True)
        if len(classes) < 2:
            raise FeatureError(f"every selector pair has label {classes[0]:g}: nothing to learn "
                               "(change selector.threshold)")
        self.per_class = int(min(pairs_per_class, counts.min()))
        self.classes = classes
        self.seed = seed

    def __len__(self):
        return self.per_class * len(self.classes)

    def epoch(self, epoch: int) -> List[tuple]:
        """[(query_id, target_id, coarse_sim, label)] for `epoch`, shuffled."""
        rng = np.random.default_rng([self.seed, epoch, 2])
        ids = []
        for c in self.classes:
            where = np.flatnonzero(self.labels == c)
            ids.extend(rng.choice(where, self.per_class, replace=False).tolist())
        ids = [ids[i] for i in rng.permutation(len(ids))]
        return [self.items[i] + (float(self.labels[i]),) for i in ids]


# ---------------------------------------------------------------------------------------------
# batches

@dataclass
class Position:
    """Where the iterator stands: the next batch to produce is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self):
        return {"epoch": int(self.epoch), "batch": int(self.batch)}


@dataclass
class Batch:
    arrays: Dict[str, np.ndarray]   # this process's rows
    epoch: int
    index: int                      # batch number within the epoch
    num_real: int                   # rows with weight 1 in the global batch
    next_position: Position


class BatchLoader:
    """Iterates over fixed-size global batches; this process materialises rows
    [process_index * n / process_count, ...). `global_batch` is the padded row count
    (a multiple of the device count), `batch_size` the real rows per batch."""

    def __init__(self, sampler, store: FeatureStore, kind: str, batch_size: int, global_batch: int,
                 buckets: Sequence[int], seed: int = 0, augmentation: bool = False,
                 max_augmented_frames: int = 300, num_threads: int = 2, prefetch: int = 2,
                 start: Position = Position(), process_index: int = 0, process_count: int = 1):
        if kind not in ("student", "selector"):
            raise ValueError(f"kind must be 'student' or 'selector', got {kind!r}")
        if global_batch < batch_size or global_batch % process_count:
            raise ValueError(f"global batch {global_batch} must be >= batch_size {batch_size} and "
                             f"divisible by the {process_count} processes")
        self.sampler, self.store, self.kind = sampler, store, kind
        self.batch_size, self.global_batch = batch_size, global_batch
        self.buckets = tuple(buckets)
        self.seed, self.augmentation, self.max_aug = seed, augmentation, max_augmented_frames
        self.process_index, self.process_count = process_index, process_count
        self.position = Position(start.epoch, start.batch)
        self.num_threads, self.prefetch = max(0, num_threads), max(1, prefetch)
        self._epochs: Dict[int, list] = {}
        self._lock = threading.Lock()
        first = store[sampler.index[sampler.pools[0][0]]] if kind == "student" else store[sampler.items[0][0]]
        self.regions, self.dims = first.shape[1:]
        self.num_videos = 3 if kind == "student" else 2

    @property
    def steps_per_epoch(self) -> int:
        return int(math.ceil(len(self.sampler) / self.batch_size))

    def _epoch_items(self, epoch):
        with self._lock:  # loader threads may straddle an epoch boundary
            items = self._epochs.get(epoch)
            if items is None:
                items = self._epochs[epoch] = self.sampler.epoch(epoch)
                for old in [e for e in self._epochs if e < epoch - 1]:
                    del self._epochs[old]
            return items

    def plan(self, epoch: int, index: int):
        """(rows, weights, frame index plans, padded length) of one global batch."""
        items = self._epoch_items(epoch)
        rows = items[index * self.batch_size:(index + 1) * self.batch_size]
        if not rows:
            raise IndexError(f"epoch {epoch} has no batch {index}")
        num_real = len(rows)
        weights = np.zeros(self.global_batch, np.float32)
        weights[:num_real] = 1.0
        rows = [rows[i % num_real] for i in range(self.global_batch)]   # padding rows: copies
        plans, longest = [], 1
        for r, row in enumerate(rows):
            ids = row[:self.num_videos]
            lengths = [self.store.length(v) for v in ids]
            idx = [np.arange(lengths[0])]
            for role in range(1, self.num_videos):
                if self.augmentation:
                    rng = np.random.default_rng([self.seed, epoch, index, r, role])
                    idx.append(augment_indices(lengths[role], rng, self.max_aug))
                else:
                    idx.append(np.arange(lengths[role]))
            plans.append(idx)
            longest = max(longest, *(len(i) for i in idx))
        return rows, weights, plans, bucket_length(longest, self.buckets), num_real

    def _video(self, video_id):
        x = self.store[video_id]
        if x.shape[1:] != (self.regions, self.dims):
            raise FeatureError(f"{self.store.source}: video {video_id!r} has regions x dims "
                               f"{x.shape[1:]}, the collection {(self.regions, self.dims)}")
        return x

    def build(self, epoch: int, index: int) -> Batch:
        """This process's rows of batch `index` of `epoch`."""
        rows, weights, plans, length, num_real = self.plan(epoch, index)
        per = self.global_batch // self.process_count
        lo, hi = self.process_index * per, (self.process_index + 1) * per
        n, v = hi - lo, self.num_videos
        videos = np.zeros((n, v, length, self.regions, self.dims), np.float32)
        masks = np.zeros((n, v, length), np.float32)
        for r in range(lo, hi):
            for k in range(v):
                x = self._video(rows[r][k])[plans[r][k]]
                videos[r - lo, k, :x.shape[0]] = x
                masks[r - lo, k, :x.shape[0]] = 1.0
        arrays = {"videos": videos, "masks": masks, "weights": weights[lo:hi]}
        if self.kind == "student":
            arrays["targets"] = np.asarray([row[3:5] for row in rows[lo:hi]], np.float32)
        else:
            arrays["coarse"] = np.asarray([row[2] for row in rows[lo:hi]], np.float32)
            arrays["labels"] = np.asarray([row[3] for row in rows[lo:hi]], np.float32)
        nxt = Position(epoch, index + 1)
        if nxt.batch >= self.steps_per_epoch:
            nxt = Position(epoch + 1, 0)
        return Batch(arrays, epoch, index, num_real, nxt)

    # -- positions <-> element indices of the grain dataset ----------------------------------

    def index_of(self, position: Position) -> int:
        """Element index of the grain dataset that holds batch `position.batch` of `position.epoch`."""
        if not 0 <= position.batch < self.steps_per_epoch or position.epoch < 0:
            raise ValueError(f"{position} is outside the epochs of {self.steps_per_epoch} batches")
        return position.epoch * self.steps_per_epoch + position.batch

    def position_of(self, index: int) -> Position:
        return Position(*divmod(int(index), self.steps_per_epoch))

    def _build_index(self, index: int) -> Batch:
        return self.build(*divmod(int(index), self.steps_per_epoch))

    # -- grain ---------------------------------------------------------------------------------

    def dataset(self, num_batches: Optional[int] = None) -> "grain.MapDataset":
        """A grain MapDataset of the run's global batches (element i: `build` of
        `position_of(i)`), `num_batches` long (default: unbounded)."""
        n = sys.maxsize // 2 if num_batches is None else int(num_batches)
        return grain.MapDataset.range(n).map(self._build_index)

    def read_options(self) -> "grain.ReadOptions":
        """`num_threads` reader threads with `prefetch` + `num_threads` batches in flight;
        no threads: batches are built on demand in the caller's thread."""
        if self.num_threads == 0:
            return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        return grain.ReadOptions(num_threads=self.num_threads,
                                 prefetch_buffer_size=self.prefetch + self.num_threads)

    def __iter__(self) -> "grain.DatasetIterator":
        """A grain iterator of `Batch`es from `start`; `get_state()` after a batch is the
        position of the next one, `set_state()` jumps to a saved one, `close()` stops the threads."""
        it = iter(self.dataset().to_iter_dataset(self.read_options()))
        start = self.index_of(self.position)
        if start:
            it.set_state({"next_index": start})
        return it
