"""Copy-localization metrics: the VSC22 matching and descriptor tracks, and VCSL segment P/R/F1.

A match pairs a query interval with a reference interval (seconds) and has a score; one video
pair may have several. The rules below are those of the public reference implementations
(`facebookresearch/vsc2022`, `vsc/metrics.py`; `alipay/VCSL`, `vcsl/metric.py`); the code is
written from their description, and `tests/data/vsc/` holds the reference's numbers on small
cases to compare with.

* `segment_ap` (VSC22 matching track, "segment micro-AP"): predictions of every pair are taken
  from the highest score down, equal scores as one group. After each group, on each axis
  (query, reference): I = length of (union of the pair's predicted intervals) intersected with
  (union of the pair's ground-truth intervals that overlap, as 2-D boxes with positive area, at
  least one prediction of the pair so far), summed over pairs; T = summed union length of the
  predicted intervals; G = summed union length of all ground-truth intervals. Precision is
  sqrt(I_q / T_q * I_r / T_r), recall sqrt(I_q / G_q * I_r / G_r), and AP = sum P * delta R.
  Predictions on pairs without ground truth add to T only.
* `pair_micro_ap` (VSC22 descriptor track, and the matching track's auxiliary pairwise uAP):
  non-interpolated AP over score thresholds of the predicted (query, reference) pairs, ties
  entering together, with recall relative to every ground-truth pair (missed pairs count).
* `vcsl_precision_recall` / `vcsl_segment_prf` (VCSL): per pair, on each axis, precision is the
  summed length of each prediction's intersection with the ground-truth boxes it overlaps
  (union per prediction) over the summed prediction lengths, and recall the same from the
  ground-truth side; a pair's value is the product over the two axes. Pairs with predictions
  but no ground truth have precision 0; micro P (R) averages over pairs with predictions
  (ground truth); F1 = 2PR / (P + R). (The reference divides by length + 1e-6 and tells the
  cases apart by comparing values with 1; here they are told apart by what the pair has, and
  the division is exact, so numbers agree to ~1e-6.)

CSV files (`read_matches`, `write_matches`) have the header
`query_id,ref_id,query_start,query_end,ref_start,ref_end,score` (columns in any order when read;
ground truth may omit `score`).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .metrics import average_precision

COLUMNS = ("query_id", "ref_id", "query_start", "query_end", "ref_start", "ref_end", "score")
Pair = Tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Match:
    """A matched segment pair: query [query_start, query_end] ~ reference [ref_start, ref_end]
    (seconds), with a confidence `score` (1 for ground truth)."""
    query_id: str
    ref_id: str
    query_start: float
    query_end: float
    ref_start: float
    ref_end: float
    score: float = 1.0

    @property
    def pair(self) -> Pair:
        return (self.query_id, self.ref_id)

    def box(self) -> Tuple[float, float, float, float]:
        return (self.query_start, self.query_end, self.ref_start, self.ref_end)


@dataclasses.dataclass
class APResult:
    """AP and the precision-recall points where recall grew (with the score reached there)."""
    ap: float
    precisions: np.ndarray
    recalls: np.ndarray
    scores: np.ndarray


# ----------------------------------------------------------------------------------------------
# CSV


def read_matches(source, ground_truth: bool = False) -> List[Match]:
    """Matches from a VSC22 CSV (a path or an open text file). Ground truth may lack `score`
    (every match then scores 1). Raises ValueError naming the line of a missing or non-numeric
    value, or a prediction's non-finite score."""
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        with open(source, newline="") as f:
            return read_matches(f, ground_truth)
    reader = csv.DictReader(source)
    needed = [c for c in COLUMNS if not (ground_truth and c == "score")]
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"match CSV lacks the column(s) {missing}; header must name {list(COLUMNS)}")
    out = []
    for line, row in enumerate(reader, start=2):
        try:
            nums = [float(row[c]) for c in COLUMNS[2:6]]
            score = float(row["score"]) if row.get("score") not in (None, "") else 1.0
        except (TypeError, ValueError) as e:
            raise ValueError(f"line {line}: not a number ({e})") from None
        if not all(math.isfinite(x) for x in nums):
            raise ValueError(f"line {line}: segment bounds must be finite, got {nums}")
        if ground_truth:
            score = 1.0
        elif not math.isfinite(score):
            raise ValueError(f"line {line}: score must be finite, got {row['score']!r}")
        if not row["query_id"] or not row["ref_id"]:
            raise ValueError(f"line {line}: empty query_id or ref_id")
        out.append(Match(row["query_id"], row["ref_id"], *nums, score))
    return out


