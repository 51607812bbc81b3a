"""Ranking metrics used by the benchmark evaluators (pure numpy, float64).

* `descending_order` -- the ranking every evaluator uses: scores sorted from high to low, equal
  scores keep their input order (what Python's ``sorted(..., reverse=True)`` does), NaN after
  every number.
* `average_precision` -- non-interpolated AP over score thresholds, the definition of
  ``sklearn.metrics.average_precision_score`` for binary labels (used by SVD).
* `trapezoid_average_precision` -- the INRIA trapezoid-rule AP from positive ranks (used by EVVE).
* `ranked_list_average_precision` -- AP of a ranked relevance list: the sum of precision@k at
  the relevant positions divided by the number of relevant items (FIVR, CC_WEB_VIDEO).
"""
from __future__ import annotations

import numpy as np


def descending_order(scores) -> np.ndarray:
    """Indices that sort `scores` from highest to lowest.

    Ties keep their original relative order (a stable sort), and NaN entries come last, in
    their original order. This is the order of ``sorted(ids, key=score, reverse=True)`` for
    finite scores.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    # numpy's stable sort is ascending and puts NaN last; negating keeps NaN as NaN.
    return np.argsort(-s, kind="stable")


def ranked_list_average_precision(relevant, counted=None, n_relevant=None) -> float:
    """AP of a ranked list.

    Args:
      relevant: booleans in rank order, True where the item is relevant.
      counted: booleans in rank order, True where the item takes a rank position (items with
        False are skipped entirely); default: every item counts.
      n_relevant: the denominator (relevant items in the collection, retrieved or not);
        default: the number of counted relevant items.

    Returns sum over relevant counted items of (relevant so far / position) / n_relevant, the
    sum accumulated left to right. Returns 0.0 when n_relevant is 0.
    """
    rel = np.asarray(relevant, dtype=bool).reshape(-1)
    if counted is not None:
        rel = rel[np.asarray(counted, dtype=bool).reshape(-1)]
    if n_relevant is None:
        n_relevant = int(rel.sum())
    if n_relevant == 0:
        return 0.0
    hits = np.flatnonzero(rel)
    if hits.size == 0:
        return 0.0 / n_relevant
    precision_at_hits = np.arange(1, hits.size + 1, dtype=np.float64) / (hits + 1).astype(np.float64)
    # cumsum adds strictly left to right, like a running `s += i / r` loop.
    return float(np.cumsum(precision_at_hits)[-1]) / n_relevant


def trapezoid_average_precision(ranks, n_positives) -> float:
    """INRIA (Holidays/EVVE) AP: trapezoids of the precision-recall curve.

    Args:
      ranks: 0-based ranks of the retrieved positives, in increasing order (a rank counts only
        the items that take a position).
      n_positives: the number of positives in the collection.

    Each positive, found at rank r with n positives before it, adds a trapezoid of width
    1/n_positives whose left height is n / r (1 when r = 0) and right height (n + 1) / (r + 1).
    """
    ranks = [float(r) for r in ranks]
    if n_positives == 0 or len(ranks) == 0:
        return 0.0
    width = 1.0 / n_positives
    ap = 0.0
    for n_before, r in enumerate(ranks):
        left = 1.0 if r == 0 else n_before / r
        right = (n_before + 1) / (r + 1.0)
        ap += (right + left) * width / 2.0
    return ap


def average_precision(y_true, y_score) -> float:
    """Binary average precision, AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds.

    Same definition and arithmetic as scikit-learn's ``average_precision_score`` for binary
    labels (positive label 1): items with equal scores enter the curve together, precision is
    taken at each distinct threshold from the highest score down, and recall steps are
    weighted by that precision. Returns 0.0 when there is no positive (scikit-learn warns and
    returns 0 there too) or no item. NaN scores must be replaced by the caller.
    """
    y_true = np.asarray(y_true).reshape(-1) == 1
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.size} items but y_score has {y_score.size}")
    if y_true.size == 0 or not y_true.any():
        return 0.0
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[order]
    y_true = y_true[order]
    # last index of each run of equal scores, then the end of the list
    ends = np.r_[np.flatnonzero(np.diff(y_score)), y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[ends]
    fps = 1 + ends - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    # curve from the lowest threshold to the highest, closed at (recall 0, precision 1)
    precision = np.hstack((precision[::-1], 1.0))
    recall = np.hstack((recall[::-1], 0.0))
    return float(-np.sum(np.diff(recall) * precision[:-1]))
