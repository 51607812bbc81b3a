"""The loop shared by every alignment method: find the best segment, blank its box, repeat.

A method supplies `best(sim) -> (box int32[4], score float32, found bool)` for a similarity
matrix whose blanked (or padded, or NaN) cells are -inf; a box is (q0, q1, t0, t1) in cell
indices, ends exclusive. `repeat_best` runs it until `max_segments` boxes are found or nothing
is left, each round on the matrix with every earlier box set to -inf, so that later segments
never reuse cells of earlier ones (a segment copied twice into the target, or a looped copy,
gives boxes with the same query rows but disjoint target columns, which both survive).
"""
from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
BestFn = Callable[[Array], Tuple[Array, Array, Array]]


def blank_box(sim: Array, box: Array) -> Array:
    """sim [Tq, Tt] with the cells of box (q0, q1, t0, t1) set to -inf."""
    q = jnp.arange(sim.shape[0])[:, None]
    t = jnp.arange(sim.shape[1])[None, :]
    inside = (q >= box[0]) & (q < box[1]) & (t >= box[2]) & (t < box[3])
    return jnp.where(inside, -jnp.inf, sim)


def repeat_best(best: BestFn, sim: Array, max_segments: int) -> Tuple[Array, Array, Array]:
    """-> boxes [max_segments, 4] int32, scores [max_segments] float32, found [max_segments] bool,
    in the order found (best first); rows after the last found segment have found = False."""
    k_max = int(max_segments)
    init = (jnp.int32(0), jnp.bool_(True), sim,
            jnp.zeros((k_max, 4), jnp.int32), jnp.zeros((k_max,), jnp.float32),
            jnp.zeros((k_max,), jnp.bool_))

    def cond(c):
        k, more = c[0], c[1]
        return (k < k_max) & more

    def body(c):
        k, _, s, boxes, scores, found = c
        box, score, ok = best(s)
        boxes = boxes.at[k].set(jnp.where(ok, box, 0).astype(jnp.int32))
        scores = scores.at[k].set(jnp.where(ok, score, 0.0))
        found = found.at[k].set(ok)
        s = jnp.where(ok, blank_box(s, box), s)
        return k + 1, ok, s, boxes, scores, found

    _, _, _, boxes, scores, found = jax.lax.while_loop(cond, body, init)
    return boxes, scores, found


def shift_right(x: Array, k: int, fill=-jnp.inf) -> Array:
    """[..., T] -> y with y[..., j] = x[..., j - k] (fill where j < k); any k >= 0."""
    pad = jnp.full(x.shape[:-1] + (k,), fill, x.dtype)
    return jnp.concatenate([pad, x], axis=-1)[..., : x.shape[-1]]
