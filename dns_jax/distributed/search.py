"""Sharded DnS search: an index split over Ray actors.

    with ShardedSearch(dns, 'indexes/fivr', actors=4) as search:     # local cluster, or address=...
        res = search.search(queries, budget=0.05, topk=100)          # like search_index(..., 'dns')
        [search.ids[i] for i in res.ranking[0]]

Each actor holds a contiguous run of the index's shards (balanced by videos): their CG vectors
(`CoarseDatabase`), selector self-similarities and fine representations, resident on its device
(a GPU where the cluster has them) or read from the memory-mapped shards (`resident=False`). A
search of an exact index is two fan-outs:

1. every actor scores its videos with the coarse stage and the selector, keeps them, and returns
   its `K` best selector scores (`K` = the budget over the whole index, `budget_count(budget, N)`);
   the driver merges them into the global top K, ties to the lower index position, exactly as
   `selection` ranks the whole index;
2. every actor re-scores its share of those K videos with the fine student, mixes (the official
   s / 2 + 0.5, or `fine_mapping`) and returns its top-k by mixed score; the driver merges them.

An index with the compressed coarse stage (`--coarse faiss-ivfpq`, `search_index`'s
`uses_candidates`) is one fan-out: the driver asks the faiss index for each query's pool, scores
the pool's CG vectors exactly and runs the selector on it (`DnS.pool_selection`: pool-sized work,
the actors hold no CG vectors), then each actor re-scores the chosen videos of its shards with the
fine student and the driver ranks the pool (`rank_pool`), as `DnS.search_candidates` does.
An index recorded with the shortlist (`--coarse shortlist`) is two fan-outs too: every actor ranks
its videos by the shortlist's first stage and returns its own first `pool` with their first-stage
and exact scores (`ShortlistCoarseDatabase.candidates`); the driver merges them into the global
first `pool` (ties to the lower index position, as one process's `first_k`), runs the selector on
that pool, and the actors re-score the chosen videos with the fine student as above. Each actor
scores at most `pool` videos exactly, so the work per actor does not grow with the number of actors.

With `segments=K` each actor localizes its re-ranked results that can be among the first K of a
query (its own first K, which it knows without the others) on the frame matrices its fine stage
computed, and ships the segments back with the scores.

The ranked ids, scores and segments are those of `search_index(dns, index, queries, 'dns', ...)` in
one process: the selection is the same by construction, and each score is computed from the same
stored representations (the fine kernel lays other canvases out, which may move a float32 score by
an ulp, as it does on several devices in one process).
"""
from __future__ import annotations

import contextlib
import itertools
import time
import types
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from dns_jax.compile_cache import enable_compilation_cache
from dns_jax.distributed.cluster import PortableNetwork, cluster, cluster_resources
from dns_jax.index import compressed
from dns_jax.index.search import check_search_options, compressed_search, uses_candidates, uses_shortlist
from dns_jax.index.store import Index
from dns_jax.localization import COARSE_ONLY, NotLocalized
from dns_jax.retrieval import DnS, Representations, SearchResults, budget_count, selector_scores
from dns_jax.retrieval.dns import mixed_scores, rank_pool
from dns_jax.validation import FeatureError


