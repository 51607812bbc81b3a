"""The compressed coarse stage of an index: `dns-jax index --coarse faiss-ivfpq`.

The manifest's `coarse_search` says how the coarse stage searches: 'exact' (default: the CG cosine
to every video), 'shortlist' (a region-vector CG student's two-stage search, nothing stored:
`retrieval.ShortlistCoarseDatabase`, index/search.py) or 'faiss-ivfpq': a faiss OPQ + IVF-PQ index
of the CG vectors
(dns_jax.retrieval.coarse_faiss, 64 bytes per video with the defaults) kept in

    <dir>/coarse_faiss/header.json    what it was trained on and what it covers (see below)
    <dir>/coarse_faiss/index.faiss    the faiss index; each vector's faiss id is
                                      (shard number << 32) | row in the shard

written atomically (a temporary directory renamed into place) by `sync` while the writer holds the
index's lock: `build_index` calls it after every build, append or removal. It trains the index on
(a sample of) the collection's CG vectors the first time, adds the vectors of new shards later,
and trains it again when the collection has grown RETRAIN_GROWTH times past what it was trained on
or REBUILD_REMOVED of its vectors have left the index. A collection of fewer than MIN_VIDEOS
videos is searched exactly (said in the log) until it has grown.

header.json names the CG network the vectors come from (name and weights fingerprint), their
dimension, the training sample's size and fingerprint, and every shard it covers (name, count and
a fingerprint of three of its vectors). `open_compressed` refuses (CoarseIndexMismatch, one line
naming the file) a faiss index trained for another network or over shards this index does not
hold. Removed videos stay in the faiss index until it is rebuilt but have no position in the
index, so they are dropped from every candidate list; the pool asked from faiss is enlarged by the
number of removed vectors so that a query still gets its full pool.

Search (`candidates`): the faiss index proposes a pool of videos per query (at least MIN_POOL, or
POOL_FACTOR times the larger of the budget and the top-k), the videos of shards added after the
last sync are added to every pool, and the pool's CG vectors are read from the shards (only those
rows) and scored exactly; the selector and the fine student then run on the pool
(`DnS.search_candidates`). With a pool as large as the collection this is the exact search.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from dns_jax.index.store import Index
from dns_jax.retrieval import budget_count
from dns_jax.retrieval.coarse_faiss import (
    HEADER,
    CoarseIndexMismatch,
    CompressedCoarseIndex,
    IVFPQParams,
    fingerprint,
)

EXACT, FAISS_IVFPQ, SHORTLIST = "exact", "faiss-ivfpq", "shortlist"
COARSE_SEARCH = (EXACT, FAISS_IVFPQ, SHORTLIST)
DIRNAME = "coarse_faiss"
MIN_VIDEOS = 64             # fewer: searched exactly (too few vectors to train the quantisers)
TRAIN_SIZE = 65536          # vectors sampled to train on
RETRAIN_GROWTH = 4.0        # retrain once the collection has grown this many times past the sample
REBUILD_REMOVED = 0.25      # rebuild once this share of the faiss index's vectors was removed
MIN_POOL, POOL_FACTOR = 1000, 4
OPQ_MIN = 10000             # fewer training vectors: no OPQ rotation (PQ on the raw dimensions)
OPQ_ITERATIONS = 4
RECALL_QUERIES, RECALL_K = 64, 100   # the recall logged (and kept in header.json) after each training
SHIFT = 32                  # faiss id = shard number << SHIFT | row


class CompressedCoarseError(ValueError):
    """The compressed coarse stage cannot be used (faiss missing, none built, a bad option)."""


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise CompressedCoarseError("the compressed coarse stage (faiss-ivfpq) needs faiss: "
                                    "pip install 'dns-jax[faiss]'") from None
    return faiss


def check_kind(kind: Optional[str]) -> None:
    if kind is not None and kind not in COARSE_SEARCH:
        raise CompressedCoarseError(f"coarse search must be one of {', '.join(COARSE_SEARCH)}, got {kind!r}")


def path_of(index: Index) -> str:
    return os.path.join(index.directory, DIRNAME)


def network_tag(index: Index) -> str:
    """The CG network of the index as the faiss header names it: 'name:weights fingerprint'."""
    net = index.manifest["networks"]["coarse"]
    return f"{net['name']}:{net['fingerprint'][:16]}"


def params_for(n: int, dims: int) -> IVFPQParams:
    """Parameters for `n` training vectors of `dims` dims: OPQ to 896 dims and PQ56 x 8 bits (64 B a
    video with the id) with nlist about 4 sqrt(n), a quarter of them probed (docs/scaling.md); below
    OPQ_MIN vectors no OPQ (1024-d: PQ32, 40 B) and fewer lists and PQ centroids for small samples."""
    fit = n - max(1, n // 10)
    nbits = int(np.clip(np.floor(np.log2(max(fit, 16) / 4)), 4, 8))
    nlist = int(2 ** np.clip(np.round(np.log2(4 * np.sqrt(n))), 0, 16))
    nlist = max(1, min(nlist, fit // 16))
    nprobe = max(min(IVFPQParams.nprobe, nlist), nlist // 4)    # a quarter of the lists: recall@100 0.985 at 10^6
    if n < OPQ_MIN:             # OPQ needs many vectors (and time): PQ on the raw dims, m dividing them
        m = max(d for d in range(1, min(IVFPQParams.m, dims) + 1) if dims % d == 0)
        return IVFPQParams(m=m, nbits=nbits, nlist=nlist, nprobe=nprobe, transform="none")
    m = min(IVFPQParams.m, dims)
    return IVFPQParams(m=m, nbits=nbits, nlist=nlist, nprobe=nprobe,
                       transform="opq", transform_dims=min(16 * m, dims // m * m), opq_iterations=OPQ_ITERATIONS)


def _shard_sample(index: Index, si: int) -> str:
    """Fingerprint of the first, middle and last CG vector of shard `si`."""
    c = index.shards[si].coarse
    rows = sorted({0, c.shape[0] // 2, c.shape[0] - 1})
    return fingerprint(np.asarray(c[rows]))


def _covered_problem(index: Index, covered) -> Optional[str]:
    """Why the shards a faiss header covers are not this index's, or None."""
    names = {e["name"]: i for i, e in enumerate(index.manifest["shards"])}
    for entry in covered:
        si = names.get(entry["name"])
        if si is None:
            return f"it covers shard {entry['name']!r}, which this index does not hold"
        if len(index.shards[si].ids) != entry["count"] or _shard_sample(index, si) != entry["sample"]:
            return f"its shard {entry['name']!r} holds other CG vectors than this index's"
    return None


