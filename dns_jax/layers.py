"""Building blocks of the DnS and ViSiL networks as Flax (linen) modules.

Shapes: `T` frames, `R` regions per frame, `D` feature dims, `B` batch. Parameter names follow the
official PyTorch modules so that weight conversion is a renaming plus transposes (see convert.py).
Every module is pure: `module.apply(variables, ...)`; training-only randomness (dropout) comes in
through the 'dropout' rng stream.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# The official code runs float32 matmuls at full precision. XLA on GPU/TPU would otherwise use
# TF32/bf16 passes; 'highest' keeps the numbers identical everywhere (pass None for speed).
DEFAULT_PRECISION = "highest"


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
    """x / max(||x||, eps), as torch.nn.functional.normalize (written so the gradient of a zero
    vector, e.g. a padded frame, is finite)."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def mean_of_best(scores: Array, top: int = 1) -> Array:
    """[..., P] -> [...]: the mean of the `top` largest values of the last axis (1: the max)."""
    top = int(top)
    if top < 1 or top > scores.shape[-1]:
        raise ValueError(f"the mean of the best {top} of {scores.shape[-1]} vector pairs: top must be 1 to "
                         f"{scores.shape[-1]}")
    return scores.max(-1) if top == 1 else jnp.mean(jax.lax.top_k(scores, top)[0], -1)


def best_block_pairs(s: Array, top: int = 1) -> Array:
    """[A, K, B, K] products of A x B videos' K blocks each -> [A, B]: each pair's best block
    product, or the mean of its `top` best (`mean_of_best`)."""
    if top == 1:
        return s.max(axis=(1, 3))
    a, k, b = s.shape[0], s.shape[1], s.shape[2]
    return mean_of_best(s.transpose(0, 2, 1, 3).reshape(a, b, k * s.shape[3]), top)


def block_max_similarity(a: Array, b: Array, blocks: int = 1, precision=None, top: int = 1) -> Array:
    """[A, K * E] x [B, K * E] -> [A, B]: the largest dot product between one of the K blocks of a
    row of `a` and one of the K blocks of a row of `b` (K = `blocks`; 1: the plain dot product), or
    with `top` > 1 the mean of the `top` largest of those K^2 products (`mean_of_best`).
    Memory A x B x K^2: callers chunk large databases (retrieval/coarse.py)."""
    if not 1 <= int(top) <= int(blocks) ** 2:
        raise ValueError(f"the mean of the best {top} of {int(blocks) ** 2} vector pairs: top must be 1 to "
                         f"{int(blocks) ** 2}")
    if blocks == 1:
        return jnp.matmul(a, b.T, precision=precision)
    if a.shape[-1] % blocks or b.shape[-1] != a.shape[-1]:
        raise ValueError(f"vectors of {a.shape[-1]} and {b.shape[-1]} values do not split into {blocks} blocks")
    e = a.shape[-1] // blocks
    s = jnp.matmul(a.reshape(-1, e), b.reshape(-1, e).T, precision=precision)     # [A * K, B * K]
    return best_block_pairs(s.reshape(a.shape[0], blocks, b.shape[0], blocks), top)


def block_max_pairs(a: Array, b: Array, blocks: int = 1, precision=None, top: int = 1) -> Array:
    """[P, K * E] x [P, K * E] -> [P]: `block_max_similarity` of each row of `a` with the same row of
    `b` (the pairs of a training batch or of a pair file)."""
    k = int(blocks)
    s = jnp.einsum("pkd,pld->pkl", a.reshape(a.shape[0], k, -1), b.reshape(b.shape[0], k, -1), precision=precision)
    return mean_of_best(s.reshape(s.shape[0], k * k), top)


def _unit_normal_context_init(key, shape, dtype=jnp.float32):
    """ViSiL's context vector: normal, then scaled to unit L2 norm. Kernel shape (D, 1)."""
    w = jax.random.normal(key, shape, dtype)
    return w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-6)


