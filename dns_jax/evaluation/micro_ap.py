"""Micro-averaged AP (µAP) as S2VS reports it, and the ranking convention it shares with S2VS's mAP.

µAP pools the (query, video) pairs of every evaluated query into one list, ranks the whole list by
score and computes one AP over it (one precision-recall curve for the whole benchmark), instead of
averaging one AP per query. It measures detection: a single threshold must separate the copies of
every query from the rest, so scores have to be comparable across queries.

Conventions (those of the S2VS evaluation code, gkordo/s2vs `datasets/fivr.py`, `datasets/vcdb.py`):

* the pool: for each evaluated query, every scored video except the query itself and except
  videos outside the available database (`all_db`); queries without results add nothing, neither
  pairs nor positives;
* the denominator: every positive of every evaluated query that is in the available database,
  scored or not; a positive without a score is a positive never retrieved (it adds 0);
* AP = sum over the ranked pool of precision@k at each positive / number of positives (no
  interpolation);
* ranking: descending score. S2VS sorts with numpy's default (unstable) argsort ascending and
  reverses it, so the order among equal scores is whatever that sort yields; numpy does not define
  it (it keeps input order for small arrays on some machines, not on others). Here it is fixed to
  the order a stable ascending sort reversed gives: among equal scores, the pair pooled later
  ranks first. This equals S2VS's result wherever numpy's sort kept equal scores in input order,
  and is deterministic everywhere;
* NaN scores rank last (as -inf; S2VS's reversed sort would put them first);
* no positive at all: the AP is undefined; these functions return NaN (S2VS divides 0 by 0).
"""
from __future__ import annotations

import numpy as np


def sort_key(scores) -> np.ndarray:
    """float64 copy of `scores` with NaN as -inf: what the rankings here sort by."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.where(np.isnan(s), -np.inf, s)


def s2vs_order(scores) -> np.ndarray:
    """Indices ranking `scores` from high to low, equal scores in reverse input order, NaN last.

    The order of S2VS's ``np.argsort(scores)[::-1]`` wherever numpy's sort keeps ties in input
    order (see the module docstring); NaN is treated as -inf.
    """
    return np.argsort(sort_key(scores), kind="stable")[::-1]


def ranks_from_ascending(relevant_ascending) -> np.ndarray:
    """0-based positions, increasing, in the descending ranking of the relevant entries, given the
    relevance flags in stable ascending order (`s2vs_order` is that order reversed)."""
    rel = np.asarray(relevant_ascending, dtype=bool).reshape(-1)
    return (rel.size - 1 - np.flatnonzero(rel))[::-1]


def average_precision_from_ranks(ranks, n_positives: int) -> float:
    """sum over the retrieved positives of precision@k at their (0-based, increasing) positions
    `ranks`, divided by `n_positives` (every positive, retrieved or not). NaN when
    `n_positives` is 0."""
    ranks = np.asarray(ranks, dtype=np.int64).reshape(-1)
    n_positives = int(n_positives)
    if ranks.size > n_positives:
        raise ValueError(f"{ranks.size} retrieved positives but n_positives={n_positives}")
    if n_positives == 0:
        return float("nan")
    if ranks.size == 0:
        return 0.0
    precision = np.arange(1, ranks.size + 1, dtype=np.float64) / (ranks + 1).astype(np.float64)
    return float(np.sum(precision) / n_positives)


def ranked_average_precision(relevant, n_positives: int) -> float:
    """AP of a list already in rank order: `average_precision_from_ranks` of its relevant
    positions. NaN when `n_positives` is 0."""
    return average_precision_from_ranks(np.flatnonzero(np.asarray(relevant, dtype=bool).reshape(-1)),
                                        n_positives)


def micro_average_precision(labels, scores, n_positives=None) -> float:
    """µAP of pooled pairs.

    Args:
      labels: one boolean per pooled pair, True for a positive pair.
      scores: the pairs' scores, in the same (pooling) order; ties are broken by that order
        (the later pair first, see `s2vs_order`).
      n_positives: all positive pairs of the evaluation, including positives that have no score
        (never retrieved); default: the positives among `labels`.

    Returns the AP of the pooled ranking; NaN when there is no positive.
    """
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels has {labels.size} pairs but scores has {scores.size}")
    if n_positives is None:
        n_positives = int(labels.sum())
    return ranked_average_precision(labels[s2vs_order(scores)], n_positives)


def pool_pairs(similarities, positives, queries=None, all_db=None, drop_self: bool = True):
    """Pool ``{query: {video: score}}`` into (labels, scores, n_positives) with S2VS's rules.

    Args:
      similarities: ``{query: {video: score}}``.
      positives: ``{query: iterable of positive videos}`` (a query missing here has none).
      queries: the queries to pool, in pooling order; default: the keys of `similarities` in
        their order. A query without results is skipped (neither pairs nor positives).
      all_db: the available videos (default: no restriction); pairs with a video outside it are
        not pooled and its positives outside it are not counted.
      drop_self: the query is never one of its own positives (S2VS's FIVR rule). With False, a
        query listed among its own positives keeps it as a positive that is never retrieved
        (S2VS's VCDB rule). The query itself is never a pooled pair either way.
    """
    if all_db is not None and not isinstance(all_db, (set, frozenset)):
        all_db = set(all_db)
    labels, scores, n_positives = [], [], 0
    for query in (similarities if queries is None else queries):
        if query not in similarities:
            continue
        gt = set(positives.get(query, ()))
        if all_db is not None:
            gt &= all_db
        if drop_self:
            gt.discard(query)
        n_positives += len(gt)
        for video, score in similarities[query].items():
            if video == query or (all_db is not None and video not in all_db):
                continue
            labels.append(video in gt)
            scores.append(score)
    return (np.asarray(labels, dtype=bool), np.asarray(scores, dtype=np.float64).reshape(-1),
            n_positives)


def micro_ap(similarities, positives, queries=None, all_db=None, drop_self: bool = True) -> float:
    """µAP of ``{query: {video: score}}`` against ``{query: positives}`` (see `pool_pairs` and the
    module docstring for the rules); NaN when no evaluated query has a positive."""
    labels, scores, n_positives = pool_pairs(similarities, positives, queries, all_db, drop_self)
    return micro_average_precision(labels, scores, n_positives)
