"""Mapping uniform [0, 1) draws to the recipe's distributions. Each augmentation draws all its
numbers as one `jax.random.uniform` vector (one PRNG call compiles far faster than many)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def between(u: jax.Array, lo, hi) -> jax.Array:
    """U(lo, hi) from u ~ U(0, 1)."""
    return lo + u * (hi - lo)


def integer(u: jax.Array, lo, hi) -> jax.Array:
    """Uniform integer in [lo, hi] (inclusive) from u ~ U(0, 1), int32."""
    return jnp.clip(jnp.floor(lo + u * (hi - lo + 1)), lo, hi).astype(jnp.int32)
