"""The one query path over an on-disk index: `dns-jax query`, `dns-jax retrieve` (retrieve.py) and
the library all rank through `search_index`.

    results = search_index(dns, index, queries, stage='dns', budget=0.05, topk=100)
    results.ranking[q], results.scores[q]       # database indices best first, their scores

Stages: 'coarse' (CG cosine for every indexed video), 'fine' (the fine student for every video)
and 'dns' (coarse for all, the selector's top `budget` re-scored by the fine student; a fraction of
the index, or an int: a number of videos per query).

The coarse stage is the index's (`index.coarse_search`): 'exact' (the CG cosine to every video),
'faiss-ivfpq' (index/compressed.py: a faiss IVF-PQ index proposes a pool of candidates per query,
scored exactly from the stored CG vectors; the selector and the fine student run on the pool and
only the pool is ranked) or 'shortlist' (a region-vector CG student with temporal segments: every
video ranked by its region vectors averaged over the segments, the pool scored exactly on the
devices, `retrieval.ShortlistCoarseDatabase`; then as faiss-ivfpq). `coarse_search='exact'`
searches either exactly; `coarse_search='shortlist'` may be asked of any index of region vectors.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import numpy as np

from dns_jax.index import compressed
from dns_jax.index.store import Index
from dns_jax.localization import COARSE_ONLY, NotLocalized
from dns_jax.retrieval import DnS, Representations, SearchResults, check_budget
from dns_jax.validation import FeatureError

STAGES = ("coarse", "fine", "dns")


def check_search_options(stage: str, budget, topk: Optional[int]) -> None:
    """ValueError naming the bad option (checked before any work is done). `budget`: a fraction
    (a float in [0, 1]) or a number of videos per query (an int >= 1)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    check_budget(budget)
    if topk is not None and (not isinstance(topk, (int, np.integer)) or topk < 0):
        raise ValueError(f"top-k must be a whole number >= 0 (0: all), got {topk!r}")


def _ranked(query_ids, scores: np.ndarray, topk: Optional[int], reranked: bool, timings: dict) -> SearchResults:
    n = scores.shape[1]
    k = n if not topk else int(min(topk, n))
    ranking = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return SearchResults(query_ids=list(query_ids), ranking=ranking,
                         scores=np.take_along_axis(scores, ranking, 1),
                         reranked=np.full(ranking.shape, reranked), timings=timings)


def search_index(dns: DnS, index: Index, queries: Representations, stage: str = "dns",
                 budget=0.1, topk: Optional[int] = 100, coarse_dtype: str = "float32",
                 fine_mapping: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 progress: Optional[Callable[[int], None]] = None, segments: int = 0,
                 localize_options: Optional[dict] = None, coarse_search: Optional[str] = None,
                 pool: Optional[int] = None) -> SearchResults:
    """Rank every video of `index` for each query (indexed with `dns.index` or read from the index).
    `budget`: the fraction (float in [0, 1]) or number (int >= 1) of videos re-ranked per query in
    'dns'. `topk` None or 0: all. `fine_mapping` puts raw fine similarities on the coarse scale in 'dns'
    (default: the official s / 2 + 0.5); 'fine' reports raw fine similarities in [-1, 1].
    `segments`: the copied segments of the first `segments` results of each query, from the fine
    stage's frame-to-frame matrices (results.segments, see `DnS.search`); in 'coarse' every one
    is NotLocalized(COARSE_ONLY).
    `coarse_search` None: the index's; 'exact', 'shortlist' or 'faiss-ivfpq' (which the index must have).
    `pool`: candidates per query of 'faiss-ivfpq' and 'shortlist' (default `compressed.pool_size`);
    only they are ranked, in 'coarse' and 'dns'."""
    check_search_options(stage, budget, topk)
    compressed.check_kind(coarse_search)
    if len(index) == 0:
        raise FeatureError(f"the index at {index.directory!r} is empty")
    shortlist = uses_shortlist(index, coarse_search)
    if stage != "fine" and (shortlist or uses_candidates(index, coarse_search)):
        searcher = dns.shortlist_database(index, coarse_dtype) if shortlist else compressed_search(index)
        return _search_compressed(dns, index, queries, searcher, stage, budget, topk, fine_mapping, progress, pool,
                                  segments, localize_options)
    if stage == "dns":
        return dns.search(queries, index, budget=budget, topk=topk or None, coarse_dtype=coarse_dtype,
                          progress=progress, fine_mapping=fine_mapping, segments=segments,
                          localize_options=localize_options)
    t0 = time.perf_counter()
    kept = [None] * len(queries)
    if stage == "coarse":
        scores = np.asarray(dns.coarse_database(index, coarse_dtype).similarities(queries.coarse), np.float32)
        if progress is not None:
            progress(len(queries))
    else:
        everything = dns.scorer.prepare(index.fine_reps(range(len(index))))     # laid out once for all queries
        rows = []
        for qi in range(len(queries)):
            out = dns.scorer.similarities([queries.fine_rep(qi)], everything, frame_matrices=segments > 0)
            if segments > 0:
                out, matrices = out
                kept[qi] = (matrices, _Every())
            rows.append(out[0])
            if progress is not None:
                progress(1)
        scores = np.stack(rows).astype(np.float32)
    per_query = (time.perf_counter() - t0) / max(len(queries), 1)
    res = _ranked(queries.ids, scores, topk, stage == "fine", {f"{stage}_s_per_query": per_query})
    if segments > 0:
        if stage == "coarse":
            res.segments = [[NotLocalized(COARSE_ONLY)] * min(segments, res.ranking.shape[1]) for _ in res.ranking]
        else:
            res.segments = dns.localize_results(res.ranking, segments, kept, queries, index, localize_options)
    return res


