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


# -- S2VS (self-supervised video similarity learning, official model/losses.py) ----------------

def infonce_loss(similarity: Array, labels: Array, temperature: float = 0.07) -> Array:
    """S2VS InfoNCE over a batch similarity matrix [N, N] with labels [N, N] (> 0: match, 0:
    non-match; the diagonal is ignored as a positive) -> scalar.

    For every positive (i, j): -log(e_ij / (e_ij + sum_{k non-match of i} e_ik + 1e-6)) with
    e = exp(similarity / temperature), weighted by labels[i, j] and averaged per row over the row's
    label mass, then over rows (a row without positives gives NaN, as officially). Computed in the
    log domain, so a small temperature cannot overflow exp.
    """
    logits = similarity / temperature
    non_matches = labels == 0
    positives = labels * (1 - jnp.eye(labels.shape[0], dtype=labels.dtype))
    # log of the partition's non-match part: log(sum_k exp(logit_ik) + 1e-6) per row
    log_negatives = jnp.logaddexp(jax.nn.logsumexp(logits, axis=1, where=non_matches),
                                  jnp.log(jnp.asarray(1e-6, logits.dtype)))
    neg_log_prob = jnp.logaddexp(logits, log_negatives[:, None]) - logits
    return jnp.mean(jnp.sum(neg_log_prob * positives, axis=1) / jnp.sum(positives, axis=1))


def sshn_loss(similarity: Array, labels: Array, eps: float = 1e-3):
    """S2VS self-similarity + hardest-negative loss on [N, N] similarities in [0, 1] and labels
    (0 = non-match) -> (hard-negative term, self-similarity term), both scalars:
    -mean_i log(max(1 - max_{j non-match} s_ij, eps)) and -mean_i log(max(s_ii, eps)). A row with
    no non-match uses -100 as its hardest negative, as officially."""
    hardest = jnp.max(jnp.where(labels == 0, similarity, -100.0), axis=1)
    hardneg = -jnp.mean(jnp.log(jnp.maximum(1.0 - hardest, eps)))
    self_sim = -jnp.mean(jnp.log(jnp.maximum(jnp.diagonal(similarity), eps)))
    return hardneg, self_sim