def open_compressed(index: Index) -> CompressedCoarseIndex:
    """The faiss index of `index`, checked against it (CoarseIndexMismatch naming the file)."""
    require_faiss()
    path = path_of(index)
    dims = index.coarse_dims or None
    fa = CompressedCoarseIndex.load(path, dims=dims, network=network_tag(index))
    problem = _covered_problem(index, fa.header.get("covered", []))
    if problem:
        raise CoarseIndexMismatch(f"{os.path.join(path, HEADER)} was built for another index: {problem}; "
                                  f"rebuild it with `dns-jax index --index {index.directory} ... --coarse "
                                  f"{FAISS_IVFPQ}`")
    return fa


def _ids_of(shard_name: str, rows: np.ndarray) -> np.ndarray:
    return (np.int64(int(shard_name)) << SHIFT) | rows.astype(np.int64)


def _train(index: Index, live: Dict[str, np.ndarray], seed: int, log) -> Tuple[CompressedCoarseIndex, list]:
    """A new faiss index trained on a sample of the live vectors, holding every live vector."""
    n = len(index)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, TRAIN_SIZE), replace=False))
    x = index.coarse_rows(sample)
    params = params_for(x.shape[0], x.shape[1])
    fa = CompressedCoarseIndex.train(x, network=network_tag(index), params=params, expected_n=n, seed=seed)
    queries = x[rng.choice(x.shape[0], size=min(RECALL_QUERIES, x.shape[0]), replace=False)]
    best = np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
    covered = []
    for si, entry in enumerate(index.manifest["shards"]):
        rows = np.flatnonzero(live[entry["name"]] >= 0)
        if rows.size:
            v, ids = np.asarray(index.shards[si].coarse[rows], np.float32), _ids_of(entry["name"], rows)
            fa.add(v, ids)
            best = _merge_top(best, queries @ v.T, ids, RECALL_K)       # the exact top-k, on the way
        covered.append({"name": entry["name"], "count": len(index.shards[si].ids), "added": int(rows.size),
                        "sample": _shard_sample(index, si)})
    pool = min(MIN_POOL, fa.n)
    found = fa.topk(queries, pool, check=False)[1]
    recall = float(np.mean([np.isin(e, f).mean() for e, f in zip(best[1], found)]))
    fa.header["recall"] = {"queries": int(queries.shape[0]), "k": RECALL_K, "pool": pool, "recall": round(recall, 4)}
    log(f"coarse search: faiss {fa.header['factory']} trained on {x.shape[0]} of {n} CG vectors, "
        f"{fa.bytes_per_video} bytes per video; recall@{RECALL_K} of the exact coarse search in a pool of "
        f"{pool}: {recall:.3f} ({queries.shape[0]} indexed videos as queries)")
    return fa, covered