def write_matches(matches: Iterable[Match], target) -> None:
    """Write matches as a VSC22 CSV (a path or an open text file), columns in COLUMNS order."""
    if isinstance(target, (str, bytes)) or hasattr(target, "__fspath__"):
        with open(target, "w", newline="") as f:
            return write_matches(matches, f)
    w = csv.writer(target, lineterminator="\n")
    w.writerow(COLUMNS)
    for m in matches:
        w.writerow([m.query_id, m.ref_id, *(repr(float(x)) for x in m.box()), repr(float(m.score))])


def matches_to_csv(matches: Iterable[Match]) -> str:
    buf = io.StringIO()
    write_matches(matches, buf)
    return buf.getvalue()


def matches_from_segments(query_id: str, ref_id: str, segments) -> List[Match]:
    """Matches of one pair from localization segments (anything with query_start, query_end,
    target_start, target_end and score, e.g. `dns_jax.localization.Segment`)."""
    return [Match(query_id, ref_id, float(s.query_start), float(s.query_end), float(s.target_start),
                  float(s.target_end), float(s.score)) for s in segments]


# ----------------------------------------------------------------------------------------------
# intervals


def union_length(intervals: Sequence[Tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals (empty or reversed ones count 0)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total if cur_e is None else total + cur_e - cur_s


def intersection_length(a: Sequence[Tuple[float, float]], b: Sequence[Tuple[float, float]]) -> float:
    """Length of (union of a) intersected with (union of b): |A| + |B| - |A u B|."""
    return union_length(a) + union_length(b) - union_length(list(a) + list(b))


def boxes_overlap(a: Match, b: Match) -> bool:
    """Whether two matches' (query x reference) boxes share a positive area."""
    dq = min(a.query_end, b.query_end) - max(a.query_start, b.query_start)
    dr = min(a.ref_end, b.ref_end) - max(a.ref_start, b.ref_start)
    return dq > 0 and dr > 0


# ----------------------------------------------------------------------------------------------
# VSC22 matching track


class _PairState:
    """One video pair's ground truth and the predictions seen so far."""

    def __init__(self):
        self.gts: List[Match] = []
        self.preds: List[Match] = []
        self.overlapped = []  # per gt: overlaps some prediction so far

    def add_prediction(self, p: Match) -> Tuple[float, float, float, float]:
        """Add p; returns (I_q, I_r, T_q, T_r) of the pair after it."""
        self.preds.append(p)
        self.overlapped = [o or boxes_overlap(g, p) for g, o in zip(self.gts, self.overlapped)]
        considered = [g for g, o in zip(self.gts, self.overlapped) if o]
        pq = [(m.query_start, m.query_end) for m in self.preds]
        pr = [(m.ref_start, m.ref_end) for m in self.preds]
        gq = [(m.query_start, m.query_end) for m in considered]
        gr = [(m.ref_start, m.ref_end) for m in considered]
        return (intersection_length(pq, gq), intersection_length(pr, gr),
                union_length(pq), union_length(pr))


def _check_scores(predictions: Sequence[Match]):
    bad = [m for m in predictions if not math.isfinite(float(m.score))]
    if bad:
        raise ValueError(f"{len(bad)} prediction(s) have a non-finite score, e.g. {bad[0]}")


def segment_ap(ground_truth: Iterable[Match], predictions: Iterable[Match]) -> APResult:
    """VSC22 matching-track segment micro-AP (see the module docstring). Ground-truth scores are
    ignored. No prediction gives AP 0; no ground truth raises ValueError."""
    predictions = list(predictions)
    _check_scores(predictions)
    pairs: Dict[Pair, _PairState] = defaultdict(_PairState)
    for g in ground_truth:
        st = pairs[g.pair]
        st.gts.append(g)
        st.overlapped.append(False)
    gq = sum(union_length([(g.query_start, g.query_end) for g in st.gts]) for st in pairs.values())
    gr = sum(union_length([(g.ref_start, g.ref_end) for g in st.gts]) for st in pairs.values())
    if gq <= 0 or gr <= 0:
        raise ValueError("segment AP needs ground-truth segments of positive length on both axes")

    per_pair: Dict[Pair, Tuple[float, float, float, float]] = {}
    sums = np.zeros(4)  # I_q, I_r, T_q, T_r over pairs
    order = sorted(predictions, key=lambda m: -float(m.score))  # stable: input order within ties
    ap, recall, curve = 0.0, 0.0, []
    i = 0
    while i < len(order):
        score = float(order[i].score)
        while i < len(order) and float(order[i].score) == score:
            p = order[i]
            new = pairs[p.pair].add_prediction(p)
            sums += np.subtract(new, per_pair.get(p.pair, (0.0, 0.0, 0.0, 0.0)))
            per_pair[p.pair] = new
            i += 1
        iq, ir, tq, tr = sums
        new_recall = math.sqrt(max(iq, 0.0) / gq * max(ir, 0.0) / gr)
        precision = math.sqrt((iq / tq if tq > 0 else 0.0) * (ir / tr if tr > 0 else 0.0))
        if new_recall > recall:
            ap += precision * (new_recall - recall)
            curve.append((precision, new_recall, score))
        recall = new_recall
    p, r, s = (np.array(c, np.float64) for c in zip(*curve)) if curve else (np.zeros(0),) * 3
    return APResult(float(ap), p, r, s)


# ----------------------------------------------------------------------------------------------
# VSC22 descriptor track: video-pair micro-AP


def pairs_from_matches(matches: Iterable[Match]) -> Dict[Pair, float]:
    """{(query, reference): highest score of its matches}."""
    best: Dict[Pair, float] = {}
    for m in matches:
        best[m.pair] = max(float(m.score), best.get(m.pair, -math.inf))
    return best


def pair_micro_ap(ground_truth: Iterable[Pair], predictions) -> float:
    """Video-level micro-AP of scored (query, reference) pairs against the ground-truth pairs.

    predictions: {(query, ref): score} or an iterable of (query, ref, score). Each pair may be
    predicted once; pairs outside the ground truth are false positives; ground-truth pairs never
    predicted lower the recall. Raises ValueError on duplicates, non-finite scores or an empty
    ground truth.
    """
    gt = list(ground_truth)
    gt_set = set(map(tuple, gt))
    if len(gt_set) != len(gt):
        raise ValueError("duplicate pairs in the ground truth")
    if not gt_set:
        raise ValueError("micro-AP needs at least one ground-truth pair")
    items = list(predictions.items()) if isinstance(predictions, dict) else \
        [((q, r), s) for q, r, s in predictions]
    if len({p for p, _ in items}) != len(items):
        raise ValueError("duplicate pairs in the predictions (one score per pair)")
    scores = np.array([float(s) for _, s in items], np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    labels = np.array([p in gt_set for p, _ in items], bool)
    if not labels.any():
        return 0.0
    return average_precision(labels, scores) * labels.sum() / len(gt_set)


# ----------------------------------------------------------------------------------------------
# VCSL


def _sum_of_unions(boxes: np.ndarray, others: np.ndarray, axis: int) -> float:
    """Sum over `boxes` of the union length, on `axis` (0 query, 1 ref), of each box's
    intersections with the `others` it overlaps with positive area. Boxes [N, 4] = (q0, q1, r0, r1)."""
    total = 0.0
    for b in boxes:
        lo = np.maximum(b[[0, 2]], others[:, [0, 2]])
        hi = np.minimum(b[[1, 3]], others[:, [1, 3]])
        hit = np.all(hi > lo, axis=1)
        if hit.any():
            total += union_length(list(zip(lo[hit, axis], hi[hit, axis])))
    return total


def vcsl_precision_recall(pred_boxes, gt_boxes) -> Tuple[Optional[float], Optional[float]]:
    """VCSL segment precision and recall of one video pair. Boxes [N, 4] = (query_start,
    query_end, ref_start, ref_end). Returns None for an undefined value: precision without
    predictions, recall without ground truth."""
    p = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    g = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(p) == 0 or len(g) == 0:
        return (None if len(p) == 0 else 0.0), (None if len(g) == 0 else 0.0)
    out = []
    for a, b in ((p, g), (g, p)):
        value = 1.0
        for axis in (0, 1):
            length = float(np.sum(a[:, 2 * axis + 1] - a[:, 2 * axis]))
            value *= _sum_of_unions(a, b, axis) / length if length > 0 else 0.0
        out.append(value)
    return out[0], out[1]


def vcsl_segment_prf(ground_truth: Iterable[Match], predictions: Iterable[Match],
                     pairs: Optional[Iterable[Pair]] = None) -> Dict[str, float]:
    """VCSL micro segment precision, recall and F1 over video pairs.

    Pairs evaluated: `pairs` if given (pairs in it with neither ground truth nor predictions
    change nothing), plus every pair with ground truth or predictions. Returns
    {'precision', 'recall', 'f1', 'pairs'}; a value with no pair to average over is NaN.
    """
    gt, pred = defaultdict(list), defaultdict(list)
    for m in ground_truth:
        gt[m.pair].append(m.box())
    for m in predictions:
        pred[m.pair].append(m.box())
    keys = set(gt) | set(pred) | set(map(tuple, pairs or ()))
    ps, rs = [], []
    for k in keys:
        p, r = vcsl_precision_recall(pred.get(k, []), gt.get(k, []))
        if p is not None:
            ps.append(p)
        if r is not None:
            rs.append(r)
    precision = float(np.mean(ps)) if ps else math.nan
    recall = float(np.mean(rs)) if rs else math.nan
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "pairs": len(keys)}