class _Every(dict):
    """Column of database video j in a call that scored every video: j itself."""

    def __contains__(self, j):
        return True

    def __getitem__(self, j):
        return j


def uses_candidates(index: Index, coarse_search: Optional[str] = None) -> bool:
    """Whether 'coarse' and 'dns' searches of `index` rank faiss candidates: `coarse_search` (None:
    the index's) is 'faiss-ivfpq', except for a faiss-ivfpq collection of fewer than
    compressed.MIN_VIDEOS videos without its faiss file, searched exactly."""
    compressed.check_kind(coarse_search)
    if (coarse_search or index.coarse_search) != compressed.FAISS_IVFPQ:
        return False
    return not (index.coarse_search == compressed.FAISS_IVFPQ and len(index) < compressed.MIN_VIDEOS
                and not os.path.exists(compressed.path_of(index)))


def uses_shortlist(index: Index, coarse_search: Optional[str] = None) -> bool:
    """Whether 'coarse' and 'dns' searches of `index` take the two-stage shortlist: `coarse_search`
    (None: the index's) is 'shortlist'."""
    compressed.check_kind(coarse_search)
    return (coarse_search or index.coarse_search) == compressed.SHORTLIST


def compressed_search(index: Index) -> "compressed.CompressedSearch":
    """The faiss candidates of `index` (cached on it, rebuilt when the index changes); exact search
    of a small collection has none: CompressedCoarseError."""
    cached = getattr(index, "_compressed_search", None)
    if cached is not None and cached[0] is index.manifest:
        return cached[1]
    if index.coarse_search != compressed.FAISS_IVFPQ or not os.path.exists(compressed.path_of(index)):
        raise compressed.CompressedCoarseError(
            f"the index at {index.directory!r} has no faiss coarse index ({compressed.path_of(index)}); "
            f"build it with `dns-jax index ... --coarse {compressed.FAISS_IVFPQ}`")
    search = compressed.CompressedSearch(index)
    index._compressed_search = (index.manifest, search)
    return search


def _search_compressed(dns, index, queries, searcher, stage, budget, topk, fine_mapping, progress, pool,
                       segments=0, localize_options=None) -> SearchResults:
    """'coarse' and 'dns' on the candidates of each query that `searcher` (faiss or shortlist)
    proposes and scores (see the module docstring)."""
    n = len(index)
    t0 = time.perf_counter()
    size = compressed.pool_size(n, budget if stage == "dns" else 0, topk, pool)
    cand, coarse = searcher.candidates(queries.coarse, size)
    t1 = time.perf_counter()
    nq = max(len(queries), 1)
    if stage == "coarse":
        order = np.argsort(cand, axis=1, kind="stable")        # ties by database order, as exact
        cand, coarse = np.take_along_axis(cand, order, 1), np.take_along_axis(coarse, order, 1)
        k = cand.shape[1] if not topk else int(min(topk, cand.shape[1]))
        top = np.argsort(-coarse, axis=1, kind="stable")[:, :k]
        if progress is not None:
            progress(len(queries))
        res = SearchResults(query_ids=list(queries.ids), ranking=np.take_along_axis(cand, top, 1),
                            scores=np.take_along_axis(coarse, top, 1), reranked=np.zeros(top.shape, bool),
                            timings={"coarse_s_per_query": (t1 - t0) / nq, "candidates_per_query": cand.shape[1]})
        if segments > 0:
            res.segments = [[NotLocalized(COARSE_ONLY)] * min(segments, res.ranking.shape[1]) for _ in res.ranking]
        return res
    res = dns.search_candidates(queries, index, cand, coarse, budget=budget, topk=topk or None,
                                progress=progress, fine_mapping=fine_mapping, segments=segments,
                                localize_options=localize_options)
    res.timings["coarse_s_per_query"] = (t1 - t0) / nq
    return res


def scores_in_index_order(results: SearchResults, qi: int, n: int) -> np.ndarray:
    """[N] scores of query `qi` in index order (NaN for videos outside its top-k)."""
    out = np.full(n, np.nan, np.float32)
    out[results.ranking[qi]] = results.scores[qi]
    return out
