"""DnS selector: a per-video self-similarity score plus an MLP over
[query selfsim, target selfsim, coarse similarity] -> probability that the pair needs the fine student."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dns_jax.layers import DEFAULT_PRECISION, Attention, SelectorMLP, VideoComparator
from dns_jax.similarity import frame_mask_outer
from dns_jax.validation import add_batch_axis

Array = jax.Array


class SelectorNetwork(nn.Module):
    """Selector network (attention + zero-padded comparator for the self-similarity, then an MLP)."""

    dims: int = 512
    hidden_size: int = 100
    num_layers: int = 1
    precision: Optional[str] = DEFAULT_PRECISION

    def setup(self):
        self.attention = Attention(self.dims, self.precision)
        self.visil_head = VideoComparator("zero", self.precision)
        self.mlp = SelectorMLP(self.hidden_size, self.num_layers, self.precision)

    def frame_to_frame_similarity(self, x: Array) -> Array:
        """[N, T, R, D] -> [N, T, T]: the mean over all region pairs (not Chamfer) of the
        attention-weighted video with itself."""
        x, _ = self.attention(x)
        # mean_{o,p} <x_io, x_jp> == <mean_o x_io, mean_p x_jp>: no [T, R, R, T] tensor needed
        m = jnp.mean(x, axis=2)
        return jnp.einsum("bik,bjk->bij", m, m, precision=self.precision)

    def index_video(self, x: Array, mask: Optional[Array] = None) -> Array:
        """[T, R, D] or [N, T, R, D] (+ mask [N, T]) -> self-similarity score [N, 1]."""
        x, mask = add_batch_axis(x, mask)
        sim = self.frame_to_frame_similarity(x)
        sim_mask = None
        if mask is not None:
            sim_mask = frame_mask_outer(mask, mask)
            sim = jnp.where(sim_mask > 0, sim, 0.0)
        out, out_mask = self.visil_head(sim, sim_mask)
        if out_mask is None:
            return jnp.mean(out, axis=(1, 2))[:, None]
        out = jnp.where(out_mask > 0, out, 0.0)
        return (jnp.sum(out, axis=(1, 2)) / jnp.sum(out_mask, axis=(1, 2)))[:, None]

    def __call__(self, z: Array, train: bool = False) -> Array:
        """[B, 3] = [query selfsim, target selfsim, coarse similarity] -> [B, 1] probability."""
        return self.mlp(z, train)

    def init_all(self, num_frames: int = 8, num_regions: int = 9):
        """Touches every parameter (for `model.init(rng, method='init_all')`)."""
        s = self.index_video(jnp.zeros((num_frames, num_regions, self.dims), jnp.float32))
        return self(jnp.concatenate([s, s, s], axis=1))