def _merge_top(best, scores: np.ndarray, ids: np.ndarray, k: int):
    """Running exact top-k: (scores (Q, <=k), ids) merged with a block's scores (Q, B) of `ids` (B,)."""
    s = np.concatenate([best[0], scores], 1)
    i = np.concatenate([best[1], np.broadcast_to(ids, scores.shape)], 1)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)


def _add_new_shards(index: Index, fa: CompressedCoarseIndex, covered: list, live) -> list:
    """Add the live vectors of the shards `covered` does not list; the new covered list."""
    covered = list(covered)
    done = {c["name"] for c in covered}
    for si, entry in enumerate(index.manifest["shards"]):
        if entry["name"] in done:
            continue
        rows = np.flatnonzero(live[entry["name"]] >= 0)
        if rows.size:
            fa.add(np.asarray(index.shards[si].coarse[rows], np.float32), _ids_of(entry["name"], rows))
        covered.append({"name": entry["name"], "count": len(index.shards[si].ids), "added": int(rows.size),
                        "sample": _shard_sample(index, si)})
    return covered


def sync(index: Index, log: Callable[[str], None] = print, seed: int = 0) -> Optional[dict]:
    """Bring the compressed coarse stage of a writable `index` up to date with its shards (see the
    module docstring); removes it when the index searches exactly. Returns the header written, or
    None."""
    path = path_of(index)
    config = index.manifest["networks"]["coarse"].get("config") or {}
    if index.coarse_search == SHORTLIST and not config.get("region_max"):
        raise CompressedCoarseError(
            f"the index at {index.directory!r} has one CG vector per video, which the shortlist (region vectors "
            "averaged over segments, then exact) cannot search; use --coarse exact or faiss-ivfpq")
    if index.coarse_search != FAISS_IVFPQ:
        if os.path.exists(path):
            shutil.rmtree(path)
            log(f"coarse search: {index.coarse_search}; the faiss index was removed")
        return None
    require_faiss()
    if config.get("region_max"):
        raise CompressedCoarseError(
            f"the index at {index.directory!r} has a region_max coarse network (the best of "
            f"{config.get('num_regions', 9) * config.get('num_segments', 1)} region vectors per video), which a "
            "faiss index of one vector per video cannot search; use --coarse exact or shortlist")
    n = len(index)
    if n < MIN_VIDEOS:
        if os.path.exists(path):
            shutil.rmtree(path)
        log(f"coarse search: {n} videos are too few to train the faiss index (it needs {MIN_VIDEOS}); "
            "they are searched exactly until the collection has grown")
        return None
    live = index.live_rows()
    fa, reason = None, None
    if not os.path.exists(path):
        reason = "new"
    else:
        try:
            fa = open_compressed(index)
        except (CoarseIndexMismatch, OSError) as e:
            reason = f"rebuilt ({' '.join(str(e).split())})"
    covered = list(fa.header.get("covered", [])) if fa is not None else []
    if fa is not None:
        removed = sum(int(np.sum(live[c["name"]] < 0)) for c in covered if c["name"] in live)
        if removed > REBUILD_REMOVED * max(fa.n, 1):
            reason = f"rebuilt ({removed} of its {fa.n} vectors were removed from the index)"
        elif n > RETRAIN_GROWTH * fa.header["training_size"] and fa.header["training_size"] < TRAIN_SIZE:
            reason = f"retrained (the collection grew from {fa.header['training_size']} to {n} videos)"
    if reason is not None:
        if reason != "new":
            log(f"coarse search: faiss index {reason}")
        fa, covered = _train(index, live, seed, log)
    else:
        try:
            covered = _add_new_shards(index, fa, covered, live)
        except CoarseIndexMismatch as e:       # new videos unlike the training sample: train again
            log(f"coarse search: faiss index retrained ({' '.join(str(e).split())})")
            fa, covered = _train(index, live, seed, log)
    fa.header["covered"] = covered
    fa.header["coarse_fingerprint"] = index.manifest["networks"]["coarse"]["fingerprint"]
    fa.save(path, overwrite=True)
    return dict(fa.header, ntotal=fa.n)


