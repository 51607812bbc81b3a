"""Coarse-grained (CG student) stage: cosine similarities of L2-normalised video vectors.

`CoarseDatabase(vectors)` keeps the database on the devices, optionally as float16 (half the bytes
to stream; products accumulate in float32) and sharded along the video axis over all local devices
(a 1-d `jax.sharding.Mesh`) when there are several. Queries are scored in batches against fixed-size
chunks of the database, so memory stays bounded (queries x chunk) and the chunk kernel compiles once.

- `similarities(queries)` -> (Q, N) float32: every score (what DnS needs for its selector);
- `topk(queries, k)` -> (scores, indices) (Q, k): per shard and chunk a running top-k, merged.

`ShortlistCoarseDatabase(exact, segments)` searches a region-vector database with S temporal
segments in two stages: every video by its region vectors averaged over the segments (S^2 times
fewer products), then the first `pool` exactly.

Products run at `precision='highest'` by default: on GPUs and TPUs the default precision of a
float32 product is TF32 / bf16 passes, which moves cosines by ~1e-3 (seen on an H200) and would
reorder near ties against the official float32 `torch.mm`; pass `precision='default'` to trade that
for speed.

With `faiss` installed (`pip install faiss-cpu`), `FaissCoarseIndex` gives the same top-k from an
exact inner-product index (IndexFlatIP) for very large collections kept on the host.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dns_jax.layers import best_block_pairs, block_max_similarity
from dns_jax.validation import FeatureError


def _check_vectors(x, name: str, dims: Optional[int] = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise FeatureError(f"{name}: expected coarse vectors [N, E], got shape {a.shape}")
    if a.shape[0] == 0:
        raise FeatureError(f"{name}: empty (no vectors)")
    if dims is not None and a.shape[1] != dims:
        raise FeatureError(f"{name}: expected {dims}-d coarse vectors, got {a.shape[1]}-d")
    return a


def _chunk_scores(q, chunk, precision, upcast: bool = False, blocks: int = 1, top: int = 1):
    """q [Q, E] float32 x chunk [M, E] -> [Q, M] float32. A float16 chunk is either multiplied as
    float16 with float32 accumulation (accelerators: native half-precision products; the queries
    are rounded to float16) or, with `upcast` (CPU, which has no float16 arithmetic and would
    otherwise convert the whole operand into a float32 temporary), converted to float32 first.
    `blocks` > 1: each vector is that many unit vectors and a pair scores its best block pair, or
    the mean of its `top` best (the CG student's `region_max`; layers.block_max_similarity)."""
    if blocks > 1:
        nq, m, e = q.shape[0], chunk.shape[0], q.shape[1] // blocks
        s = _chunk_scores(q.reshape(nq * blocks, e), chunk.reshape(m * blocks, e), precision, upcast)
        return best_block_pairs(s.reshape(nq, blocks, m, blocks), top)
    if upcast and chunk.dtype != jnp.float32:
        return jnp.dot(q, chunk.astype(jnp.float32).T, precision=precision)
    return jnp.dot(q.astype(chunk.dtype), chunk.T, preferred_element_type=jnp.float32, precision=precision)


def _rows_scores(q, db, rows: int, precision, upcast: bool, blocks: int = 1, top: int = 1):
    """_chunk_scores over db [M, E] by blocks of `rows` (M a multiple of rows): a float16 database
    is converted block by block (a bounded temporary) when `upcast`; with several vector blocks
    the [Q, rows, blocks^2] products stay bounded the same way."""
    if (blocks == 1 and (not upcast or db.dtype == jnp.float32)) or db.shape[0] <= rows:
        return _chunk_scores(q, db, precision, upcast, blocks, top)
    out = jax.lax.map(lambda c: _chunk_scores(q, c, precision, upcast, blocks, top), db.reshape(-1, rows, db.shape[1]))
    return jnp.moveaxis(out, 0, 1).reshape(q.shape[0], db.shape[0])


def _scan_topk(q, db, n_valid, k: int, chunk: int, offset, precision, upcast: bool = False, blocks: int = 1,
               top: int = 1):
    """Running top-k of q [Q, E] against db [M, E] (M a multiple of chunk; rows >= n_valid ignored).
    Returns (scores [Q, k], global indices [Q, k])."""
    nq = q.shape[0]
    chunks = db.reshape(db.shape[0] // chunk, chunk, db.shape[1])

    def step(carry, xs):
        best_s, best_i = carry
        c, start = xs
        s = _chunk_scores(q, c, precision, upcast, blocks, top)
        idx = start + jnp.arange(chunk, dtype=jnp.int32)
        s = jnp.where(idx[None, :] < n_valid, s, -jnp.inf)
        kk = min(k, chunk)
        cs, ci = jax.lax.top_k(s, kk)
        all_s = jnp.concatenate([best_s, cs], axis=1)
        all_i = jnp.concatenate([best_i, jnp.take(idx, ci)], axis=1)
        # ties: keep the lower database index first (stable, like a stable descending sort)
        order = jnp.lexsort((all_i, -all_s), axis=1)[:, :k]
        return (jnp.take_along_axis(all_s, order, 1), jnp.take_along_axis(all_i, order, 1)), None

    init = (jnp.full((nq, k), -jnp.inf, jnp.float32), jnp.full((nq, k), -1, jnp.int32))
    starts = jnp.arange(chunks.shape[0], dtype=jnp.int32) * chunk
    (s, i), _ = jax.lax.scan(step, init, (chunks, starts))
    return s, jnp.where(i >= 0, i + offset, -1)


def vector_blocks(model) -> int:
    """Unit vectors per indexed video of a coarse network (CG student: 1; with `region_max`, one per
    region and temporal segment)."""
    return int(getattr(model.module, "vector_blocks", 1))


def top_pairs(model) -> int:
    """How many of the best vector pairs a coarse network's score averages (1: the best alone)."""
    return int(getattr(model.module, "top_pairs", 1))


def vector_segments(model) -> int:
    """Temporal segments of a region-vector coarse network (1: one set of region vectors, or one vector)."""
    module = model.module
    return int(getattr(module, "num_segments", 1)) if getattr(module, "region_max", False) else 1


def coarse_scores(queries, database, blocks: int = 1, rows: int = 4096, top: int = 1) -> np.ndarray:
    """(Q, E) x (N, E) coarse vectors -> (Q, N) float32 on the host: cosines, or with `blocks` > 1
    the best block pair's, or the mean of the `top` best (`layers.block_max_similarity` on `rows` /
    blocks^2 database rows at a time, so memory stays that of one-vector rows)."""
    q = np.asarray(queries, np.float32)
    db = np.asarray(database, np.float32)
    if blocks == 1:
        return (q @ db.T).astype(np.float32)
    rows = max(1, rows // blocks ** 2)
    return np.concatenate([np.asarray(block_max_similarity(q, db[s:s + rows], blocks, precision="highest", top=top))
                           for s in range(0, db.shape[0], rows)], axis=1)


class CoarseDatabase:
    """Database of CG vectors [N, E] on the local devices (sharded when there are several).
    `blocks` > 1: each vector is that many unit vectors (the CG student's `region_max`, E a
    multiple of blocks) and a pair scores its best block pair (`top` > 1: the mean of its `top`
    best); chunks shrink by blocks^2 so the products stay as small as one-vector chunks'."""

    def __init__(self, vectors, dtype=jnp.float32, chunk: int = 16384, devices: Optional[Sequence] = None,
                 precision="highest", blocks: int = 1, top: int = 1):
        v = _check_vectors(vectors, "coarse database")
        self.n, self.dims = v.shape
        self.blocks = int(blocks)
        if self.blocks < 1 or self.dims % self.blocks:
            raise FeatureError(f"coarse database: {self.dims}-d vectors do not split into {blocks} blocks")
        self.top = self._checked_top(top)
        chunk = max(8, chunk // self.blocks ** 2 // 8 * 8)
        self.dtype = jnp.dtype(dtype)
        self.precision = precision
        devices = list(devices) if devices is not None else jax.local_devices()
        self.n_shards = len(devices)
        per_shard = -(-self.n // self.n_shards)
        self.chunk = int(min(chunk, max(8, -(-per_shard // 8) * 8)))
        per_shard = -(-per_shard // self.chunk) * self.chunk
        self.per_shard = per_shard
        padded = np.zeros((per_shard * self.n_shards, self.dims), self.dtype)   # storage dtype: no f32 copy
        padded[:self.n] = v
        self.mesh = Mesh(np.array(devices), ("db",))
        self.vectors = jax.device_put(padded, NamedSharding(self.mesh, P("db", None)))
        del padded
        # CPU: float16 blocks are converted to float32 before the product, 4096 rows at a time
        # (XLA's float16 product converted the whole database into a float32 temporary on every
        # call; docs/retrieval.md has the figures)
        self.upcast = all(d.platform == "cpu" for d in devices)
        self.sim_rows = max(8, 4096 // self.blocks ** 2)
        self.sim_rows = self.sim_rows if self.chunk % self.sim_rows == 0 else self.chunk
        self._topk_fns = {}
        self._sim_fn = None

    def with_top(self, top: int) -> "CoarseDatabase":
        """The same database, its device arrays shared (no copy), scoring a pair by the mean of its
        `top` best block pairs."""
        out = copy.copy(self)
        out.top, out._topk_fns, out._sim_fn = self._checked_top(top), {}, None
        return out

    def _checked_top(self, top) -> int:
        if not 1 <= int(top) <= self.blocks ** 2:
            raise FeatureError(f"coarse database: top {top} of {self.blocks ** 2} block pairs")
        return int(top)

    # -- all scores -------------------------------------------------------------------------
    def _similarity_fn(self):
        if self._sim_fn is None:
            precision, rows, upcast, blocks, top = self.precision, self.sim_rows, self.upcast, self.blocks, self.top

            def local(q, db):
                return _rows_scores(q, db, rows, precision, upcast, blocks, top)

            fn = jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P("db", None)), out_specs=P(None, "db"))
            self._sim_fn = jax.jit(fn)
        return self._sim_fn

    def similarities(self, queries, batch: int = 256) -> np.ndarray:
        """(Q, E) query vectors -> (Q, N) float32 cosine similarities."""
        q = _check_vectors(queries, "coarse queries", self.dims).astype(np.float32)
        fn = self._similarity_fn()
        out = []
        for s in range(0, q.shape[0], batch):
            qb = q[s:s + batch]
            nb = qb.shape[0]
            pad = np.zeros((batch if q.shape[0] > batch else nb, self.dims), np.float32)
            pad[:nb] = qb
            out.append(np.asarray(fn(jnp.asarray(pad), self.vectors))[:nb, :self.n])
        return np.concatenate(out, 0)

    # -- top-k ------------------------------------------------------------------------------
    def _topk_fn(self, k: int):
        if k not in self._topk_fns:
            chunk, per_shard, n, precision, upcast = self.chunk, self.per_shard, self.n, self.precision, self.upcast
            blocks, top = self.blocks, self.top

            def local(q, db):
                shard = jax.lax.axis_index("db")
                offset = shard * per_shard
                n_valid = jnp.clip(n - offset, 0, per_shard)
                s, i = _scan_topk(q, db, n_valid, k, chunk, offset, precision, upcast, blocks, top)
                s = jax.lax.all_gather(s, "db", axis=1, tiled=True)
                i = jax.lax.all_gather(i, "db", axis=1, tiled=True)
                order = jnp.lexsort((jnp.where(i < 0, jnp.iinfo(jnp.int32).max, i), -s), axis=1)[:, :k]
                return jnp.take_along_axis(s, order, 1), jnp.take_along_axis(i, order, 1)

            fn = jax.shard_map(local, mesh=self.mesh, in_specs=(P(), P("db", None)), out_specs=(P(), P()),
                               check_vma=False)
            self._topk_fns[k] = jax.jit(fn)
        return self._topk_fns[k]

    def topk(self, queries, k: int, batch: int = 256) -> Tuple[np.ndarray, np.ndarray]:
        """(Q, E) -> (scores (Q, k) float32, indices (Q, k) int64), best first; ties by index."""
        q = _check_vectors(queries, "coarse queries", self.dims).astype(np.float32)
        k = int(min(k, self.n))
        if k <= 0:
            raise ValueError("k must be positive")
        fn = self._topk_fn(k)
        scores, idx = [], []
        for s in range(0, q.shape[0], batch):
            qb = q[s:s + batch]
            nb = qb.shape[0]
            pad = np.zeros((batch if q.shape[0] > batch else nb, self.dims), np.float32)
            pad[:nb] = qb
            sc, ix = fn(jnp.asarray(pad), self.vectors)
            scores.append(np.asarray(sc)[:nb])
            idx.append(np.asarray(ix)[:nb].astype(np.int64))
        return np.concatenate(scores, 0), np.concatenate(idx, 0)


def region_means(vectors, segments: int, regions: int) -> np.ndarray:
    """[N, S * R * D] segment-major region vectors (`CoarseGrainedStudent(num_segments=S)`) ->
    [N, R * D]: each region's S unit vectors summed over the segments and L2-normalised, one vector
    per region for the whole video (the shortlist's first stage)."""
    v = np.asarray(vectors, np.float32)
    n, e = v.shape
    if segments < 1 or regions < 1 or e % (segments * regions):
        raise FeatureError(f"coarse vectors: {e}-d vectors do not split into {segments} segments x {regions} regions")
    out = v.reshape(n, segments, regions, e // (segments * regions)).sum(1)
    out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out.reshape(n, e // segments)


class ShortlistCoarseDatabase:
    """Two-stage top of a region-vector CG database (`CoarseGrainedStudent(region_max=True,
    num_segments=S)`, S R unit vectors per video): `candidates(queries, pool)` ranks every video by
    the best pair of its R region vectors averaged over the segments (`region_means`: R^2 products
    a pair instead of (S R)^2; the best pair, as cheap as a plain maximum, finds as many copies here
    as the mean of the best few) and scores the first `pool` exactly (the mean of the `top` best of
    the (S R)^2 pairs, as `exact` scores them). The exact database `exact` (a CoarseDatabase of the
    S R blocks, shared with an exact search) stays on the devices; the R-vector copy adds 1 / S of
    its memory. With a pool as large as the database the scores are `exact`'s (to float32 rounding)."""

    def __init__(self, exact: CoarseDatabase, segments: int, vectors=None, batch_rows: int = 4096):
        if exact.blocks % int(segments) or int(segments) < 1:
            raise FeatureError(f"shortlist: {exact.blocks} vectors per video do not split into {segments} segments")
        self.exact, self.segments = exact, int(segments)
        self.regions = exact.blocks // self.segments
        v = np.asarray(exact.vectors[:exact.n], np.float32) if vectors is None else vectors
        self.first = CoarseDatabase(region_means(v, self.segments, self.regions), dtype=exact.dtype,
                                    devices=list(exact.mesh.devices.flat), precision=exact.precision,
                                    blocks=self.regions)
        self.n, self.dims = exact.n, exact.dims
        self.batch_rows = int(batch_rows)
        self._rescore = None

    def _rescore_fn(self):
        if self._rescore is None:
            precision, upcast, blocks, top = self.exact.precision, self.exact.upcast, self.exact.blocks, self.exact.top

            def one(pair):
                q, rows = pair
                return _chunk_scores(q[None], rows, precision, upcast, blocks, top)[0]

            # a loop over the queries, not vmap: XLA on the CPU runs the batched form ~3x slower
            self._rescore = jax.jit(lambda q, db, idx: jax.lax.map(one, (q, jnp.take(db, idx, axis=0))))
        return self._rescore

    def candidates(self, queries, pool: int, batch: int = 256, first_scores: bool = False):
        """(Q, S R D) query vectors -> (positions (Q, C) int64, exact scores (Q, C) float32) of each
        query's first C = min(pool, N) videos by the first stage, best first (ties by index); with
        `first_scores`, their first-stage scores (Q, C) too (to merge the pools of several shards)."""
        q = _check_vectors(queries, "coarse queries", self.dims).astype(np.float32)
        pool = int(min(pool, self.n))
        if pool < 1:
            raise ValueError(f"the shortlist pool must be >= 1, got {pool}")
        fn, per = self._rescore_fn(), max(1, self.batch_rows // pool)
        positions, scores, firsts = [], [], []
        for s in range(0, q.shape[0], batch):
            qb = q[s:s + batch]
            first = self.first.similarities(region_means(qb, self.segments, self.regions), batch=batch)
            idx = first_k(first, pool)
            positions.append(idx)
            if first_scores:
                firsts.append(np.take_along_axis(np.asarray(first, np.float32), idx, 1))
            for r in range(0, qb.shape[0], per):
                qr, ir = qb[r:r + per], idx[r:r + per]
                nr = qr.shape[0]
                if nr < per and q.shape[0] > per:         # one compiled shape for every batch
                    qr = np.concatenate([qr, np.zeros((per - nr, qr.shape[1]), np.float32)])
                    ir = np.concatenate([ir, np.zeros((per - nr, pool), ir.dtype)])
                scores.append(np.asarray(fn(jnp.asarray(qr), self.exact.vectors, jnp.asarray(ir, jnp.int32)))[:nr])
        out = np.concatenate(positions, 0), np.concatenate(scores, 0).astype(np.float32)
        return out + (np.concatenate(firsts, 0),) if first_scores else out


def first_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(Q, N) scores -> (Q, k) int64 positions of each row's k best, best first, ties to the lower
    position (a stable descending sort's first k, in O(N) per row)."""
    s = np.asarray(scores)
    k = int(min(k, s.shape[1]))
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1]
    out = np.empty((s.shape[0], k), np.int64)
    for i, (row, t) in enumerate(zip(s, kth)):
        above = np.flatnonzero(row > t)
        sel = np.concatenate([above, np.flatnonzero(row == t)[:k - above.shape[0]]])
        out[i] = sel[np.lexsort((sel, -row[sel]))]
    return out


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


class FaissCoarseIndex:
    """Exact inner-product top-k with faiss (optional dependency: `pip install faiss-cpu`)."""

    def __init__(self, vectors):
        try:
            import faiss  # optional dependency
        except ImportError as e:
            raise ImportError("FaissCoarseIndex needs faiss: pip install faiss-cpu (or dns-jax[faiss])") from e
        v = np.ascontiguousarray(_check_vectors(vectors, "coarse database"), np.float32)
        self.n, self.dims = v.shape
        self.index = faiss.IndexFlatIP(self.dims)
        self.index.add(v)

    def topk(self, queries, k: int) -> Tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(_check_vectors(queries, "coarse queries", self.dims), np.float32)
        s, i = self.index.search(q, int(min(k, self.n)))
        return s.astype(np.float32), i.astype(np.int64)
