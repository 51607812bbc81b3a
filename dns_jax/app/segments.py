"""Best-matching time segments of two videos, read off their frame-to-frame similarity matrix, so a
person can check a match ("query 3-9 s matches target 12-18 s")."""
from __future__ import annotations

import dataclasses
from typing import List

import numpy as np


@dataclasses.dataclass
class Segment:
    query_start: int     # frame indices, end exclusive; at 1 frame/s they are seconds
    query_end: int
    target_start: int
    target_end: int
    score: float         # mean frame similarity along the segment

    def __str__(self):
        return (f"query {self.query_start}-{self.query_end}s ~ target {self.target_start}-{self.target_end}s "
                f"({self.score:.2f})")


def matching_segments(f2f: np.ndarray, max_segments: int = 2, max_jump: int = 2,
                      min_length: int = 1) -> List[Segment]:
    """Segments where consecutive query frames match target frames moving forward in time.

    f2f: [Tq, Tt] frame similarities. Each query frame is matched to its most similar target frame;
    frames whose match is weak (below the midpoint between the median and the best similarity) end
    a segment, and so does a jump of more than `max_jump` target frames (speed changes and small
    misalignments stay inside one segment). Segments are ranked by summed similarity.
    """
    f2f = np.asarray(f2f, np.float64)
    if f2f.ndim != 2 or f2f.size == 0:
        return []
    best_j = f2f.argmax(axis=1)
    best_s = f2f.max(axis=1)
    thr = (np.median(f2f) + f2f.max()) / 2
    segments, start = [], None

    def close(end):
        if start is not None and end - start >= min_length:
            js = best_j[start:end]
            segments.append(Segment(int(start), int(end), int(js.min()), int(js.max()) + 1,
                                    float(best_s[start:end].mean())))

    for i in range(f2f.shape[0]):
        good = best_s[i] >= thr
        continues = (start is not None and good and 0 <= best_j[i] - best_j[i - 1] <= max_jump)
        if continues:
            continue
        close(i)
        start = i if good else None
    close(f2f.shape[0])
    segments.sort(key=lambda s: -(s.score * (s.query_end - s.query_start)))
    return segments[:max_segments]