class ShardActor:
    """One actor of a ShardedSearch (run as a Ray actor; usable in-process too, as the tests do).
    `coarse_search`: 'exact' keeps the shards' CG vectors for the exact coarse stage (`select`),
    'shortlist' those and the shortlist's first stage (`shortlist`), 'faiss' none (the driver's
    faiss stage proposes the candidates)."""

    def __init__(self, directory: str, shards: Sequence[str], fine: PortableNetwork, coarse: PortableNetwork,
                 selector: PortableNetwork, binary: str = "packed", coarse_dtype: str = "float32",
                 resident: Optional[bool] = True, own_process: bool = True, coarse_search: str = "exact"):
        if coarse_search not in ("exact", "shortlist", "faiss"):
            raise ValueError(f"coarse_search must be 'exact', 'shortlist' or 'faiss', got {coarse_search!r}")
        if own_process:                     # a Ray actor: $DNS_JAX_COMPILATION_CACHE, as the command-line tools
            enable_compilation_cache()
        self.index = Index.open(directory, shards=list(shards))
        self.dns = DnS(fine.load(), coarse.load(), selector.load(), binary, resident=resident)
        self.coarse_dtype = coarse_dtype
        self.pending: Dict[int, tuple] = {}
        if len(self.index):
            if coarse_search == "shortlist":
                self.dns.shortlist_database(self.index, coarse_dtype)
            elif coarse_search == "exact":
                self.dns.coarse_database(self.index, coarse_dtype)
            self.dns.fine_database(self.index)            # resident copy made now, not on the first query

    def info(self) -> dict:
        resident = self.dns.fine_database(self.index) if len(self.index) else None
        return {"ids": list(self.index.ids), "resident_bytes": resident.nbytes if resident is not None else 0}

    def select(self, key: int, queries: Representations, k: int):
        """Coarse + selector for every held video; returns the local top-k selector scores
        (indices, scores), best first, ties to the lower position."""
        t0 = time.perf_counter()
        n = len(self.index)
        if n == 0:
            empty = np.zeros((len(queries), 0))
            self.pending[key] = (queries, empty, empty, {})
            return empty.astype(np.int64), empty.astype(np.float32)
        coarse = self.dns.coarse_database(self.index, self.coarse_dtype).similarities(queries.coarse)
        t1 = time.perf_counter()
        sel = selector_scores(self.dns.selector_model, queries.selfsim, self.index.selfsim, coarse)
        t2 = time.perf_counter()
        order = np.argsort(-sel, axis=1, kind="stable")[:, :min(k, n)]
        self.pending[key] = (queries, coarse, sel, {"coarse_s": t1 - t0, "selector_s": t2 - t1})
        return order, np.take_along_axis(sel, order, 1)

    def shortlist(self, queries: Representations, pool: int):
        """The shortlist of the held videos: (local positions (Q, C), exact CG scores (Q, C),
        first-stage scores (Q, C), seconds) of each query's first C = min(pool, held) videos by
        the first stage, best first, ties to the lower position."""
        t0 = time.perf_counter()
        if not len(self.index):
            empty = np.zeros((len(queries), 0), np.float32)
            return empty.astype(np.int64), empty, empty, 0.0
        short = self.dns.shortlist_database(self.index, self.coarse_dtype)
        idx, exact, first = short.candidates(queries.coarse, pool, first_scores=True)
        return idx, exact, first, time.perf_counter() - t0

    def _fine(self, queries: Representations, chosen: List[np.ndarray], matrices: bool):
        """Raw fine similarities of `chosen[q]` (local indices) per query -> (list of (n_q,) float32,
        per query (FrameMatrices, {local index: column}) or None)."""
        vals, kept = [], [None] * len(queries)
        resident = self.dns.fine_database(self.index) if any(len(c) for c in chosen) else None
        for qi, idx in enumerate(chosen):
            idx = np.asarray(idx, np.int64)
            if not len(idx):
                vals.append(np.zeros(0, np.float32))
                continue
            targets = resident.subset(idx) if resident is not None else self.index.fine_reps(idx)
            out = self.dns.scorer.similarities([queries.fine_rep(qi)], targets, frame_matrices=matrices)
            if matrices:
                out, m = out
                kept[qi] = (m, {int(j): c for c, j in enumerate(idx)})
            vals.append(np.asarray(out[0], np.float32))
        return vals, kept

    def _localize(self, queries, rows: List[np.ndarray], kept, options) -> List[Dict[int, list]]:
        """Segments of the local indices `rows[q]` (those with a frame matrix; the others get
        NotLocalized) -> per query {local index: segments}, in one batched call."""
        width = max((len(r) for r in rows), default=0)
        if not width:
            return [{} for _ in rows]
        ranking = np.full((len(rows), width), -1, np.int64)           # -1: no matrix, skipped
        for q, r in enumerate(rows):
            ranking[q, :len(r)] = r
        found = self.dns.localize_results(ranking, width, kept, queries, self.index, options)
        return [{int(j): s for j, s in zip(row, segs) if j >= 0} for row, segs in zip(ranking, found)]

    def rerank(self, key: int, chosen: List[np.ndarray], topk: Optional[int],
               fine_mapping: Optional[Callable[[np.ndarray], np.ndarray]] = None, segments: int = 0,
               localize_options: Optional[dict] = None):
        """Fine scores for `chosen[q]` (local indices) of each query, mixed with the coarse ones;
        returns the local top-k (indices, scores, re-ranked flags, timings, per query {local index:
        segments} of the first `segments`)."""
        queries, coarse, _, timings = self.pending.pop(key)
        t0 = time.perf_counter()
        n = coarse.shape[1]
        mixed = np.array(coarse, dtype=np.float32, copy=True)
        reranked = np.zeros(coarse.shape, bool)
        vals, kept = self._fine(queries, chosen, segments > 0)
        for qi, (idx, f) in enumerate(zip(chosen, vals)):
            if len(idx):
                idx = np.asarray(idx, np.int64)
                mixed[qi, idx] = mixed_scores(f, mixed[qi, idx], fine_mapping)
                reranked[qi, idx] = True
        k = n if not topk else min(int(topk), n)
        order = np.argsort(-mixed, axis=1, kind="stable")[:, :k]
        t1 = time.perf_counter()
        timings["fine_s"] = t1 - t0
        found = self._localize(queries, list(order[:, :segments]), kept, localize_options) if segments > 0 else None
        timings["localize_s"] = time.perf_counter() - t1
        return (order, np.take_along_axis(mixed, order, 1), np.take_along_axis(reranked, order, 1), timings,
                found)

    def rescore(self, queries: Representations, chosen: List[np.ndarray],
                fine_mapping: Optional[Callable[[np.ndarray], np.ndarray]] = None, segments: int = 0,
                localize_options: Optional[dict] = None, coarse: Optional[List[np.ndarray]] = None):
        """The fine stage of a search on a pool (faiss candidates, the shortlist): raw fine
        similarities of `chosen[q]` (local indices) per query -> (list of (n_q,) float32, per query
        {local index: segments} of its first `segments` by mixed score (ties to the lower index;
        `coarse[q]`: the chosen videos' CG scores, which a FusedMapping mixes in), timings)."""
        t0 = time.perf_counter()
        vals, kept = self._fine(queries, chosen, segments > 0)
        t1 = time.perf_counter()
        found = None
        if segments > 0:
            rows = []
            for qi, (idx, f) in enumerate(zip(chosen, vals)):
                idx = np.asarray(idx, np.int64)
                mapped = mixed_scores(f, None if coarse is None else coarse[qi], fine_mapping)
                rows.append(idx[np.lexsort((idx, -mapped.astype(np.float64)))[:segments]])
            found = self._localize(queries, rows, kept, localize_options)
        return vals, found, {"fine_s": t1 - t0, "localize_s": time.perf_counter() - t1}


