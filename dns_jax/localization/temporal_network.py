"""Temporal network (Tan et al., ACM MM 2009; the TN of the VCSL benchmark).

Nodes are, for every query cell, its `top_k` most similar target cells that reach `threshold`;
node (q', r') links to (q, r) when 1 <= q - q' <= max_step and 1 <= r - r' <= max_step, so a
path moves forward in both videos at any speed between 1/max_step and max_step and may jump
over a few unmatched cells. The copied segment is the path of largest summed similarity (the
longest path of this DAG). Nodes come in query order, so the longest path is one `lax.scan`
over query cells carrying the last `max_step` rows of path scores: O(Tq * max_step * top_k^2).
Further segments come from re-running on the matrix with the found boxes blanked.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .rounds import repeat_best

Array = jax.Array


def path_table(val: Array, idx: Array, max_step: int):
    """Longest-path scores of the network with node weights val [Tq, K] (-inf: no node) at
    target cells idx [Tq, K] -> (best [Tq, K], back_dq [Tq, K], back_k [Tq, K]); back_dq = 0
    marks a path start, else the predecessor is node back_k of row q - back_dq."""
    k = val.shape[1]
    w = int(max_step)

    def step(carry, x):
        bprev, iprev = carry               # [w, K]; row w-1 is the previous query cell
        vq, iq = x                         # [K]
        dr = iq[None, None, :] - iprev[:, :, None]          # [w, K', K]
        edge = (dr >= 1) & (dr <= w) & jnp.isfinite(bprev)[:, :, None]
        cand = jnp.where(edge, bprev[:, :, None], -jnp.inf).reshape(w * k, k)
        arg = jnp.argmax(cand, axis=0)
        prev = jnp.max(cand, axis=0)
        extend = prev > 0
        best = jnp.where(jnp.isfinite(vq), vq + jnp.where(extend, prev, 0.0), -jnp.inf)
        back_dq = jnp.where(extend, w - arg // k, 0).astype(jnp.int32)
        back_k = (arg % k).astype(jnp.int32)
        carry = (jnp.concatenate([bprev[1:], best[None]]), jnp.concatenate([iprev[1:], iq[None]]))
        return carry, (best, back_dq, back_k)

    init = (jnp.full((w, k), -jnp.inf, val.dtype), jnp.zeros((w, k), idx.dtype))
    _, out = jax.lax.scan(step, init, (val, idx))
    return out


def best_path(sim: Array, threshold: float, top_k: int, max_step: int):
    """The longest path of sim's network -> (box, mean similarity of its nodes, found)."""
    sim = sim.astype(jnp.float32)
    k = min(int(top_k), sim.shape[1])
    val, idx = jax.lax.top_k(sim, k)
    idx = idx.astype(jnp.int32)
    val = jnp.where(val >= threshold, val, -jnp.inf)
    best, back_dq, back_k = path_table(val, idx, max_step)
    flat = jnp.argmax(best)
    eq, ek = (flat // k).astype(jnp.int32), (flat % k).astype(jnp.int32)

    def body(c):
        q, kk, _, total, n = c
        dq = back_dq[q, kk]
        return (q - dq, jnp.where(dq > 0, back_k[q, kk], kk), dq > 0, total + val[q, kk], n + 1)

    sq, sk, _, total, n = jax.lax.while_loop(
        lambda c: c[2], body, (eq, ek, jnp.bool_(True), jnp.float32(0.0), jnp.int32(0)))
    box = jnp.stack([sq, eq + 1, idx[sq, sk], idx[eq, ek] + 1]).astype(jnp.int32)
    return box, total / jnp.maximum(n, 1), jnp.isfinite(best[eq, ek])


@functools.partial(jax.jit, static_argnames=("top_k", "max_step", "max_segments"))
def candidates(sim: Array, threshold: float = 0.3, top_k: int = 5, max_step: int = 4,
               max_segments: int = 5):
    """Up to `max_segments` disjoint longest paths of sim [Tq, Tt], best first -> (boxes
    [K, 4] int32, scores [K], found [K] bool). See `rounds.repeat_best`."""
    best = functools.partial(best_path, threshold=threshold, top_k=top_k, max_step=max_step)
    return repeat_best(best, jnp.asarray(sim, jnp.float32), max_segments)
