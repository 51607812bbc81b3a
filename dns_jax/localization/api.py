"""`localize`: a query-target similarity matrix in, matched segment pairs (seconds) out.

Steps: check the matrix (clear errors for what cannot be localized; NaN cells count as
non-matching, with a warning), fold the rows or columns of a video that was repeated to reach
the networks' minimum length back onto its real frames, pad to a bucket size with -inf (the
jitted methods then compile once per bucket, and padding can never match), run the method
(and, with `reverse=True`, once more on the matrix with the target reversed), drop segments
shorter than `min_length` cells and those whose target part a stronger one already
explains (`max_overlap`), and map cells
to seconds, clipped to both videos.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from . import dp, hough, temporal_network
from .segment import Segment, box_to_seconds, cell_bounds

METHODS = {"tn": temporal_network.candidates, "dp": dp.candidates, "hough": hough.candidates}
METHOD_OPTIONS = {"tn": ("top_k", "max_step"), "dp": ("bend",), "hough": ("speeds", "tolerance")}
STATIC_OPTIONS = ("top_k", "max_step", "speeds", "tolerance")   # shape-defining: one compile each

COARSE_ONLY = ("no frame-level similarity matrix: this result comes from the coarse stage only "
               "(one vector per video), which says nothing about where the videos match; "
               "localization needs the fine student's or the teacher's frame-to-frame matrix "
               "(a query with the 'fine' or 'dns' stage)")


MATCH_Z = 4.0               # threshold='relative': a copied cell stands this many robust stds above the background
MIN_BACKGROUND_FRAMES = 8   # below this many frames a side, a copy is too much of the matrix to measure a
                            # background: the midpoint rule alone decides


class LocalizationError(ValueError):
    """A similarity matrix (or time axis) that cannot be localized, with the reason."""


@dataclasses.dataclass(frozen=True)
class NotLocalized:
    """Stands in for the segments of a search result that has none to give, and says why
    (`reason`; COARSE_ONLY for a result scored by the coarse stage alone). It behaves as an empty
    list of segments: falsy, iterates over nothing."""

    reason: str

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __str__(self):
        return f"not localized: {self.reason}"


def relative_threshold(sim, z: float = MATCH_Z, min_background: int = MIN_BACKGROUND_FRAMES) -> Optional[float]:
    """The matching threshold of a matrix sim [Tq, Tt] whose scale is not known in advance (a
    student's similarities depend on its training): the midpoint of its median and its best cell,
    or None when nothing stands out of the pair's background (the best cell is at most `z` robust
    standard deviations, 1.4826 MAD, above the median; checked when both sides have at least
    `min_background` frames). Non-finite cells are ignored; None for a matrix without any."""
    a = np.asarray(sim, np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return None
    median, best = float(np.median(a)), float(np.max(a))
    spread = 1.4826 * float(np.median(np.abs(a - median)))
    if min(np.shape(sim)) >= min_background and best <= median + z * spread:
        return None
    return (median + best) / 2


def check_matrix(sim) -> np.ndarray:
    """sim -> float32 [Tq, Tt] with non-finite cells set to -inf. Raises LocalizationError for
    None (coarse-only results), scalars, vectors, other ranks, empty or all-NaN matrices."""
    if sim is None:
        raise LocalizationError(COARSE_ONLY)
    a = np.asarray(sim, dtype=np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim < 2:
        raise LocalizationError(f"got a similarity of shape {a.shape}, a video-level score: "
                                + COARSE_ONLY)
    if a.ndim != 2:
        raise LocalizationError(f"expected one [query frames, target frames] matrix, got shape {a.shape}")
    if a.size == 0:
        raise LocalizationError(f"empty similarity matrix {a.shape}: a video without frames has "
                                "no segments (was its feature extraction empty?)")
    bad = ~np.isfinite(a)
    if bad.all():
        raise LocalizationError(f"every cell of the {a.shape} similarity matrix is NaN or infinite "
                                "(broken features or network output?)")
    if bad.any():
        warnings.warn(f"{int(bad.sum())} of {a.size} similarity cells are NaN or infinite; they are "
                      "treated as non-matching", RuntimeWarning, stacklevel=3)
        a = np.where(bad, -np.inf, a).astype(np.float32)
    return a


def _fold(a: np.ndarray, n: int, axis: int, name: str) -> np.ndarray:
    """Fold a video concatenated with itself (official minimum-length rule) back onto its n real
    frames: cell i becomes i mod n, keeping the best similarity."""
    rows = a.shape[axis]
    if rows == n:
        return a
    if rows < n or rows % n:
        raise LocalizationError(f"{name}: {n} frame times for {rows} matrix cells (a repeated video "
                                f"has a multiple of its frame count)")
    a = np.moveaxis(a, axis, 0)
    a = a.reshape(rows // n, n, *a.shape[1:]).max(axis=0)
    return np.moveaxis(a, 0, axis)


def _axis(times, duration, cells: int, factor: int, anchor: str, name: str):
    """(cell bounds [cells, 2], frames the matrix should have on this axis)."""
    try:
        if times is None:
            frames = cells * factor if factor > 1 else cells
            return cell_bounds(np.arange(frames, dtype=np.float64), duration, cells, factor, anchor), frames
        t = np.asarray(times, np.float64)
        if t.ndim == 2 and t.shape[1] == 2:
            if len(t) != cells:
                raise LocalizationError(f"{name}: {len(t)} cell bounds for {cells} matrix cells")
            hi = duration if duration is not None else np.inf
            return np.clip(t, 0.0, hi), cells
        if factor > 1:
            return cell_bounds(t, duration, cells, factor, anchor), cells
        return cell_bounds(t, duration, anchor=anchor), len(t)
    except ValueError as e:
        if isinstance(e, LocalizationError):
            raise
        raise LocalizationError(f"{name}: {e}") from None


def _bucket(n: int) -> int:
    """Padded size: the next of 16, 24, 32, 48, 64, 96, ... (at most 1.5x, few compilations)."""
    size = 16
    while size < n:
        size = size * 3 // 2 if (size & (size - 1)) == 0 else size * 4 // 3
    return size


@functools.lru_cache(maxsize=None)
def _batched(method: str, max_segments: int, static: Tuple):
    """jit(vmap(method candidates)) over a batch of padded matrices, one per static setting."""
    fn = functools.partial(METHODS[method], max_segments=max_segments, **dict(static))
    return jax.jit(jax.vmap(lambda s, thr, dyn: fn(s, threshold=thr, **dyn), in_axes=(0, 0, None)))


def _run(method: str, mats: Sequence[np.ndarray], thresholds: Sequence[float], max_segments: int, options: Dict,
         chunk: int = 64):
    """Method candidates of each matrix at its threshold (in chunks of `chunk` matrices, each
    padded with -inf to one bucket shape and batch size and run as one vmapped call) -> per
    matrix [(box, score)] in its own cells. `thresholds`: one per matrix, or one for all."""
    if np.ndim(thresholds) == 0:
        thresholds = [float(thresholds)] * len(mats)
    if len(mats) > chunk:
        return [r for i in range(0, len(mats), chunk)
                for r in _run(method, mats[i:i + chunk], thresholds[i:i + chunk], max_segments, options, chunk)]
    static = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                          for k, v in options.items() if k in STATIC_OPTIONS))
    dynamic = {k: float(v) for k, v in options.items() if k not in STATIC_OPTIONS}
    hq = _bucket(max(a.shape[0] for a in mats))
    wt = _bucket(max(a.shape[1] for a in mats))
    batch = 1 << (len(mats) - 1).bit_length()
    pad = np.full((batch, hq, wt), -np.inf, np.float32)
    thr = np.zeros(batch, np.float32)
    for i, a in enumerate(mats):
        pad[i, :a.shape[0], :a.shape[1]] = a
        thr[i] = thresholds[i]
    boxes, scores, found = (np.asarray(x) for x in
                            _batched(method, int(max_segments), static)(pad, thr, dynamic))
    return [[(b, float(s)) for b, s, f in zip(boxes[i], scores[i], found[i]) if f]
            for i in range(len(mats))]


@dataclasses.dataclass
class _Prepared:
    sim: np.ndarray              # [cells_q, cells_t], folded, non-finite -> -inf
    qcells: np.ndarray           # [cells_q, 2] seconds
    tcells: np.ndarray


def _prepare(sim, query_times, target_times, query_duration, target_duration, factor,
             anchor) -> _Prepared:
    a = check_matrix(sim)
    qcells, qframes = _axis(query_times, query_duration, a.shape[0], factor, anchor, "query")
    tcells, tframes = _axis(target_times, target_duration, a.shape[1], factor, anchor, "target")
    if factor == 1:
        a = _fold(_fold(a, qframes, 0, "query"), tframes, 1, "target")
    return _Prepared(a, qcells, tcells)


def _check_settings(method, threshold, factor, anchor, options):
    if method not in METHODS:
        raise LocalizationError(f"unknown method {method!r}; one of {sorted(METHODS)}")
    unknown = set(options) - set(METHOD_OPTIONS[method])
    if unknown:
        raise LocalizationError(f"method {method!r} has no option(s) {sorted(unknown)}; "
                                f"it takes {list(METHOD_OPTIONS[method])}")
    if isinstance(threshold, str):
        if threshold != "relative":
            raise LocalizationError(f"threshold must be a number or 'relative', got {threshold!r}")
    elif not np.isfinite(threshold):
        raise LocalizationError(f"threshold must be finite, got {threshold}")
    if int(factor) < 1:
        raise LocalizationError(f"factor must be >= 1, got {factor}")
    if anchor not in ("center", "start"):
        raise LocalizationError(f"anchor must be 'center' or 'start', got {anchor!r}")


def _segments(p: _Prepared, forward, backward, threshold: float, min_length: int,
              max_overlap: float, grow: int = 0) -> List[Segment]:
    """Candidates (forward, and found on the target-reversed matrix) -> kept Segments, best
    score first. Stronger candidates (margin over the threshold times length) are kept first. A
    target moment is a copy of one query moment, so a candidate whose target cells lie more than
    `max_overlap` in those of stronger kept segments is dropped (fragments of a copy, a copy
    found again in the other direction, a static stretch of the query matched twice); loops
    (one query stretch at several target places) keep one segment each."""
    tt = p.sim.shape[1]
    if grow:
        forward = [(_grow_ends(p.sim, b, threshold, grow), s) for b, s in forward]
        backward = [(_grow_ends(p.sim[:, ::-1], b, threshold, grow), s) for b, s in backward]
    found = [(b, s, False) for b, s in forward]
    found += [(np.array([b[0], b[1], tt - b[3], tt - b[2]]), s, True) for b, s in backward]
    found.sort(key=lambda x: -(x[1] - threshold) * max(x[0][1] - x[0][0], x[0][3] - x[0][2]))
    taken = np.zeros(tt, bool)
    kept = []
    for box, score, rev in found:
        if max(box[1] - box[0], box[3] - box[2]) < min_length:
            continue
        if taken[box[2]:box[3]].mean() > max_overlap:
            continue
        taken[box[2]:box[3]] = True
        kept.append((box, score, rev))
    kept.sort(key=lambda x: -x[1])
    return [box_to_seconds(b, s, p.qcells, p.tcells, r) for b, s, r in kept]


def _grow_ends(sim: np.ndarray, box, threshold: float, cells: int) -> np.ndarray:
    """box (q0, q1, t0, t1) of sim [Tq, Tt] grown by up to `cells` cells at both ends of its
    longer side (both sides of a 1 x 1 box), along its end row or column while they match (sim
    >= threshold). A path advances on both axes at every step, so where one video runs faster
    (a 2x speed-up: two query frames per target frame) the cells the longer side spends on the
    shorter side's end frame are left out; a box of equal sides (speed 1) is left alone."""
    q0, q1, t0, t1 = (int(v) for v in box)
    tq, tt = sim.shape
    lq, lt = q1 - q0, t1 - t0
    gq = lq > lt or lq == lt == 1
    gt = lt > lq or lq == lt == 1
    for _ in range(cells):
        if gq and q1 < tq and sim[q1, t1 - 1] >= threshold:
            q1 += 1
        if gq and q0 > 0 and sim[q0 - 1, t0] >= threshold:
            q0 -= 1
        if gt and t1 < tt and sim[q1 - 1, t1] >= threshold:
            t1 += 1
        if gt and t0 > 0 and sim[q0, t0 - 1] >= threshold:
            t0 -= 1
    return np.array([q0, q1, t0, t1])