def _balanced_runs(counts: Sequence[int], parts: int) -> List[range]:
    """Split shards (with these video counts) into at most `parts` contiguous, non-empty runs whose
    videos are as close as possible to equal."""
    cum = np.cumsum(counts)
    bounds = [0]
    for c in range(1, parts):
        b = int(np.argmin(np.abs(cum - cum[-1] * c / parts))) + 1
        if bounds[-1] < b < len(counts):
            bounds.append(b)
    bounds.append(len(counts))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _merge(lists, offsets, k: Optional[int]):
    """Per query: merge per-actor (indices, scores, extra) lists, best score first, ties to the
    lower global position -> (global indices, scores, extra) of the top k."""
    idx = np.concatenate([o + off for (o, _, _), off in zip(lists, offsets)], axis=1)
    score = np.concatenate([s for _, s, _ in lists], axis=1)
    extra = np.concatenate([e for _, _, e in lists], axis=1)
    order = np.lexsort((idx, -score.astype(np.float64)), axis=1)
    if k is not None:
        order = order[:, :k]
    return (np.take_along_axis(idx, order, 1), np.take_along_axis(score, order, 1),
            np.take_along_axis(extra, order, 1))


class _InProcess:
    """A ShardActor called directly, behind the `.method.remote(...)` spelling of a Ray actor."""

    def __init__(self, actor: ShardActor):
        self._actor = actor

    def __getattr__(self, name):
        return types.SimpleNamespace(remote=getattr(self._actor, name))