class Attention(nn.Module):
    """DnS region attention: w = sigmoid(c . tanh(W x + b)); returns (x * w, w).

    x: [..., D] -> ([..., D], [..., 1]). The weighted features are not re-normalised.
    `norm=True` is the official `Attention(norm=True)` (S2VS `attention_norm`): no transform,
    w = (c . x) / ||c|| / 2 + 0.5.
    """

    dims: int = 512
    precision: Optional[str] = DEFAULT_PRECISION
    norm: bool = False

    @nn.compact
    def __call__(self, x: Array):
        xavier = nn.initializers.xavier_uniform()
        if self.norm:
            context = nn.Dense(1, use_bias=False, kernel_init=_unit_normal_context_init,
                               precision=self.precision, name="context_vector")
            w = context(x) / jnp.linalg.norm(context.variables["params"]["kernel"])
            w = w / 2.0 + 0.5
            return x * w, w
        h = nn.Dense(self.dims, kernel_init=xavier, precision=self.precision, name="transform")(x)
        w = nn.Dense(1, use_bias=False, kernel_init=xavier, precision=self.precision,
                     name="context_vector")(jnp.tanh(h))
        w = jax.nn.sigmoid(w)
        return x * w, w


class ViSiLAttention(nn.Module):
    """ViSiL region attention with a unit-norm context vector u: w = (u . x) / 2 + 0.5.

    x: [..., D] -> ([..., D], [..., 1]).
    """

    dims: int = 3840
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array):
        w = nn.Dense(1, use_bias=False, kernel_init=_unit_normal_context_init,
                     precision=self.precision, name="context_vector")(x)
        w = w / 2.0 + 0.5
        return x * w, w


class Binarization(nn.Module):
    """DnS binarization: codes = sign(l2n(x) @ W) at inference, erf(z / sqrt(2 sigma)) in training.

    x: [..., D] -> [..., bits], values in {-1, 0, +1} (inference) or (-1, 1) (training).
    W is (dims, bits), used as x @ W (the official layout, not transposed). The official layer is
    initialised from an ITQ projection file; without one we start from a random orthogonal matrix.
    """

    dims: int = 512
    bits: Optional[int] = None
    sigma: float = 1e-6
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array, train: bool = False):
        bits = self.bits or self.dims
        w = self.param("W", nn.initializers.orthogonal(), (self.dims, bits))
        z = jnp.matmul(l2_normalize(x), w, precision=self.precision)
        if train:
            return jax.lax.erf(z / math.sqrt(2 * self.sigma))
        return jnp.sign(z)


def _max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool, stride 2, floor on odd sizes. x: [B, H, W, C]."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _fill_outside(x: Array, valid: Array, mode: str) -> Array:
    """Make cells outside each matrix's valid [h, w] corner look like the padding `mode` would.

    x: [B, H, W, C]; valid: [B, 2] int valid sizes. 'zero' zeroes them; 'replicate' copies the
    nearest valid row/column, so that a following edge-pad + conv sees exactly what the unpadded
    network sees at its border.
    """
    h, w = x.shape[1], x.shape[2]
    if mode == "zero":
        m = (jnp.arange(h)[None, :, None] < valid[:, 0, None, None]) & \
            (jnp.arange(w)[None, None, :] < valid[:, 1, None, None])
        return jnp.where(m[..., None], x, 0.0)
    rows = jnp.minimum(jnp.arange(h)[None, :], valid[:, :1] - 1)  # [B, H]
    cols = jnp.minimum(jnp.arange(w)[None, :], valid[:, 1:] - 1)  # [B, W]
    x = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
    return jnp.take_along_axis(x, cols[:, None, :, None], axis=2)


class _ConvBatchNorm(nn.Module):
    """The official batch-norm comparator block, torch `nn.Sequential(Conv2d(3x3, padding=1, no
    bias), BatchNorm2d)` (children `seq_0`, `seq_1`, see convert.py). [B, H, W, C] -> [B, H, W, F]
    (the conv's own zero padding keeps the size). BatchNorm uses its running statistics."""

    features: int
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                    kernel_init=nn.initializers.xavier_uniform(), precision=self.precision, name="seq_0")(x)
        return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                            name="seq_1")(x)


