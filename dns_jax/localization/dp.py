"""Dynamic programming over diagonals: local alignment paths with bounded speed changes.

Each cell gains m = sim - threshold (positive where frames match). A path moves one query and
one target cell at a time (the diagonal), or skips a cell on one axis: predecessors of (i, j)
are (i-1, j-1), (i-1, j-2) and (i-2, j-1), the skips costing `bend` (ties go to the diagonal
anyway). Any speed between 1/2 and 2 target cells per query cell is a mix of these moves, and a
path may change speed along the way. As in local sequence alignment, H(i, j) = m(i, j) +
max(0, H of the predecessors): a path starts where continuing would not pay, and the best
segment ends at the largest H. A row of H depends only on the two rows above it, so the table is
one `lax.scan` over query rows, vectorised along the target; the path is then traced back
through the stored moves.
Segments copied backwards are found on the column-reversed matrix (`localize(reverse=True)`).
"""
from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp

from .rounds import repeat_best, shift_right

Array = jax.Array


def score_table(m: Array, bend: float) -> Tuple[Array, Array]:
    """m [Tq, Tt] cell gains (-inf: unusable) -> (H [Tq, Tt], move [Tq, Tt] int8) with move
    0 = path starts here, 1 = from (i-1, j-1), 2 = from (i-1, j-2), 3 = from (i-2, j-1)."""
    tt = m.shape[1]
    zero = jnp.zeros((tt,), m.dtype)

    def row(carry, mi):
        h1, h2 = carry  # rows i-1 and i-2
        cands = jnp.stack([zero, shift_right(h1, 1), shift_right(h1, 2) - bend,
                           shift_right(h2, 1) - bend])
        move = jnp.argmax(cands, axis=0).astype(jnp.int8)
        h = mi + jnp.max(cands, axis=0)
        return (h, h1), (h, move)

    neg = jnp.full((tt,), -jnp.inf, m.dtype)
    _, (h, moves) = jax.lax.scan(row, (neg, neg), m)
    return h, moves


def _trace(sim: Array, moves: Array, end_i, end_j):
    """Follow the moves back from (end_i, end_j) -> (start_i, start_j, summed sim, cells)."""
    di = jnp.array([0, 1, 1, 2], jnp.int32)
    dj = jnp.array([0, 1, 2, 1], jnp.int32)

    def cond(c):
        return c[2]

    def body(c):
        i, j, _, total, n = c
        mv = moves[i, j].astype(jnp.int32)
        total, n = total + sim[i, j], n + 1
        go = mv > 0
        return (jnp.where(go, i - di[mv], i), jnp.where(go, j - dj[mv], j), go, total, n)

    i, j, _, total, n = jax.lax.while_loop(
        cond, body, (end_i, end_j, jnp.bool_(True), jnp.float32(0.0), jnp.int32(0)))
    return i, j, total, n


def best_path(sim: Array, threshold: float, bend: float):
    """The highest-scoring path of sim [Tq, Tt] -> (box, mean similarity along it, found)."""
    sim = sim.astype(jnp.float32)
    h, moves = score_table(sim - threshold, bend)
    flat = jnp.argmax(h)
    ei, ej = flat // sim.shape[1], flat % sim.shape[1]
    si, sj, total, n = _trace(sim, moves, ei.astype(jnp.int32), ej.astype(jnp.int32))
    box = jnp.stack([si, ei + 1, sj, ej + 1]).astype(jnp.int32)
    return box, total / jnp.maximum(n, 1), h[ei, ej] > 0


@functools.partial(jax.jit, static_argnames=("max_segments",))
def candidates(sim: Array, threshold: float = 0.3, bend: float = 0.0, max_segments: int = 5):
    """Up to `max_segments` disjoint paths of sim [Tq, Tt], best first -> (boxes [K, 4] int32,
    scores [K], found [K] bool). See `rounds.repeat_best`."""
    best = functools.partial(best_path, threshold=threshold, bend=bend)
    return repeat_best(best, jnp.asarray(sim, jnp.float32), max_segments)