def ranks_candidates_only(index: Index) -> bool:
    """Whether a search of `index` ranks only a pool of candidates, not every video: a faiss-ivfpq
    index with its faiss file, or a shortlist index."""
    return index.coarse_search == SHORTLIST or (index.coarse_search == FAISS_IVFPQ and os.path.exists(path_of(index)))


def pool_size(n: int, budget, topk: Optional[int], pool: Optional[int] = None) -> int:
    """Candidates per query: `pool`, else max(MIN_POOL, POOL_FACTOR * max(budget, top-k)), at most n."""
    if pool is not None:
        if not isinstance(pool, (int, np.integer)) or isinstance(pool, bool) or pool < 1:
            raise CompressedCoarseError(f"the candidate pool must be a whole number >= 1, got {pool!r}")
        return int(min(pool, n))
    want = max(budget_count(budget, n), topk or n)
    return int(min(n, max(MIN_POOL, POOL_FACTOR * want)))


class CompressedSearch:
    """The faiss candidates of an index: `candidates(query CG vectors, pool)` -> positions, cosines."""

    def __init__(self, index: Index):
        self.index = index
        self.faiss = open_compressed(index)
        live = index.live_rows()
        covered = {c["name"] for c in self.faiss.header.get("covered", [])}
        self.removed = sum(int(np.sum(p < 0)) for name, p in live.items() if name in covered)
        # faiss id -> position: a flat table of every covered shard's rows
        numbers = [int(name) for name in live]
        self._start = np.full(max(numbers, default=0) + 1, -1, np.int64)
        flat, at = [], 0
        for name, pos in live.items():
            if name in covered:
                self._start[int(name)] = at
                flat.append(pos)
                at += pos.shape[0]
        self._flat = np.concatenate(flat) if flat else np.zeros(0, np.int64)
        self.uncovered = np.concatenate([p[p >= 0] for name, p in live.items() if name not in covered]
                                        + [np.zeros(0, np.int64)])

    def positions(self, faiss_ids: np.ndarray) -> np.ndarray:
        """Index positions of faiss ids (-1: removed from the index)."""
        shard, row = faiss_ids >> SHIFT, faiss_ids & ((1 << SHIFT) - 1)
        ok = (faiss_ids >= 0) & (shard < self._start.shape[0])
        start = np.where(ok, self._start[np.where(ok, shard, 0)], -1)
        ok &= start >= 0
        return np.where(ok, self._flat[np.where(ok, start + row, 0)], -1)

    def candidates(self, query_coarse: np.ndarray, pool: int) -> Tuple[np.ndarray, np.ndarray]:
        """(positions (Q, C), exact cosines (Q, C)) of each query's pool: the first `pool` live
        videos the faiss index proposes, plus the videos of shards it does not cover yet."""
        q = np.atleast_2d(np.asarray(query_coarse, np.float32))
        live_covered = len(self.index) - self.uncovered.shape[0]
        take = min(pool, live_covered)
        if take > 0:
            _, ids = self.faiss.topk(q, min(self.faiss.n, take + self.removed), check=False)
            pos = self.positions(ids)
            keep = pos >= 0
            rank = np.cumsum(keep, axis=1) - 1
            cand = np.stack([row[k & (r < take)] for row, k, r in zip(pos, keep, rank)])
        else:
            cand = np.zeros((q.shape[0], 0), np.int64)
        cand = np.concatenate([cand, np.broadcast_to(self.uncovered, (q.shape[0], self.uncovered.shape[0]))], 1)
        vectors = self.index.coarse_rows(cand)
        return cand, np.einsum("qce,qe->qc", vectors, q).astype(np.float32)

    def bytes_per_video(self) -> int:
        return self.faiss.bytes_per_video


def describe(index: Index) -> Dict:
    """What `index`'s coarse stage is, for reports: kind, and the faiss header's figures."""
    out = {"coarse_search": index.coarse_search}
    path = os.path.join(path_of(index), HEADER)
    if index.coarse_search == FAISS_IVFPQ and os.path.exists(path):
        with open(path) as f:
            h = json.load(f)
        out.update({k: h.get(k) for k in ("factory", "bytes_per_video", "ntotal", "training_size", "recall")})
    return out