class ShardedSearch:
    """DnS search over an index split among `actors` Ray actors (default: one per GPU of the
    cluster, else 2). `address`: a running cluster; None starts a local one (`num_cpus`).
    `resident`: actors keep their fine representations on the device (default True).
    `coarse_search`: as `search_index`'s (None: the index's; a faiss-ivfpq index's faiss file is
    opened and checked here, before any actor starts; 'shortlist' needs a region-vector CG student).
    `use_ray=False` runs the same shards in this process (no Ray: for tests and small machines)."""

    def __init__(self, dns: DnS, directory: str, actors: Optional[int] = None, *, address: Optional[str] = None,
                 num_cpus: Optional[int] = None, coarse_dtype: str = "float32", resident: Optional[bool] = True,
                 actor_cpus: Optional[float] = None, use_ray: bool = True, coarse_search: Optional[str] = None):
        index = Index.open(directory)
        entries = index.manifest["shards"]
        if not len(index):
            raise FeatureError(f"the index at {directory!r} is empty")
        shortlist = uses_shortlist(index, coarse_search)
        if shortlist:
            dns.check_shortlist()                                          # a one-vector student: before the actors
        faiss = compressed_search(index) if uses_candidates(index, coarse_search) else None   # CoarseIndexMismatch too
        held = "shortlist" if shortlist else "faiss" if faiss is not None else "exact"
        self._stack = contextlib.ExitStack()
        ray = self._stack.enter_context(cluster(address, num_cpus)) if use_ray else None
        try:
            gpus = int(cluster_resources(ray).get("GPU", 0)) if ray else 0
            n = actors or (gpus or 2)
            counts = [e["count"] - len(e.get("removed", ())) for e in entries]
            runs = _balanced_runs(counts, min(n, len(entries)))
            nets = [PortableNetwork.of(m) for m in (dns.fine_model, dns.coarse_model, dns.selector_model)]
            binary = "packed" if dns.scorer.packed or not dns.scorer.bits else "float"
            shards = [[entries[i]["name"] for i in run] for run in runs]
            if ray is None:
                self.actors = [_InProcess(ShardActor(directory, names, *nets, binary, coarse_dtype, resident,
                                                     own_process=False, coarse_search=held))
                               for names in shards]
                self._get, self._put = (lambda x: x), (lambda x: x)
            else:
                cpus = cluster_resources(ray).get("CPU", 1)
                options = {"num_gpus": 1} if gpus else {"num_cpus": actor_cpus or max(0.25, min(1.0, cpus / len(runs)))}
                remote = ray.remote(**options)(ShardActor)
                refs = [ray.put(x) for x in nets]
                self.actors = [remote.remote(directory, names, *refs, binary, coarse_dtype, resident,
                                             coarse_search=held) for names in shards]
                self._get, self._put = ray.get, ray.put
            infos = self._get([a.info.remote() for a in self.actors])
        except Exception:
            self._stack.close()
            raise
        self.ray = ray
        self.dns = dns
        self.directory = directory
        self.ids: List[str] = [v for info in infos for v in info["ids"]]
        self.sizes = [len(info["ids"]) for info in infos]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.resident_bytes = [info["resident_bytes"] for info in infos]
        self._keys = itertools.count()
        self.index, self._faiss, self._shortlist = index, faiss, shortlist
        if self.ids != index.ids:
            self.close()
            raise FeatureError(f"the index at {directory!r} changed while the sharded search started; start it again")

    def __len__(self):
        return len(self.ids)

    @property
    def candidates_only(self) -> bool:
        """Whether searches rank each query's pool only (faiss candidates or the shortlist)."""
        return self._faiss is not None or self._shortlist

    def search(self, queries: Representations, budget=0.1, topk: Optional[int] = 100,
               fine_mapping: Optional[Callable[[np.ndarray], np.ndarray]] = None, segments: int = 0,
               localize_options: Optional[dict] = None, pool: Optional[int] = None) -> SearchResults:
        """Rank the indexed videos for each query (Representations: from `dns.index` or an index):
        the results of `search_index(dns, index, queries, 'dns', budget, topk, ...)` (ranking:
        positions in `self.ids`, the index's order; `segments`, `pool` as there)."""
        check_search_options("dns", budget, topk)
        if self.candidates_only:
            return self._search_candidates(queries, budget, topk, fine_mapping, segments, localize_options, pool)
        n = len(self.ids)
        k_fine = budget_count(budget, n)
        key = next(self._keys)
        t0 = time.perf_counter()
        q = self._put(queries)
        picks = self._get([a.select.remote(key, q, k_fine) for a in self.actors])
        t1 = time.perf_counter()
        nq = len(queries)
        holder = [np.full(o.shape, a) for a, (o, _) in enumerate(picks)]          # which actor holds each pick
        chosen, _, who = _merge([(o, s, h) for (o, s), h in zip(picks, holder)], self.offsets, k_fine)
        shares = [[chosen[qi][who[qi] == a] - self.offsets[a] for qi in range(nq)] for a in range(len(self.actors))]
        k = n if not topk else min(int(topk), n)
        parts = self._get([a.rerank.remote(key, shares[i], k, fine_mapping, segments, localize_options)
                           for i, a in enumerate(self.actors)])
        t2 = time.perf_counter()
        ranking, scores, flags = _merge([(o, s, r) for o, s, r, _, _ in parts], self.offsets, k)
        per = max(nq, 1)
        worst = lambda name: max(p[3].get(name, 0.0) for p in parts) / per  # noqa: E731
        res = SearchResults(query_ids=list(queries.ids), ranking=ranking, scores=scores, reranked=flags,
                            timings={"coarse_s_per_query": worst("coarse_s"), "selector_s_per_query": worst("selector_s"),
                                     "fine_s_per_query": worst("fine_s"), "fine_pairs_per_query": k_fine,
                                     "select_round_s_per_query": (t1 - t0) / per,
                                     "rerank_round_s_per_query": (t2 - t1) / per})
        if segments > 0:
            res.segments = self._segments(ranking, flags, segments, [p[4] for p in parts])
            res.timings["localize_s_per_query"] = worst("localize_s")
        return res

    def _search_candidates(self, queries, budget, topk, fine_mapping, segments, localize_options, pool):
        """`search` of an index with the compressed coarse stage or the shortlist (see the module
        docstring)."""
        n = len(self.ids)
        t0 = time.perf_counter()
        size = compressed.pool_size(n, budget, topk, pool)
        q = self._put(queries)
        if self._shortlist:
            lists = self._get([a.shortlist.remote(q, size) for a in self.actors])
            # the global first `size` by first-stage score (ties to the lower position, as first_k),
            # each with its exact CG score
            cand, _, coarse = _merge([(pos, first, exact) for pos, exact, first, _ in lists], self.offsets, size)
        else:
            cand, coarse = self._faiss.candidates(queries.coarse, size)
        t1 = time.perf_counter()
        cand, c, chosen, t_sel = self.dns.pool_selection(queries, self.index, cand, coarse, budget)
        n_fine = min(budget_count(budget, n), cand.shape[1])
        k = cand.shape[1] if not topk else int(min(topk, cand.shape[1]))
        nq = len(queries)
        picked = [cand[qi, chosen[qi]] for qi in range(nq)]                    # global positions
        who = [np.searchsorted(self.offsets, p, side="right") - 1 for p in picked]
        fine = [np.zeros(len(p), np.float32) for p in picked]
        found = [[{} for _ in range(nq)] for _ in self.actors]
        parts = []
        t2 = time.perf_counter()
        if n_fine:
            busy = [a for a in range(len(self.actors)) if any(np.any(w == a) for w in who)]
            calls = [self.actors[a].rescore.remote(q, [picked[qi][who[qi] == a] - self.offsets[a] for qi in range(nq)],
                                                   fine_mapping, segments, localize_options,
                                                   [c[qi, chosen[qi]][who[qi] == a] for qi in range(nq)])
                     for a in busy]
            parts = self._get(calls)
            for a, (vals, segs, _) in zip(busy, parts):
                for qi in range(nq):
                    fine[qi][who[qi] == a] = vals[qi]
                found[a] = segs or found[a]
        t3 = time.perf_counter()
        ranking = np.zeros((nq, k), np.int64)
        scores = np.zeros((nq, k), np.float32)
        flags = np.zeros((nq, k), bool)
        for qi in range(nq):
            ranking[qi], scores[qi], flags[qi] = rank_pool(cand[qi], c[qi], chosen[qi], fine[qi] if n_fine else None,
                                                           k, fine_mapping)
        per = max(nq, 1)
        worst = lambda name: max((p[2].get(name, 0.0) for p in parts), default=0.0) / per  # noqa: E731
        res = SearchResults(query_ids=list(queries.ids), ranking=ranking, scores=scores, reranked=flags,
                            timings={"coarse_s_per_query": (t1 - t0) / per, "selector_s_per_query": t_sel / per,
                                     "fine_s_per_query": worst("fine_s"), "fine_pairs_per_query": n_fine,
                                     "candidates_per_query": cand.shape[1], "rerank_round_s_per_query": (t3 - t2) / per})
        if segments > 0:
            res.segments = self._segments(ranking, flags, segments, found)
            res.timings["localize_s_per_query"] = worst("localize_s")
        return res

    def _segments(self, ranking: np.ndarray, flags: np.ndarray, count: int, found) -> List[List]:
        """results.segments from the actors' {local index: segments} per query (`found[actor][q]`);
        a result not re-ranked is NotLocalized(COARSE_ONLY)."""
        out = []
        for qi, (row, rer) in enumerate(zip(ranking, flags)):
            segs = []
            for j, r in zip(row[:count], rer[:count]):
                a = int(np.searchsorted(self.offsets, j, side="right") - 1)
                segs.append(found[a][qi][int(j - self.offsets[a])] if r else NotLocalized(COARSE_ONLY))
            out.append(segs)
        return out

    def close(self):
        for a in getattr(self, "actors", []):
            if self.ray is not None:
                try:
                    self.ray.kill(a)
                except Exception:          # already gone
                    pass
        self.actors = []
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
