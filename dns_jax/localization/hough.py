"""Hough voting over (speed, offset) (after Douze et al., IEEE TMM 2010, with a speed axis).

A copy at constant speed lies on a line t = offset + v * q of the similarity matrix, v being
target cells per query cell (a target that plays the query 1.25x faster has v = 0.8). Every cell
votes with max(sim - threshold, 0) for the line through it, for each v of `speeds`, in an
accumulator [speeds, offsets] (one scatter-add). Votes are also taken from the matrix dilated by
`tolerance` cells along the target axis, so that a speed between two grid values or a rounding
of the frame sampling still piles its votes into one line. On the line of the highest peak the
segment is the best-scoring run of query cells (largest sum of sim - threshold, a maximum
subarray: short dips inside a copy are bridged, long gaps split it), each cell taking its best
target cell within `tolerance` of the line. Cells of found boxes are blanked before the next
peak is taken.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from .rounds import repeat_best, shift_right

Array = jax.Array

DEFAULT_SPEEDS = (0.5, 0.63, 0.8, 1.0, 1.25, 1.6, 2.0)


def _dilate(x: Array, radius: int) -> Array:
    """Max over target cells within `radius` of each cell. x [Tq, Tt]."""
    out = x
    for r in range(1, radius + 1):
        out = jnp.maximum(out, shift_right(x, r, 0.0))
        out = jnp.maximum(out, jnp.flip(shift_right(jnp.flip(x, -1), r, 0.0), -1))
    return out


def accumulator(votes: Array, speeds: Sequence[float]) -> Array:
    """votes [Tq, Tt] -> [len(speeds), Tt + 2 * pad] summed votes per (speed, offset + pad),
    pad = ceil(max |v| * (Tq - 1)); the cell (q, t) goes to offset floor(t - v q + 1/2)."""
    tq, tt = votes.shape
    pad = int(math.ceil(max(abs(v) for v in speeds) * (tq - 1)))
    q = jnp.arange(tq, dtype=jnp.float32)[:, None]
    t = jnp.arange(tt, dtype=jnp.float32)[None, :]
    rows = []
    for v in speeds:
        b = (jnp.floor(t - v * q + 0.5) + pad).astype(jnp.int32)
        rows.append(jnp.zeros((tt + 2 * pad,), votes.dtype).at[b.reshape(-1)].add(votes.reshape(-1)))
    return jnp.stack(rows)


def _best_run(gain: Array):
    """Maximum-sum run of gain [T] (-inf never joins a run) -> (start, end inclusive, sum)."""
    def step(c, x):
        cur, cur_start, best, bs, be = c
        g, i = x
        restart = cur <= 0
        cur = jnp.where(restart, g, cur + g)
        cur_start = jnp.where(restart, i, cur_start)
        better = cur > best
        return (cur, cur_start, jnp.where(better, cur, best), jnp.where(better, cur_start, bs),
                jnp.where(better, i, be)), None

    i = jnp.arange(gain.shape[0], dtype=jnp.int32)
    init = (jnp.float32(-jnp.inf), jnp.int32(0), jnp.float32(-jnp.inf), jnp.int32(0), jnp.int32(0))
    (_, _, best, start, end), _ = jax.lax.scan(step, init, (gain.astype(jnp.float32), i))
    return start, end, best


def best_line(sim: Array, threshold: float, speeds: Sequence[float], tolerance: int):
    """The strongest line's best run -> (box, mean similarity along it, found)."""
    sim = sim.astype(jnp.float32)
    tq, tt = sim.shape
    w = jnp.maximum(sim - threshold, 0.0)
    acc = accumulator(w + _dilate(w, tolerance), speeds)
    pad = (acc.shape[1] - tt) // 2
    flat = jnp.argmax(acc)
    p, b = flat // acc.shape[1], flat % acc.shape[1]
    v = jnp.asarray(speeds, jnp.float32)[p]
    q = jnp.arange(tq)
    line = jnp.ceil((b - pad).astype(jnp.float32) + v * q - 0.5).astype(jnp.int32)
    cand = line[:, None] + jnp.arange(-tolerance, tolerance + 1)[None, :]       # [Tq, 2 tol + 1]
    inside = (cand >= 0) & (cand < tt)
    vals = jnp.where(inside, sim[q[:, None], jnp.clip(cand, 0, tt - 1)], -jnp.inf)
    a = jnp.max(vals, axis=1)
    t_at = jnp.take_along_axis(cand, jnp.argmax(vals, axis=1)[:, None], axis=1)[:, 0]
    q0, q1, total = _best_run(a - threshold)
    in_run = (q >= q0) & (q <= q1) & jnp.isfinite(a)
    t0 = jnp.min(jnp.where(in_run, t_at, tt))
    t1 = jnp.max(jnp.where(in_run, t_at, -1)) + 1
    mean = jnp.sum(jnp.where(in_run, a, 0.0)) / jnp.maximum(jnp.sum(in_run), 1)
    box = jnp.stack([q0, q1 + 1, t0, t1]).astype(jnp.int32)
    return box, mean, (total > 0) & (acc[p, b] > 0)


@functools.partial(jax.jit, static_argnames=("speeds", "tolerance", "max_segments"))
def candidates(sim: Array, threshold: float = 0.3, speeds: Sequence[float] = DEFAULT_SPEEDS,
               tolerance: int = 1, max_segments: int = 5):
    """Up to `max_segments` segments of sim [Tq, Tt] from the strongest lines, best first ->
    (boxes [K, 4] int32, scores [K], found [K] bool). See `rounds.repeat_best`."""
    best = functools.partial(best_line, threshold=threshold, speeds=tuple(speeds),
                             tolerance=int(tolerance))
    return repeat_best(best, jnp.asarray(sim, jnp.float32), max_segments)
