"""The one query path over an on-disk index: `dns-jax query`, `dns-jax retrieve` (retrieve.py) and
the library all rank through `search_index`.

    results = search_index(dns, index, queries, stage='dns', budget=0.05, topk=100)
    results.ranking[q], results.scores[q]       # database indices best first, their scores

Stages: 'coarse' (CG cosine for every indexed video), 'fine' (the fine student for every video)
and 'dns' (coarse for all, the selector's top `budget` re-scored by the fine student; a fraction of
the index, or an int: a number of videos per query).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

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
                 localize_options: Optional[dict] = None) -> SearchResults:
    """Rank every video of `index` for each query (indexed with `dns.index` or read from the index).
    `budget`: the fraction (float in [0, 1]) or number (int >= 1) of videos re-ranked per query in
    'dns'. `topk` None or 0: all. `fine_mapping` puts raw fine similarities on the coarse scale in 'dns'
    (default: the official s / 2 + 0.5); 'fine' reports raw fine similarities in [-1, 1].
    `segments`: the copied segments of the first `segments` results of each query, from the fine
    stage's frame-to-frame matrices (results.segments, see `DnS.search`); in 'coarse' every one
    is NotLocalized(COARSE_ONLY)."""
    check_search_options(stage, budget, topk)
    if len(index) == 0:
        raise FeatureError(f"the index at {index.directory!r} is empty")
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


def scores_in_index_order(results: SearchResults, qi: int, n: int) -> np.ndarray:
    """[N] scores of query `qi` in index order (NaN for videos outside its top-k)."""
    out = np.full(n, np.nan, np.float32)
    out[results.ranking[qi]] = results.scores[qi]
    return out
