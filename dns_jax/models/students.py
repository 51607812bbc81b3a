"""DnS students: the fine-grained (ViSiL-like) and the coarse-grained (one vector per video) networks.

Inputs are region features `[T, R, D]` (one video) or `[N, T, R, D]` with a frame mask `[N, T]`
(1 = real frame, 0 = padding). Method names follow the official classes.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dns_jax.layers import (
    DEFAULT_PRECISION,
    Attention,
    Binarization,
    NetVLAD,
    TransformerEncoder,
    VideoComparator,
    block_max_pairs,
    block_max_similarity,
    l2_normalize,
)
from dns_jax.losses import similarity_regularization_loss
from dns_jax.similarity import chamfer, frame_mask_outer, frame_to_frame, symmetric_chamfer
from dns_jax.validation import add_batch_axis

Array = jax.Array

FINE_INDEXING = ("att", "bin", "none")


class FineGrainedStudent(nn.Module):
    """Fine-grained student: indexing layer ('att' attention, 'bin' binarization or 'none'),
    region Chamfer, the zero-padded comparator CNN, hard tanh, video Chamfer.

    The same network is S2VS's (models/s2vs.py); its options, all off for the DnS students:
    `symmetric` (both Chamfer steps average the two directions), `attention_norm` (the official
    `Attention(norm=True)`) and `batch_norm` (the official batch-norm comparator, see
    VideoComparator). Similarity methods also take `pooling=False` (full-resolution comparator)
    and `apply_visil=False` (frame-to-frame Chamfer only, no comparator)."""

    dims: int = 512
    indexing: str = "att"
    bits: Optional[int] = None
    precision: Optional[str] = DEFAULT_PRECISION
    symmetric: bool = False
    attention_norm: bool = False
    batch_norm: bool = False

    def setup(self):
        if self.indexing not in FINE_INDEXING:
            raise ValueError(f"indexing must be one of {FINE_INDEXING}, got {self.indexing!r}")
        if self.attention_norm and self.indexing != "att":
            raise ValueError("attention_norm needs indexing='att'")
        if self.indexing == "att":
            self.attention = Attention(self.dims, self.precision, norm=self.attention_norm)
        elif self.indexing == "bin":
            self.binarization = Binarization(self.dims, self.bits, precision=self.precision)
        self.visil_head = VideoComparator("zero", self.precision, batch_norm=self.batch_norm)

    # -- indexing ---------------------------------------------------------------------------
    def index_video(self, x: Array, mask: Optional[Array] = None, train: bool = False) -> Array:
        """[..., T, R, D] (+ mask [..., T]) -> the stored representation, same shape
        (attention-weighted features, or +-1 codes of `bits` dims); padded frames zeroed."""
        if self.indexing == "bin":
            x = self.binarization(x, train)
        elif self.indexing == "att":
            x, _ = self.attention(x)
        if mask is not None:
            x = jnp.where(mask[..., None, None] > 0, x, 0.0)
        return x

    def attention_weights(self, x: Array) -> Array:
        """[..., T, R, D] -> [..., T, R, 1] region weights (attention students only)."""
        if self.indexing != "att":
            raise ValueError(f"a '{self.indexing}' student has no attention weights")
        return self.attention(x)[1]

    # -- similarity -------------------------------------------------------------------------
    def frame_to_frame_similarity(self, query: Array, target: Array) -> Array:
        """Indexed [Tq, R, D], [Tt, R, D] -> [Tq, Tt] (for 'bin', the dot of codes / bits)."""
        sim = frame_to_frame(query, target, symmetric=self.symmetric, precision=self.precision)
        if self.indexing == "bin":
            sim = sim / target.shape[-1]
        return sim

    def similarity_matrix(self, query: Array, target: Array, pooling: bool = True,
                          apply_visil: bool = True) -> Array:
        """Indexed [Tq, R, D], [Tt, R, D] -> comparator output after hard tanh [Tq//4, Tt//4]
        ([Tq, Tt] with pooling=False; the frame-to-frame matrix with apply_visil=False)."""
        sim = self.frame_to_frame_similarity(query, target)
        if not apply_visil:
            return sim
        out, _ = self.visil_head(sim[None], pooling=pooling)
        return jnp.clip(out[0], -1.0, 1.0)

    def pairwise_similarity_matrices(self, query: Array, target: Array, query_mask: Optional[Array] = None,
                                     target_mask: Optional[Array] = None, pooling: bool = True,
                                     apply_visil: bool = True):
        """Every query against every target: indexed [A, Tq, R, D], [B, Tt, R, D] (masks [A, Tq],
        [B, Tt] or None) -> (raw comparator output [A*B, H, W] (before the hard tanh; the
        frame-to-frame matrices with apply_visil=False), its mask [A*B, H, W] or None)."""
        a, b = query.shape[0], target.shape[0]
        pair_f2f = jax.vmap(jax.vmap(self.frame_to_frame_similarity, (None, 0)), (0, None))
        sim = pair_f2f(query, target).reshape((a * b,) + (query.shape[1], target.shape[1]))
        sim_mask = None
        if query_mask is not None and target_mask is not None:
            sim_mask = frame_mask_outer(query_mask[:, None], target_mask[None]).reshape(sim.shape)
            sim = jnp.where(sim_mask > 0, sim, 0.0)
        if not apply_visil:
            return sim, sim_mask
        return self.visil_head(sim, sim_mask, pooling=pooling)

    def video_chamfer(self, sim: Array, mask: Optional[Array] = None) -> Array:
        """Video-level Chamfer of [..., H, W] matrices (max over target frames, mean over query
        frames; both directions averaged if `symmetric`) -> [...]."""
        if self.symmetric:
            return symmetric_chamfer(sim, -1, -2, mask)
        return chamfer(sim, -1, -2, mask)

    def calculate_video_similarity(self, query: Array, target: Array,
                                   query_mask: Optional[Array] = None, target_mask: Optional[Array] = None,
                                   pooling: bool = True, apply_visil: bool = True):
        """Similarity of every query with every target, official semantics.

        Unbatched [Tq, R, D], [Tt, R, D] -> [1, 1]; batched [A, Tq, R, D], [B, Tt, R, D] with masks
        [A, Tq], [B, Tt] -> [A, B] using the official padded rule (exact only for lengths that are
        multiples of 4, and with pooling=False only for unpadded videos; use `padded_pair_similarity`
        for an exact padded path).
        """
        query, query_mask = add_batch_axis(query, query_mask)
        target, target_mask = add_batch_axis(target, target_mask)
        out, out_mask = self.pairwise_similarity_matrices(query, target, query_mask, target_mask,
                                                          pooling, apply_visil)
        if apply_visil:
            out = jnp.clip(out, -1.0, 1.0)
        return self.video_chamfer(out, out_mask).reshape(query.shape[0], target.shape[0])

    def padded_pair_similarity(self, query: Array, target: Array, query_len: Array, target_len: Array,
                               pooling: bool = True) -> Array:
        """Exact similarity of one zero-padded pair: indexed [Tq, R, D], [Tt, R, D] with true lengths
        -> scalar, equal to the unpadded `calculate_video_similarity` (same `pooling`) for every
        length >= 4."""
        sim = self.frame_to_frame_similarity(query, target)
        lengths = jnp.stack([query_len, target_len]).astype(jnp.int32)[None]
        out, valid = self.visil_head(sim[None], lengths=lengths, pooling=pooling)
        return self.video_chamfer(jnp.clip(out[0], -1.0, 1.0), valid[0])

    # -- training ---------------------------------------------------------------------------
    def __call__(self, anchors: Array, positives: Array, negatives: Array,
                 anchor_mask: Array, positive_mask: Array, negative_mask: Array):
        """Official training forward on indexed, padded batches [n, T, R, D] with masks [n, T].

        Returns (pos [n, 1], neg [n, 1], reg_loss): similarities of (anchor_i, positive_i) and
        (anchor_i, negative_i), and the regularisation loss of the raw comparator output.
        """
        f2f = jax.vmap(self.frame_to_frame_similarity)
        sim = jnp.concatenate([f2f(anchors, positives), f2f(anchors, negatives)], 0)
        mask = jnp.concatenate([frame_mask_outer(anchor_mask, positive_mask),
                                frame_mask_outer(anchor_mask, negative_mask)], 0)
        sim = jnp.where(mask > 0, sim, 0.0)
        out, out_mask = self.visil_head(sim, mask)
        reg_loss = similarity_regularization_loss(out)
        sims = self.video_chamfer(jnp.clip(out, -1.0, 1.0), out_mask)[:, None]
        pos, neg = jnp.split(sims, 2, axis=0)
        return pos, neg, reg_loss

    def init_all(self, num_frames: int = 8, num_regions: int = 9):
        """Touches every parameter (for `model.init(rng, method='init_all')`)."""
        x = jnp.zeros((num_frames, num_regions, self.dims), jnp.float32)
        x = self.index_video(x)
        return self.calculate_video_similarity(x, x)


class CoarseGrainedStudent(nn.Module):
    """Coarse-grained student: attention -> sum over regions -> L2 -> Transformer -> NetVLAD ->
    L2, one `[netvlad_outdims]` vector per video; similarity is a dot product.

    `region_max=True` (not an official option; transformer and NetVLAD off): each region is kept
    apart, L2-normalised and averaged over the video's frames (weighted by the attention, if any:
    with a zero context vector every weight is 0.5, a plain mean), so a video is `num_regions` unit
    vectors `[R * D]` (flattened, region-major) and the similarity of two videos is the best cosine
    of their R x R region pairs (`block_max_similarity`): a picture-in-picture or overlaid copy
    matches on the regions it keeps, which a single vector mixes with the rest of the frame.

    `num_segments` S > 1 (with `region_max`): the same for each of S equal stretches of the video
    (its i-th unmasked frame of L in stretch floor(i S / L); a stretch with no frame, in a video
    shorter than S, takes the whole video's vectors), `[S * R * D]` per video (segment-major) and
    the best of (S R)^2 pairs: a copy of part of a video matches the stretch it copies instead of
    an average diluted by the rest.

    `top_pairs` K > 1 (with `region_max`): a pair scores the mean of its K best vector-pair cosines
    instead of the best one; the best of many pairs of unrelated videos is biased upwards by their
    number, the mean of a few is less so (`layers.mean_of_best`)."""

    dims: int = 512
    attention: bool = True
    transformer: bool = True
    transformer_heads: int = 8
    transformer_feedforward_dims: int = 2048
    transformer_layers: int = 1
    netvlad: bool = True
    netvlad_clusters: int = 64
    netvlad_outdims: Optional[int] = 1024
    region_max: bool = False
    num_regions: int = 9
    num_segments: int = 1
    top_pairs: int = 1
    precision: Optional[str] = DEFAULT_PRECISION

    @property
    def vector_blocks(self) -> int:
        """Unit vectors per indexed video: `num_segments * num_regions` with `region_max`, else 1."""
        return int(self.num_segments) * int(self.num_regions) if self.region_max else 1

    def setup(self):
        if self.region_max and (self.transformer or self.netvlad):
            raise ValueError("region_max takes the region vectors as they are: set transformer=False and netvlad=False")
        if int(self.num_segments) < 1 or (int(self.num_segments) > 1 and not self.region_max):
            raise ValueError(f"num_segments {self.num_segments!r}: a positive count, above 1 only with region_max")
        if not 1 <= int(self.top_pairs) <= self.vector_blocks ** 2:
            raise ValueError(f"top_pairs {self.top_pairs!r}: 1 to {self.vector_blocks ** 2} (the vector pairs of two "
                             "videos)")
        if self.attention:
            self.attention_layer = Attention(self.dims, self.precision)
        if self.transformer:
            self.transformer_layer = TransformerEncoder(
                self.dims, self.transformer_heads, self.transformer_feedforward_dims,
                self.transformer_layers, 0.1, self.precision)
        if self.netvlad:
            self.netvlad_layer = NetVLAD(self.dims, self.netvlad_clusters, self.netvlad_outdims, self.precision)

    def index_video(self, x: Array, mask: Optional[Array] = None, train: bool = False) -> Array:
        """[T, R, D] or [N, T, R, D] (+ mask [N, T]) -> L2-normalised [N, out] (N = 1 unbatched)."""
        x, mask = add_batch_axis(x, mask)
        if self.region_max:
            weights = self.attention_layer(x)[1] if self.attention else None
            return self._region_vectors(x, mask, weights)
        if self.attention:
            x, _ = self.attention_layer(x)
            self.sow("intermediates", "attention_out", x)
        x = l2_normalize(jnp.sum(x, axis=2))
        if self.transformer:
            x = self.transformer_layer(x, mask, deterministic=not train)
            self.sow("intermediates", "transformer_out", x)
        if self.netvlad:
            x = self.netvlad_layer(x, mask)
            self.sow("intermediates", "netvlad_out", x)
        elif mask is not None:
            x = jnp.sum(jnp.where(mask[..., None] > 0, x, 0.0), 1) / jnp.sum(mask, 1, keepdims=True)
        else:
            x = jnp.mean(x, 1)
        return l2_normalize(x)

    def _region_vectors(self, x: Array, mask: Optional[Array], weights: Optional[Array] = None) -> Array:
        """[N, T, R, D] -> [N, S * R * D]: each region L2-normalised, averaged over the (unmasked)
        frames of each segment -- weighted by the attention [N, T, R, 1] when given -- and
        L2-normalised again (S = `num_segments`; a segment with no frame takes the whole video's)."""
        n, t, r, d = x.shape
        if r != self.num_regions:
            raise ValueError(f"region_max expects {self.num_regions} regions per frame, got {r}")
        w = jnp.ones((n, t, r, 1), x.dtype) if weights is None else weights.astype(x.dtype)
        valid = jnp.ones((n, t), x.dtype) if mask is None else (mask > 0).astype(x.dtype)
        w = w * valid[..., None, None]
        x = l2_normalize(x) * w                                                          # [N, T, R, D]
        whole = jnp.sum(x, 1) / jnp.maximum(jnp.sum(w, 1), 1e-12)                        # [N, R, D]
        segments = int(self.num_segments)
        if segments == 1:
            return l2_normalize(whole).reshape(n, r * d)
        # the i-th valid frame of L goes to segment floor(i S / L): integers, no rounding
        position = jnp.cumsum(valid, 1).astype(jnp.int32) - 1                           # [N, T]
        length = jnp.maximum(jnp.sum(valid, 1, keepdims=True).astype(jnp.int32), 1)     # [N, 1]
        segment = jnp.minimum(position * segments // length, segments - 1)
        onehot = jax.nn.one_hot(segment, segments, dtype=x.dtype) * valid[..., None]   # [N, T, S]
        total = jnp.einsum("nts,ntrd->nsrd", onehot, x, precision="highest")
        count = jnp.einsum("nts,ntr->nsr", onehot, w[..., 0], precision="highest")[..., None]
        empty = (jnp.sum(onehot, 1) == 0)[:, :, None, None]                              # [N, S, 1, 1]
        parts = jnp.where(empty, whole[:, None], total / jnp.maximum(count, 1e-12))       # [N, S, R, D]
        return l2_normalize(parts).reshape(n, segments * r * d)

    def calculate_video_similarity(self, query: Array, target: Array) -> Array:
        """[A, E] x [B, E] -> [A, B] cosine similarities (with `region_max`, the best vector pair's, or
        the mean of the `top_pairs` best)."""
        return block_max_similarity(query, target, self.vector_blocks, self.precision, int(self.top_pairs))

    def __call__(self, anchors: Array, positives: Array, negatives: Array, *masks):
        """Official training forward on indexed [n, E] vectors -> (pos [n, 1], neg [n, 1], None)."""
        if self.region_max:
            k, p, top = self.vector_blocks, self.precision, int(self.top_pairs)
            return (block_max_pairs(anchors, positives, k, p, top)[:, None],
                    block_max_pairs(anchors, negatives, k, p, top)[:, None], None)
        pos = jnp.sum(anchors * positives, 1, keepdims=True)
        neg = jnp.sum(anchors * negatives, 1, keepdims=True)
        return pos, neg, None

    def init_all(self, num_frames: int = 8, num_regions: int = 9):
        """Touches every parameter (for `model.init(rng, method='init_all')`)."""
        return self.index_video(jnp.zeros((num_frames, num_regions, self.dims), jnp.float32))
