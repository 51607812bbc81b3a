"""Chamfer similarity and the frame-to-frame (region-level) similarity of two videos.

Orientation (official): f2f takes the max over *target* regions and the mean over *query* regions;
the video-level step takes the max over target frames and the mean over query frames. Chamfer is
asymmetric: sim(q, t) != sim(t, q).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from dns_jax.layers import DEFAULT_PRECISION

Array = jax.Array


def chamfer(s: Array, max_axis: int, mean_axis: int, mask: Optional[Array] = None) -> Array:
    """Chamfer similarity: max over `max_axis`, then mean over `mean_axis`; both axes are removed.

    With a {0,1} `mask` of s's shape, masked cells are ignored by the max (filled with -inf), rows
    with no valid cell are dropped, and the mean divides by the number of valid rows.
    """
    max_axis %= s.ndim
    mean_axis %= s.ndim
    if mask is None:
        out = jnp.mean(jnp.max(s, axis=max_axis, keepdims=True), axis=mean_axis, keepdims=True)
    else:
        valid = mask > 0
        m = jnp.max(jnp.where(valid, s, -jnp.inf), axis=max_axis, keepdims=True)
        row_valid = jnp.max(mask, axis=max_axis, keepdims=True)
        m = jnp.where(row_valid > 0, m, 0.0)
        out = jnp.sum(m, axis=mean_axis, keepdims=True) / jnp.sum(row_valid, axis=mean_axis, keepdims=True)
    return jnp.squeeze(out, axis=(max_axis, mean_axis))


def symmetric_chamfer(s: Array, axis_a: int, axis_b: int, mask: Optional[Array] = None) -> Array:
    """Mean of the two Chamfer directions (ViSiL's symmetric variant)."""
    return (chamfer(s, axis_a, axis_b, mask) + chamfer(s, axis_b, axis_a, mask)) / 2


def region_similarity(query: Array, target: Array, precision=DEFAULT_PRECISION) -> Array:
    """All region-pair dot products. query [Tq, Rq, D], target [Tt, Rt, D] -> [Tq, Rq, Rt, Tt]."""
    return jnp.einsum("iok,jpk->iopj", query, target, precision=precision)


def frame_to_frame(query: Array, target: Array, symmetric: bool = False,
                   precision=DEFAULT_PRECISION) -> Array:
    """Region-level Chamfer of every frame pair. query [Tq, R, D], target [Tt, R, D] -> [Tq, Tt].

    Max over target regions, mean over query regions (or the mean of both directions if symmetric).
    """
    s = region_similarity(query, target, precision)
    if symmetric:
        return symmetric_chamfer(s, 2, 1)
    return chamfer(s, 2, 1)


def frame_mask_outer(query_mask: Array, target_mask: Array) -> Array:
    """[..., Tq] x [..., Tt] -> [..., Tq, Tt] outer product of two frame masks."""
    return query_mask[..., :, None] * target_mask[..., None, :]
