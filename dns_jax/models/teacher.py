"""ViSiL teacher head (PyTorch branch of the official ViSiL): unit-norm attention, region Chamfer,
replicate-padded comparator CNN, hard tanh, video Chamfer; optionally symmetric or without the CNN."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dns_jax.layers import DEFAULT_PRECISION, VideoComparator, ViSiLAttention
from dns_jax.similarity import chamfer, frame_to_frame, symmetric_chamfer

Array = jax.Array


class ViSiLHead(nn.Module):
    """ViSiL head. Full (ViSiL_v): attention + comparator; `symmetric` averages both Chamfer
    directions (visil_symmetric.pth); `video_comparator=False` is ViSiL_f."""

    dims: int = 3840
    attention: bool = True
    video_comparator: bool = True
    symmetric: bool = False
    precision: Optional[str] = DEFAULT_PRECISION

    def setup(self):
        if self.attention:
            self.attention_layer = ViSiLAttention(self.dims, self.precision)
        if self.video_comparator:
            self.video_comperator = VideoComparator("replicate", self.precision)

    def prepare_tensor(self, x: Array) -> Array:
        """[..., T, R, D] -> attention-weighted features (the stored representation)."""
        if self.attention:
            x, _ = self.attention_layer(x)
        return x

    def attention_weights(self, x: Array) -> Array:
        return self.attention_layer(x)[1]

    def frame_to_frame_similarity(self, query: Array, target: Array) -> Array:
        """Prepared [Tq, R, D], [Tt, R, D] -> [Tq, Tt]."""
        return frame_to_frame(query, target, symmetric=self.symmetric, precision=self.precision)

    def visil_output(self, sim: Array) -> Array:
        """[Tq, Tt] -> raw comparator output (before the hard tanh) [Tq//4, Tt//4]."""
        return self.video_comperator(sim[None])[0][0]

    def _v2v(self, sim: Array, mask: Optional[Array] = None) -> Array:
        if self.symmetric:
            return symmetric_chamfer(sim, 1, 0, mask)
        return chamfer(sim, 1, 0, mask)

    def __call__(self, query: Array, target: Array) -> Array:
        """Video similarity of prepared [Tq, R, D] and [Tt, R, D] -> scalar."""
        sim = self.frame_to_frame_similarity(query, target)
        if self.video_comparator:
            sim = jnp.clip(self.visil_output(sim), -1.0, 1.0)
        return self._v2v(sim)

    def padded_pair_similarity(self, query: Array, target: Array, query_len: Array, target_len: Array) -> Array:
        """Exact similarity of one zero-padded pair (prepared [Tq, R, D], [Tt, R, D] and true
        lengths) -> scalar, equal to the unpadded `__call__` for every length."""
        sim = self.frame_to_frame_similarity(query, target)
        if self.video_comparator:
            lengths = jnp.stack([query_len, target_len]).astype(jnp.int32)[None]
            out, valid = self.video_comperator(sim[None], lengths=lengths)
            return self._v2v(jnp.clip(out[0], -1.0, 1.0), valid[0])
        valid = (jnp.arange(sim.shape[0])[:, None] < query_len) & (jnp.arange(sim.shape[1])[None] < target_len)
        return self._v2v(sim, valid.astype(sim.dtype))

    def init_all(self, num_frames: int = 8, num_regions: int = 9):
        """Touches every parameter (for `model.init(rng, method='init_all')`)."""
        x = self.prepare_tensor(jnp.zeros((num_frames, num_regions, self.dims), jnp.float32))
        return self(x, x)
