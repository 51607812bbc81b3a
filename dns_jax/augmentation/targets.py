"""Similarity targets of an S2VS batch (official `TrainDataset.collate_fn`).

The batch is `concat([weak_views, strong_views])`, 2B videos: row a < B is weak view a, row
B + i is strong view i. Each row's sources are a vector over the B original videos: a weak view
is one-hot; a strong view is the `viv_matrix` row (1 at itself, lambda at its host if mixed).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def similarity_targets(viv: jax.Array, mode: str = "binary") -> jax.Array:
    """`viv [B, B]` -> `[2B, 2B]` float32 targets, symmetric.

    binary: official, 1 where two videos share any source (bool(S @ S.T)), else 0.
    soft: max over shared sources of the product of their shares, so a mixed video and its
          host get lambda (and two videos mixed into the same host lambda**2); 1 on the diagonal.
    """
    batch = viv.shape[0]
    sources = jnp.concatenate([jnp.eye(batch, dtype=jnp.float32), viv.astype(jnp.float32)])
    if mode == "binary":
        return (sources @ sources.T > 0).astype(jnp.float32)
    if mode == "soft":
        return jnp.max(sources[:, None, :] * sources[None, :, :], axis=-1)
    raise ValueError(f"unknown label mode {mode!r}; expected 'binary' or 'soft'")
