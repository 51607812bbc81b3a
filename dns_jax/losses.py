"""Training losses of DnS (distillation, similarity regularisation, selector BCE) and ViSiL (triplet)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def similarity_regularization_loss(sim: Array, min_val: float = -1.0, max_val: float = 1.0) -> Array:
    """Sum (not mean) over all cells of how far the raw comparator output leaves [min_val, max_val]."""
    below = jnp.abs(jnp.minimum(sim - min_val, 0.0))
    above = jnp.abs(jnp.maximum(sim - max_val, 0.0))
    return jnp.sum(below) + jnp.sum(above)


def distillation_l1(student_pos: Array, student_neg: Array, teacher_pos: Array, teacher_neg: Array,
                    weights: Array | None = None) -> Array:
    """Mean absolute error between the student's and the teacher's [pos, neg] similarities.

    All inputs [n] or [n, 1]. `weights` [n] (1 = real triplet, 0 = batch padding) averages over
    real triplets only.
    """
    s = jnp.stack([jnp.ravel(student_pos), jnp.ravel(student_neg)], axis=-1)
    t = jnp.stack([jnp.ravel(teacher_pos), jnp.ravel(teacher_neg)], axis=-1)
    err = jnp.abs(s - t)
    if weights is None:
        return jnp.mean(err)
    w = jnp.ravel(weights)[:, None]
    return jnp.sum(err * w) / jnp.maximum(2 * jnp.sum(w), 1.0)


def binary_cross_entropy(prob: Array, label: Array, weights: Array | None = None) -> Array:
    """BCE on probabilities (torch.nn.BCELoss clamps log at -100; we clamp the same way)."""
    p = jnp.ravel(prob)
    y = jnp.ravel(label).astype(p.dtype)
    log_p = jnp.maximum(jnp.log(p), -100.0)
    log_1p = jnp.maximum(jnp.log(1.0 - p), -100.0)
    loss = -(y * log_p + (1 - y) * log_1p)
    if weights is None:
        return jnp.mean(loss)
    w = jnp.ravel(weights)
    return jnp.sum(loss * w) / jnp.maximum(jnp.sum(w), 1.0)


def triplet_loss(sim_pos: Array, sim_neg: Array, gamma: float = 1.0) -> Array:
    """ViSiL triplet loss on similarities: mean(max(0, s_neg - s_pos + gamma))."""
    return jnp.mean(jnp.maximum(sim_neg - sim_pos + gamma, 0.0))
