"""Similarities of many (query, target) video pairs with any similarity network, batched.

Used by the teacher job (pair files) and by validation. Fine-grained networks (FG students, ViSiL)
score zero-padded pairs with their exact `padded_pair_similarity`, vmapped over a batch of pairs
and jitted once per (query bucket, target bucket) shape; videos under 4 frames are repeated and
targets over 2048 frames are scored by chunks and averaged, as the official evaluation does. The
coarse student indexes every video once and scores pairs by dot products.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dns_jax.datasets.stores import FeatureStore
from dns_jax.layers import block_max_pairs
from dns_jax.models import registry
from dns_jax.pretrained import MIN_FRAMES, TARGET_CHUNK
from dns_jax.training.pipeline import bucket_length
from dns_jax.validation import repeat_to_min_frames

EVAL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
SIMILARITY_NETWORKS = registry.SIMILARITY


class ScoringError(ValueError):
    pass


def host_variables(variables):
    """Variables as host numpy arrays (works for arrays replicated over several hosts too)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree_util.tree_map(get, variables)


class PairScorer:
    """`score(store, [(query_id, target_id), ...]) -> [P] float32` with network `name`."""

    def __init__(self, name: str, module, variables, batch_size: int = 32,
                 buckets: Sequence[int] = EVAL_BUCKETS):
        if name not in SIMILARITY_NETWORKS:
            raise ScoringError(f"{name!r} is not a video similarity network (expected one of "
                               f"{', '.join(SIMILARITY_NETWORKS)})")
        self.name, self.module, self.variables = name, module, variables
        self.batch_size, self.buckets = batch_size, tuple(buckets)
        self.coarse = name == "cg_student"
        self.visil = name.startswith("visil")
        # ViSiL_f (no comparator) takes any length; the CNN heads need 4 frames
        self.min_frames = 1 if (self.visil and not module.video_comparator) else MIN_FRAMES
        self._pair_fn = jax.jit(jax.vmap(self._one_pair, in_axes=(None, 0, 0, 0, 0)))
        self._index_fn = jax.jit(functools.partial(module.apply, method="index_video"))

    def set_variables(self, variables):
        self.variables = variables

    # -- fine-grained ----------------------------------------------------------------------
    def _one_pair(self, variables, q, t, ql, tl):
        m = self.module
        if self.visil:
            q = m.apply(variables, q, method="prepare_tensor")
            t = m.apply(variables, t, method="prepare_tensor")
        else:
            qm = (jnp.arange(q.shape[0]) < ql).astype(q.dtype)
            tm = (jnp.arange(t.shape[0]) < tl).astype(t.dtype)
            q = m.apply(variables, q, qm, method="index_video")
            t = m.apply(variables, t, tm, method="index_video")
        return m.apply(variables, q, t, ql, tl, method="padded_pair_similarity")

    def _fine(self, store: FeatureStore, pairs):
        load = functools.lru_cache(maxsize=2048)(
            lambda v: repeat_to_min_frames(store[v], self.min_frames))
        def length(v):  # after repeat_to_min_frames
            n = store.length(v)
            while n < self.min_frames:
                n *= 2
            return n

        # long targets are split into chunks (official rule; ViSiL_f has no chunking), and every
        # (query, chunk) job is scored; jobs are sorted by padded shape to limit recompilation
        jobs: List[Tuple[int, str, str, int, int]] = []
        for p, (q, t) in enumerate(pairs):
            tlen = length(t)
            if self.min_frames == 1 or tlen <= TARGET_CHUNK:
                starts = [0]
            else:
                starts = [s for s in range(0, tlen, TARGET_CHUNK) if min(TARGET_CHUNK, tlen - s) >= MIN_FRAMES]
            for s in starts:
                end = tlen if self.min_frames == 1 else min(s + TARGET_CHUNK, tlen)
                jobs.append((p, q, t, s, end))
        jobs.sort(key=lambda j: (bucket_length(length(j[1]), self.buckets),
                                 bucket_length(j[4] - j[3], self.buckets)))
        sums = np.zeros(len(pairs), np.float64)
        counts = np.zeros(len(pairs), np.int64)
        for b in range(0, len(jobs), self.batch_size):
            chunk = jobs[b:b + self.batch_size]
            qs = [load(j[1]) for j in chunk]
            ts = [load(j[2])[j[3]:j[4]] for j in chunk]
            r, d = qs[0].shape[1:]
            tq = bucket_length(max(len(x) for x in qs), self.buckets)
            tt = bucket_length(max(len(x) for x in ts), self.buckets)
            n = self.batch_size
            qa = np.zeros((n, tq, r, d), np.float32)
            ta = np.zeros((n, tt, r, d), np.float32)
            ql = np.ones(n, np.int32)
            tl = np.ones(n, np.int32)
            for i in range(n):  # rows past the chunk repeat its first pair, then are ignored
                x, y = qs[i % len(chunk)], ts[i % len(chunk)]
                qa[i, :len(x)], ta[i, :len(y)] = x, y
                ql[i], tl[i] = len(x), len(y)
            sims = np.asarray(self._pair_fn(self.variables, qa, ta, ql, tl))[:len(chunk)]
            for j, s in zip(chunk, sims):
                sums[j[0]] += float(s)
                counts[j[0]] += 1
        return (sums / np.maximum(counts, 1)).astype(np.float32)

    # -- coarse ------------------------------------------------------------------------------
    def index(self, store: FeatureStore, ids: Sequence[str]) -> Dict[str, np.ndarray]:
        """CG student: {id: [E]} L2-normalised video vectors, computed in padded batches."""
        ids = sorted(set(ids), key=lambda v: store.length(v))
        out = {}
        for b in range(0, len(ids), self.batch_size):
            chunk = ids[b:b + self.batch_size]
            xs = [repeat_to_min_frames(store[v], MIN_FRAMES) for v in chunk]
            t = bucket_length(max(len(x) for x in xs), self.buckets)
            n = self.batch_size
            arr = np.zeros((n, t) + xs[0].shape[1:], np.float32)
            mask = np.zeros((n, t), np.float32)
            for i in range(n):
                x = xs[i % len(chunk)]
                arr[i, :len(x)], mask[i, :len(x)] = x, 1.0
            vecs = np.asarray(self._index_fn(self.variables, arr, mask))
            out.update(zip(chunk, vecs[:len(chunk)]))
        return out

    def score(self, store: FeatureStore, pairs: Sequence[Tuple[str, str]]) -> np.ndarray:
        """[len(pairs)] similarities of (query_id, target_id) pairs."""
        pairs = list(pairs)
        if not pairs:
            return np.zeros(0, np.float32)
        missing = sorted({v for p in pairs for v in p if v not in store})
        if missing:
            raise ScoringError(f"{len(missing)} videos are missing from {store.source}: {missing[:10]}")
        if not self.coarse:
            return self._fine(store, pairs)
        vecs = self.index(store, [v for p in pairs for v in p])
        a = np.stack([vecs[q] for q, _ in pairs])
        b = np.stack([vecs[t] for _, t in pairs])
        blocks, top = getattr(self.module, "vector_blocks", 1), int(getattr(self.module, "top_pairs", 1))
        return np.asarray(block_max_pairs(a, b, blocks, precision="highest", top=top), np.float32)