class VideoComparator(nn.Module):
    """The CNN over the frame-to-frame similarity matrix ("VideoComperator" officially).

    sim: [B, Tq, Tt] -> [B, Tq', Tt'] with Tq' = floor(floor(Tq/2)/2). Layers: pad 1, conv3x3(32),
    ReLU, maxpool 2x2/2, pad 1, conv3x3(64), ReLU, maxpool, pad 1, conv3x3(128), ReLU, conv1x1(1).
    `padding` is 'zero' (DnS students and selector) or 'replicate' (ViSiL teacher).

    S2VS options: `pooling=False` (call argument) is the official full-resolution path: replicate
    padding whatever `padding` says and no max-pooling, so Tq' = Tq. `batch_norm=True` is the
    official batch-norm comparator: each conv is a bias-free conv with its own zero padding of 1
    after the explicit pad, then BatchNorm, so every conv grows the matrix by 2 (as officially);
    masks and lengths do not fit that shape and are refused.

    Two ways to run padded batches:
    - `mask` [B, Tq, Tt] (official training rule): conv outputs outside the mask are zeroed before
      the ReLU, the mask is max-pooled with the features (a pooled cell is valid if any input was).
      Returns (out, pooled_mask). Equals the unpadded network only for lengths that are multiples of 4.
    - `lengths` [B, 2] int (exact rule): cells beyond each pair's true (Tq, Tt) are refilled before
      every conv as the unpadded network's padding would see them, and pooled sizes are floored.
      Returns (out, valid_mask) and equals the unpadded network for every length.
    """

    padding: str = "zero"
    precision: Optional[str] = DEFAULT_PRECISION
    batch_norm: bool = False

    @nn.compact
    def __call__(self, sim: Array, mask: Optional[Array] = None, lengths: Optional[Array] = None,
                 pooling: bool = True):
        if self.padding not in ("zero", "replicate"):
            raise ValueError(f"padding must be 'zero' or 'replicate', got {self.padding!r}")
        if mask is not None and lengths is not None:
            raise ValueError("give either mask or lengths, not both")
        if self.batch_norm and (mask is not None or lengths is not None):
            raise ValueError("the batch-norm comparator grows the matrix by 2 per conv, so a frame mask "
                             "does not fit it (the official code fails too): score padded batches pair by pair")
        padding = self.padding if pooling else "replicate"
        pad_mode = "constant" if padding == "zero" else "edge"
        xavier = nn.initializers.xavier_uniform()
        x = sim[..., None].astype(jnp.float32)
        m = None if mask is None else mask[..., None].astype(x.dtype)
        valid = None if lengths is None else jnp.asarray(lengths, jnp.int32)
        for i, feats in enumerate((32, 64, 128)):
            if valid is not None:
                x = _fill_outside(x, valid, padding)
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=pad_mode)
            if self.batch_norm:
                x = _ConvBatchNorm(feats, self.precision, name=f"conv{i + 1}")(x)
            else:
                x = nn.Conv(feats, (3, 3), padding="VALID", kernel_init=xavier, precision=self.precision,
                            name=f"conv{i + 1}")(x)
            if m is not None:
                x = jnp.where(m > 0, x, 0.0)
            x = jax.nn.relu(x)
            if i < 2 and pooling:
                x = _max_pool_2x2(x)
                if m is not None:
                    m = _max_pool_2x2(m)
                if valid is not None:
                    valid = valid // 2
        x = nn.Conv(1, (1, 1), kernel_init=xavier, precision=self.precision, name="fconv")(x)[..., 0]
        if valid is not None:
            h, w = x.shape[1], x.shape[2]
            vm = (jnp.arange(h)[None, :, None] < valid[:, 0, None, None]) & \
                 (jnp.arange(w)[None, None, :] < valid[:, 1, None, None])
            return x, vm.astype(x.dtype)
        return x, (None if m is None else m[..., 0])


class NetVLAD(nn.Module):
    """NetVLAD with an optional linear reduction and LayerNorm.

    x: [B, T, D], mask [B, T] or None -> [B, outdims] (before the student's final L2).
    `centroids` [K, D] and the soft-assignment projection `conv` [D, K] (officially a 1x1 conv) are
    separate parameters, as officially.
    """

    dims: int = 512
    num_clusters: int = 64
    outdims: Optional[int] = 1024
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array] = None):
        k, d = self.num_clusters, self.dims
        centroids = self.param("centroids", lambda key, s: jax.random.normal(key, s) / math.sqrt(d), (k, d))
        # starts as a copy of the centroids (the official reset_parameters), then trains separately
        conv = self.param("conv", lambda key: centroids.T)  # [D, K]
        assign = jax.nn.softmax(jnp.matmul(x, conv, precision=self.precision), axis=-1)  # [B, T, K]
        if mask is not None:
            assign = assign * mask[..., None].astype(assign.dtype)
        # sum_t a_tk (x_t - c_k) without materialising [B, T, K, D]
        vlad = jnp.einsum("btk,btd->bkd", assign, x, precision=self.precision)
        vlad = vlad - assign.sum(axis=1)[..., None] * centroids[None]
        vlad = l2_normalize(vlad, axis=-1)  # intra-normalisation
        vlad = l2_normalize(vlad.reshape(vlad.shape[0], k * d), axis=-1)
        if self.outdims is not None:
            vlad = nn.Dense(self.outdims, use_bias=False, precision=self.precision, name="reduction_layer",
                            kernel_init=nn.initializers.normal(1 / math.sqrt(k * d)))(vlad)
        return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm")(vlad)


