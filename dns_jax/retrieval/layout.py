"""Host-side layout of the similarity canvas.

Many (query, target) pairs are scored in one kernel call by laying the query videos out along the
rows of one "canvas" and the target videos along its columns, each video a *segment* that starts at
a multiple of 4 frames and is followed by a small gap. The frame-to-frame similarity of the whole
canvas is one matrix product; the comparator CNN runs over the whole canvas (or over tiles of it);
the Chamfer steps reduce each (row segment, column segment) block. Nothing is computed per pair.

Exactness: before every convolution, every cell outside a segment (gaps, canvas padding, cells
dropped by the floor of a max-pool) is refilled with what the official *unpadded* network's padding
would put there: zero for the DnS comparator (ZeroPad2d), the nearest valid cell for the ViSiL
teacher (ReplicationPad2d). A cell of a segment then sees exactly the neighbourhood it has in the
unpadded network, so every pair's result equals the official one-pair-at-a-time evaluation, for any
length. Gaps are wide enough that every segment owns at least one refilled cell on each side at
every resolution (1 frame for zero padding, 8 for replicate padding: 2 cells at quarter resolution,
one per neighbour).

An `Axis` holds, per resolution level l = 0, 1, 2 (full, half, quarter), the validity of each
position and (for replicate padding) the position whose value it takes; the kernel receives them as
arrays, so a new layout never triggers a new compilation: only the canvas size does.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np

LEVELS = 3          # conv inputs at full, half and quarter resolution
HALO = 8            # tile halo (full-resolution cells) needed by the 3-conv / 2-pool comparator


def segment_gap(padding: str) -> int:
    """Minimum number of free frames after a segment (see module docstring)."""
    return 8 if padding == "replicate" else 1


def round_up(x: int, m: int) -> int:
    return -(-int(x) // m) * m


def place(lengths: Sequence[int], padding: str) -> Tuple[np.ndarray, int]:
    """Starts (multiples of 4) of consecutive segments and the canvas size they need (a multiple
    of 4): up to the end of the last one's gap, or, with zero padding, up to the end of the last
    segment itself (the kernel pads the canvas border with zeros, which is that gap)."""
    gap = segment_gap(padding)
    lens = np.asarray(lengths, np.int64).reshape(-1)
    steps = (lens + gap + 3) // 4 * 4           # every start is a multiple of 4: steps add up
    starts = np.zeros(len(lens), np.int64)
    np.cumsum(steps[:-1], out=starts[1:])
    pos = int(steps.sum())
    if padding == "zero" and len(lens):
        pos = round_up(starts[-1] + int(lens[-1]), 4)
    return starts, int(pos)


@dataclasses.dataclass
class Axis:
    """One canvas axis: `size` frames (a multiple of 4) holding segments (`starts`, `lengths`).

    `pad` extra positions on each side (the tile halo, 0 if the axis is not tiled) are part of
    the maps so that tiles can slice them without bounds checks.
    """

    size: int
    starts: np.ndarray
    lengths: np.ndarray
    capacity: int           # static number of segment slots (>= number of segments)
    pad: int = 0

    def maps(self, padding: str, comparator: bool = True):
        """Arrays for the kernel: valid_l / src_l for l < LEVELS (padded by pad >> l) and the
        segment id of each position at the level where the Chamfer runs (capacity = no segment)."""
        out = {}
        n_seg = len(self.starts)
        levels = range(LEVELS) if comparator else range(1)
        for level in levels:
            size = self.size >> level
            p = self.pad >> level
            starts = self.starts >> level
            lens = self.lengths >> level
            pos = np.arange(-p, size + p)
            valid = np.zeros(pos.shape, bool)
            seg = np.full(pos.shape, self.capacity, np.int32)
            src = np.clip(pos, 0, max(size - 1, 0)).astype(np.int32)
            if n_seg:
                ends = starts + lens
                # zone of a position: the segment whose zone contains it; zones split gaps in half
                bounds = (ends[:-1] + starts[1:] + 1) // 2
                zone = np.searchsorted(bounds, pos, side="right")
                zs, ze = starts[zone], ends[zone]
                valid = (pos >= zs) & (pos < ze)
                seg = np.where(valid, zone, self.capacity).astype(np.int32)
                src = np.clip(pos, zs, np.maximum(ze - 1, zs)).astype(np.int32)
            out[f"valid{level}"] = valid
            out[f"src{level}"] = src
            if level == (LEVELS - 1 if comparator else 0):
                out["seg"] = seg[p:p + size] if p else seg
        counts = np.zeros(self.capacity + 1, np.float32)
        final = (self.lengths >> (2 if comparator else 0)).astype(np.float32)
        counts[:n_seg] = final
        counts[self.capacity] = 1.0
        out["count"] = counts
        return out


def pack_segments(lengths: Sequence[int], capacity_frames: int, max_segments: int, padding: str
                  ) -> List[List[int]]:
    """Greedy split of segments (in order) into canvases of at most `capacity_frames` frames and
    `max_segments` segments. Returns lists of segment indices."""
    gap = segment_gap(padding)
    groups, cur, pos = [], [], 0
    for i, n in enumerate(lengths):
        need = round_up(pos + int(n) + gap, 4)
        if cur and (need > capacity_frames or len(cur) >= max_segments):
            groups.append(cur)
            cur, pos = [], 0
            need = round_up(int(n) + gap, 4)
        cur.append(i)
        pos = need
    if cur:
        groups.append(cur)
    return groups


def pack_dense(lengths: Sequence[int], capacity: int, open_groups: int = 64) -> List[List[int]]:
    """First-fit decreasing split of segments into groups of at most `capacity` frames in total
    (each length <= capacity), so that almost every group is full (the gaps between segments are
    not counted: they widen the comparator's canvas, not the dense frames of the matrix product).
    At most `open_groups` groups are searched (the emptiest ones), so this stays linear in the
    number of segments. Returns lists of segment indices, each in increasing order."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    smallest = min((int(n) for n in lengths), default=0)
    done: List[List[int]] = []
    groups: List[List[int]] = []
    free: List[int] = []
    for i in order:
        n = int(lengths[i])
        for g, f in enumerate(free):
            if n <= f:
                groups[g].append(i)
                free[g] -= n
                break
        else:
            g = len(groups)
            groups.append([i])
            free.append(capacity - n)
        # close the group if no remaining segment fits in it (only group g changed), or the
        # fullest when too many are open
        if free[g] < smallest:
            done.append(groups.pop(g))
            free.pop(g)
        elif len(groups) > open_groups:
            g = min(range(len(free)), key=free.__getitem__)
            done.append(groups.pop(g))
            free.pop(g)
    return [sorted(g) for g in done + groups]


# canvas sizes: a short ladder so that few shapes are compiled
SIZE_LADDER = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
               6144, 8192)


def pow2_size(n: int, floor: int = 16) -> int:
    """Next power of two >= max(n, floor): the coarser buckets used when indexing (fewer compiles)."""
    b = floor
    while b < n:
        b *= 2
    return b


def ladder_size(n: int, step: int = 1) -> int:
    """Smallest ladder size >= n (beyond the ladder: a multiple of 2048); a multiple of `step`."""
    for s in SIZE_LADDER:
        if s >= n and s % step == 0:
            return s
    return round_up(n, max(2048, step))
