"""L3-iMAC region pooling and the frame normalisers (DnS `FeatureExtractor`, spec section 2).

Everything here works on NHWC arrays and is traced inside the extractor's jit; grid sizes are
static (they depend only on the frame size).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dns_jax.layers import l2_normalize  # noqa: F401  (re-exported: the features use the one definition)

# Max-pool kernel per ResNet stage (layer1..layer4); the stride is ceil(kernel / 2), no padding.
STAGE_KERNELS = (28, 14, 6, 3)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.0, 117.0, 123.0)


def imagenet_normalize(frames):
    """uint8/float RGB `[N, H, W, 3]` -> float32 `(x / 255 - mean) / std` (the DnS VideoNormalizer,
    same operation order, so float32 results agree bit for bit)."""
    x = jnp.asarray(frames).astype(jnp.float32) / jnp.float32(255.0)
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def caffe_bgr_normalize(frames):
    """uint8/float RGB `[N, H, W, 3]` -> float32 BGR minus the Caffe mean [104, 117, 123] (0-255 scale),
    the input convention of Caffe-trained ResNets such as open_nsfw."""
    x = jnp.asarray(frames).astype(jnp.float32)[..., ::-1]
    return x - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)


NORMALIZERS = {"imagenet": imagenet_normalize, "caffe_bgr": caffe_bgr_normalize}


def region_grid(hw: Sequence[int], kernel: int) -> tuple:
    """Region grid `(rows, cols)` of a stage map of size `hw` pooled with `kernel` (floor mode)."""
    stride = math.ceil(kernel / 2)
    grid = tuple((s - kernel) // stride + 1 for s in hw)
    if min(grid) < 1:
        raise ValueError(f"a {hw[0]}x{hw[1]} stage map is smaller than its region kernel {kernel}: "
                         "frames are too small for L3-iMAC (use at least 224 pixels per side)")
    return grid


def _adaptive_bounds(size_in: int, size_out: int):
    """torch adaptive pooling bins: [floor(i * in / out), ceil((i + 1) * in / out))."""
    return [((i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)) for i in range(size_out)]


def adaptive_max_pool(x, out_hw: Sequence[int]):
    """torch `adaptive_max_pool2d` on NHWC `x: [N, H, W, C]` -> `[N, *out_hw, C]` (static loops; the
    grids here have at most a few dozen cells)."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(out_hw):
        return x
    rows = []
    for r0, r1 in _adaptive_bounds(h, out_hw[0]):
        cols = [jnp.max(x[:, r0:r1, c0:c1, :], axis=(1, 2)) for c0, c1 in _adaptive_bounds(w, out_hw[1])]
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def l3_imac(stages: Sequence, kernels: Sequence[int] = STAGE_KERNELS):
    """L3-iMAC region vectors from the stage outputs `[N, H_i, W_i, C_i]` -> `[N, R, sum(C_i)]`.

    Per stage: max-pool (kernel k, stride ceil(k/2), no padding), L2 over channels; then every stage
    is adaptive-max-pooled to the last stage's grid (DnS; a no-op when the grids already agree, as
    at 224x224) and L2-normalised again; channels are concatenated, the grid flattened row-major
    into `R = rows * cols` regions, and each region vector L2-normalised.
    """
    if len(stages) != len(kernels):
        raise ValueError(f"{len(stages)} stage maps but {len(kernels)} region kernels")
    pooled = []
    for x, k in zip(stages, kernels):
        region_grid(x.shape[1:3], k)  # validates the size with a readable message
        s = math.ceil(k / 2)
        pooled.append(l2_normalize(nn.max_pool(x, (k, k), strides=(s, s), padding="VALID")))
    grid = pooled[-1].shape[1:3]
    pooled = [l2_normalize(adaptive_max_pool(p, grid)) for p in pooled]
    x = jnp.concatenate(pooled, axis=-1)
    x = x.reshape(x.shape[0], grid[0] * grid[1], x.shape[-1])
    return l2_normalize(x)


__all__ = ["STAGE_KERNELS", "IMAGENET_MEAN", "IMAGENET_STD", "CAFFE_BGR_MEAN", "NORMALIZERS",
           "imagenet_normalize", "caffe_bgr_normalize", "l2_normalize", "region_grid",
           "adaptive_max_pool", "l3_imac"]