def _threshold(p: _Prepared, threshold) -> Optional[float]:
    return relative_threshold(p.sim) if threshold == "relative" else float(threshold)


def localize(sim, method: str = "tn", *, query_times=None, target_times=None,
             query_duration: Optional[float] = None, target_duration: Optional[float] = None,
             factor: int = 1, threshold: float = 0.3, max_segments: int = 5, min_length: int = 2,
             max_overlap: float = 0.5, reverse: bool = False, anchor: str = "center",
             grow: int = 1, **options) -> List[Segment]:
    """Matched segment pairs of a query and a target, best score first.

    sim: [Tq, Tt] similarities of query cells (rows, in time order) to target cells: the
      frame-to-frame matrix (`frame_to_frame_similarity` of the fine students or the teacher,
      or S2VS's frame similarities), one cell per extracted frame; or, with factor=4, the
      comparator's pooled output [Tq // 4, Tt // 4]. None (a coarse-only result) raises.
    method: 'tn' (temporal network), 'dp' (DP over diagonals) or 'hough' (Hough voting).
    query_times / target_times: the extracted frames' true timestamps [T] in seconds (default
      0, 1, 2, ...: 1 frame/s), or explicit cell bounds [cells, 2] (`cell_bounds`). A video
      repeated to reach the networks' minimum of 4 frames gives times for its real frames only;
      its repeated matrix cells are folded back onto them.
    query_duration / target_duration: the videos' lengths in seconds (default: last frame + one
      frame spacing); segments never extend past them.
    threshold: the similarity above which cells count as matching, in the matrix's units. The
      scale depends on the source: 0.3 is the best on the benchmark's region Chamfer of 64-d
      whitened features (docs/localization.md); with 256-d whitening copies score lower and 0.1
      is best. Tune it for another source (`benchmarks/bench_localization.py --sweep`).
      'relative': per matrix, from its own background (`relative_threshold`; no segment when
      nothing stands out), for a network whose scale is not known (what search results use).
    max_segments: segments searched per direction; min_length: shortest segment, in cells of
      its longer side (the other may be one cell: a short copy at 2x speed holds one target
      frame at 1 frame/s); max_overlap: a segment whose target cells lie more than this
      fraction in a stronger segment's is dropped (a target moment copies one query moment).
    grow: cells by which each end of a segment's longer side may grow along its end row or
      column while they match (`_grow_ends`: what a path moving on both axes at every step
      leaves out at a speed change); 0: none.
    anchor: 'center' (a frame sampled at t s stands for the instants nearest to it) or 'start'
      (frame i covers [t_i, t_{i+1})); see `cell_bounds`.
    reverse: also look for copies played backwards (Segment.reversed marks them).
    options: method settings: tn top_k (5), max_step (4); dp bend (0); hough speeds (target
      cells per query cell, DEFAULT_SPEEDS), tolerance (1).

    Raises LocalizationError (a ValueError) with the reason for input that cannot be localized.
    """
    _check_settings(method, threshold, factor, anchor, options)
    p = _prepare(sim, query_times, target_times, query_duration, target_duration, int(factor), anchor)
    thr = _threshold(p, threshold)
    if thr is None:
        return []
    forward = _run(method, [p.sim], [thr], max_segments, options)[0]
    backward = _run(method, [p.sim[:, ::-1]], [thr], max_segments, options)[0] if reverse else []
    return _segments(p, forward, backward, thr, min_length, max_overlap, grow)


