"""Copied-segment localization: which part of the query appears where in the target.

    from dns_jax.localization import localize
    f2f = fine.frame_to_frame_similarity(fine.index_video(q), fine.index_video(t))   # [Tq, Tt]
    for seg in localize(f2f, method="tn", query_times=q_times, target_times=t_times):
        print(seg)          # query 3.0-9.0s ~ target 12.0-18.0s (0.71)

Input: a similarity matrix whose rows are query cells and columns target cells, in time order.
The methods expect the full-resolution frame-to-frame matrix (`frame_to_frame_similarity` of a
fine student or of the teacher, before the comparator CNN; one cell per extracted frame, 1
frame/s in DnS), and also take the comparator's pooled output (`similarity_matrix`, about
[Tq/4, Tt/4]: pass `factor=4`; its cells are 4 s long, so boundaries are coarser). Times come
from the extracted frames' true timestamps (`frame_times`); a video repeated to the networks'
4-frame minimum is folded back onto its real frames, and every segment lies inside both videos.

Methods (all `jax.jit`-compiled, one compilation per 16-cell size bucket; `candidates` of each
module is the pure function):
  'tn'     temporal network, longest path over top-k matches (temporal_network.py)
  'dp'     local-alignment DP over diagonals with bounded speed changes (dp.py)
  'hough'  Hough voting over (speed, offset), best run on the peak line (hough.py)
Each finds several segments per pair (a segment is blanked before the next is sought), handles
speeds between 1/2 and 2 (TN: 1/max_step to max_step), and with `reverse=True` copies played
backwards. Looped copies (the query's content twice in the target) give one segment per loop.
"""
from .api import (
    COARSE_ONLY,
    METHOD_OPTIONS,
    METHODS,
    LocalizationError,
    NotLocalized,
    check_matrix,
    localize,
    localize_batch,
    relative_threshold,
)
from .hough import DEFAULT_SPEEDS
from .segment import Segment, box_to_seconds, cell_bounds, frame_times

__all__ = [
    "localize", "localize_batch", "Segment", "LocalizationError", "METHODS", "METHOD_OPTIONS",
    "COARSE_ONLY", "NotLocalized", "relative_threshold", "DEFAULT_SPEEDS", "check_matrix", "cell_bounds", "frame_times", "box_to_seconds",
]
