"""Matched segment pairs and the mapping of similarity-matrix rows/columns to seconds.

A similarity matrix has one row per query *cell* and one column per target cell. A cell is a
frame of the frame-to-frame matrix (DnS samples 1 frame/s; by default the frame taken at i s
stands for [i - 1/2, i + 1/2) s, see `cell_bounds`), or a block of frames of a pooled matrix
(the comparator CNN's output: 4 frames a cell). Each cell covers [start, end) seconds of its
video; `cell_bounds` builds those spans from the true
timestamps of the extracted frames, and `box_to_seconds` turns a box of cell indices into a
`Segment`, always clipped to both videos.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Segment:
    """Query [query_start, query_end) s matches target [target_start, target_end) s.

    `score`: the mean similarity along the matched path (the matrix's units). `reversed`: the
    target plays the query's content backwards.
    """
    query_start: float
    query_end: float
    target_start: float
    target_end: float
    score: float
    reversed: bool = False

    @property
    def query_duration(self) -> float:
        return self.query_end - self.query_start

    @property
    def target_duration(self) -> float:
        return self.target_end - self.target_start

    def __str__(self):
        arrow = "~ reversed" if self.reversed else "~"
        t = lambda x: f"{x:.1f}".rstrip("0").rstrip(".")  # noqa: E731  (3, 3.5: no trailing .0)
        return (f"query {t(self.query_start)}-{t(self.query_end)}s {arrow} target "
                f"{t(self.target_start)}-{t(self.target_end)}s ({self.score:.2f})")


def frame_times(num_frames: int, seconds_per_frame: float = 1.0, start: float = 0.0) -> np.ndarray:
    """Timestamps [num_frames] of frames sampled every `seconds_per_frame` s (DnS: 1 fps, or
    `frame_step / video_fps` for the true spacing of the official frame selection)."""
    return start + seconds_per_frame * np.arange(int(num_frames), dtype=np.float64)


def cell_bounds(times, duration: Optional[float] = None, cells: Optional[int] = None,
                factor: int = 1, anchor: str = "center") -> np.ndarray:
    """[n, 2] (start, end) seconds of each matrix cell along one video.

    times: [T] timestamps of the video's real frames (increasing). duration: the video's length
    in seconds (default: the last frame's time plus the median frame spacing, 1 s for a single
    frame). factor: frames per cell (4 for the comparator's pooled output; `cells` defaults to
    T // factor, at least 1); cell i holds frames [factor*i, factor*(i+1)).
    anchor: what span a sampled frame stands for. 'center' (default): the instants nearer to it
    than to any other sampled frame, [t_i - gap/2, t_i + gap/2) at 1 frame/s, the first from 0
    and the last to the end; a copy's true boundary lies anywhere between two samples, so the
    midpoint is the unbiased estimate. 'start': [t_i, t_{i+1}), frame i at 1 frame/s covering
    [i, i+1) s. Every bound is clipped to [0, duration].
    """
    if anchor not in ("center", "start"):
        raise ValueError(f"anchor must be 'center' or 'start', got {anchor!r}")
    t = np.asarray(times, np.float64).reshape(-1)
    if t.size == 0:
        raise ValueError("a video without frames has no time axis")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError("frame times must be finite and strictly increasing")
    step = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    if duration is None:
        duration = float(t[-1] + step)
    duration = float(duration)
    if not duration > 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    if anchor == "center":
        mids = (t[1:] + t[:-1]) / 2
        lo = np.concatenate([[0.0], mids])
        hi = np.concatenate([mids, [max(duration, t[-1])]])
    else:
        lo, hi = t, np.append(t[1:], max(duration, t[-1]))
    n = int(cells) if cells is not None else max(1, t.size // factor)
    first = np.minimum(np.arange(n) * factor, t.size - 1)
    last = np.minimum(np.arange(n) * factor + factor - 1, t.size - 1)
    out = np.stack([lo[first], hi[last]], axis=1)
    return np.clip(out, 0.0, duration)


def box_to_seconds(box, score: float, query_cells: np.ndarray, target_cells: np.ndarray,
                   reversed_: bool = False) -> Segment:
    """A box (q0, q1, t0, t1) of cell indices, ends exclusive, -> Segment in seconds."""
    q0, q1, t0, t1 = (int(v) for v in box)
    q0, t0 = max(q0, 0), max(t0, 0)
    q1, t1 = min(max(q1, q0 + 1), len(query_cells)), min(max(t1, t0 + 1), len(target_cells))
    return Segment(float(query_cells[q0, 0]), float(query_cells[q1 - 1, 1]),
                   float(target_cells[t0, 0]), float(target_cells[t1 - 1, 1]), float(score),
                   bool(reversed_))