def localize_batch(sims: Sequence, method: str = "tn", *, query_times: Optional[Sequence] = None,
                   target_times: Optional[Sequence] = None, query_durations: Optional[Sequence] = None,
                   target_durations: Optional[Sequence] = None, errors: str = "warn",
                   factor: int = 1, threshold: float = 0.3, max_segments: int = 5, min_length: int = 2,
                   max_overlap: float = 0.5, reverse: bool = False, anchor: str = "center",
                   grow: int = 1, **options) -> List[List[Segment]]:
    """`localize` for many pairs in one vmapped call: sims[i] with query_times[i],
    target_times[i], query_durations[i], target_durations[i] (each a list, or None).

    errors: 'warn' turns a pair that cannot be localized into [] and a warning naming it and
    the reason; 'raise' re-raises its LocalizationError.
    """
    if errors not in ("warn", "raise"):
        raise ValueError(f"errors must be 'warn' or 'raise', got {errors!r}")
    _check_settings(method, threshold, factor, anchor, options)
    pick = lambda seq, i: None if seq is None else seq[i]  # noqa: E731
    prepared = {}
    for i, s in enumerate(sims):
        try:
            prepared[i] = _prepare(s, pick(query_times, i), pick(target_times, i),
                                   pick(query_durations, i), pick(target_durations, i), int(factor),
                                   anchor)
        except LocalizationError as e:
            if errors == "raise":
                raise
            warnings.warn(f"pair {i}: not localized: {e}", RuntimeWarning, stacklevel=2)
    thr = {i: _threshold(p, threshold) for i, p in prepared.items()}
    keys = [i for i in prepared if thr[i] is not None]          # 'relative': nothing stands out -> []
    if not keys:
        return [[] for _ in sims]
    thresholds = [thr[i] for i in keys]
    forward = _run(method, [prepared[i].sim for i in keys], thresholds, max_segments, options)
    backward = (_run(method, [prepared[i].sim[:, ::-1] for i in keys], thresholds, max_segments, options)
                if reverse else [[] for _ in keys])
    out = {i: _segments(prepared[i], f, b, thr[i], min_length, max_overlap, grow)
           for i, f, b in zip(keys, forward, backward)}
    return [out.get(i, []) for i in range(len(sims))]