class MultiHeadSelfAttention(nn.Module):
    """torch.nn.MultiheadAttention (self-attention, batch_first) with a key padding mask.

    x: [B, T, D], key_mask [B, T] (1 = real frame) or None -> [B, T, D].
    """

    dims: int = 512
    num_heads: int = 8
    dropout: float = 0.0
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array, key_mask: Optional[Array] = None, deterministic: bool = True):
        b, t, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"dims {d} is not divisible by {self.num_heads} heads")
        hd = d // self.num_heads
        dense = lambda name: nn.Dense(d, precision=self.precision, name=name,
                                      kernel_init=nn.initializers.xavier_uniform())
        split = lambda y: y.reshape(b, t, self.num_heads, hd)
        q, k, v = (split(dense(n)(x)) for n in ("query", "key", "value"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(hd), k, precision=self.precision)
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :] > 0, logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision).reshape(b, t, d)
        return nn.Dense(d, precision=self.precision, name="out_proj",
                        kernel_init=nn.initializers.xavier_uniform(),
                        bias_init=nn.initializers.zeros)(out)


class TransformerEncoderLayer(nn.Module):
    """torch.nn.TransformerEncoderLayer: post-norm, ReLU, dropout 0.1 in training. [B, T, D] -> same."""

    dims: int = 512
    num_heads: int = 8
    ff_dims: int = 2048
    dropout: float = 0.1
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array, key_mask: Optional[Array] = None, deterministic: bool = True):
        drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=deterministic)
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)
        a = MultiHeadSelfAttention(self.dims, self.num_heads, self.dropout, self.precision,
                                   name="self_attn")(x, key_mask, deterministic)
        x = ln("norm1")(x + drop(a))
        h = nn.Dense(self.ff_dims, precision=self.precision, name="linear1", bias_init=nn.initializers.zeros)(x)
        h = nn.Dense(self.dims, precision=self.precision, name="linear2",
                     bias_init=nn.initializers.zeros)(drop(jax.nn.relu(h)))
        return ln("norm2")(x + drop(h))


class TransformerEncoder(nn.Module):
    """A stack of post-norm encoder layers followed by a final LayerNorm ('norm'). [B, T, D] -> same."""

    dims: int = 512
    num_heads: int = 8
    ff_dims: int = 2048
    num_layers: int = 1
    dropout: float = 0.1
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array, key_mask: Optional[Array] = None, deterministic: bool = True):
        for i in range(self.num_layers):
            x = TransformerEncoderLayer(self.dims, self.num_heads, self.ff_dims, self.dropout,
                                        self.precision, name=f"layers_{i}")(x, key_mask, deterministic)
        return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm")(x)


class SelectorMLP(nn.Module):
    """The selector's MetadataModel: (Linear(no bias)-BatchNorm-ReLU-Dropout(0.5)) x (1 + num_layers),
    Linear(1), sigmoid. z: [B, in] -> [B, 1]. BatchNorm uses running statistics unless `train`."""

    hidden_size: int = 100
    num_layers: int = 1
    precision: Optional[str] = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, z: Array, train: bool = False):
        xavier = nn.initializers.xavier_uniform()
        for i in range(self.num_layers + 1):
            z = nn.Dense(self.hidden_size, use_bias=False, kernel_init=xavier, precision=self.precision,
                         name=f"dense_{i}")(z)
            z = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             use_fast_variance=False, name=f"bn_{i}")(z)
            z = nn.Dropout(0.5)(jax.nn.relu(z), deterministic=not train)
        z = nn.Dense(1, kernel_init=xavier, precision=self.precision, name="out")(z)
        return jax.nn.sigmoid(z)
