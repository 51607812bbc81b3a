"""Spatial resampling of frames: random resized crop, horizontal flip, pasting a resized image
into a box. Frames are `[..., H, W, C]`; boxes are int32 `[top, left, height, width]`."""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from .sampling import between, integer

_CROP_ATTEMPTS = 10   # torchvision RandomResizedCrop.get_params


def to_float(frames: jax.Array) -> jax.Array:
    return frames.astype(jnp.float32)


def to_uint8(frames: jax.Array) -> jax.Array:
    """Round and saturate float pixels to uint8."""
    return jnp.clip(jnp.round(frames), 0, 255).astype(jnp.uint8)


def _fallback_box(height: int, width: int, ratio: Sequence[float]) -> tuple:
    """torchvision's central crop when no random attempt fits (static shapes, so Python)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_box(key: jax.Array, height: int, width: int, scale: Sequence[float],
             ratio: Sequence[float]) -> jax.Array:
    """torchvision `RandomResizedCrop.get_params`: area fraction ~ U(scale), log aspect ~
    U(log ratio), first of 10 attempts that fits, else a central crop. -> int32 [4]."""
    u = jax.random.uniform(key, (2 * _CROP_ATTEMPTS + 2,))
    area = float(height * width)
    target = area * between(u[:_CROP_ATTEMPTS], scale[0], scale[1])
    aspect = jnp.exp(between(u[_CROP_ATTEMPTS:2 * _CROP_ATTEMPTS], math.log(ratio[0]), math.log(ratio[1])))
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits)
    h, w = h[first], w[first]
    top = integer(u[-2], 0, height - h)
    left = integer(u[-1], 0, width - w)
    random_box = jnp.stack([top, left, h, w])
    return jnp.where(fits.any(), random_box, jnp.asarray(_fallback_box(height, width, ratio), jnp.int32))


def _triangle_weights(in_size: int, out_size: int, start, length, dst_start, dst_length) -> jax.Array:
    """[out, in] bilinear weights mapping the input span [start, start + length) onto the output
    span [dst_start, dst_start + dst_length) (half-pixel centres). The triangle widens by the
    shrink factor (antialiasing, as PIL / torchvision `antialias=True`), only input pixels of the
    span contribute, rows are normalised, and outputs outside the span get zero rows."""
    scale = dst_length / length
    pos = (jnp.arange(out_size, dtype=jnp.float32) + 0.5 - dst_start) / scale + start
    support = jnp.maximum(1.0 / scale, 1.0)
    idx = jnp.arange(in_size, dtype=jnp.float32)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(idx[None, :] + 0.5 - pos[:, None]) / support)
    w = w * ((idx >= start) & (idx < start + length))[None, :]
    total = w.sum(axis=1, keepdims=True)
    inside = (pos >= start) & (pos <= start + length) & (total[:, 0] > 0)
    return jnp.where(inside[:, None], w / jnp.where(total > 0, total, 1.0), 0.0)


def resample_box(image: jax.Array, out_hw: Sequence[int], src_box: jax.Array,
                 dst_box: jax.Array) -> jax.Array:
    """Map `image[..., src_box, :]` onto `dst_box` of a zero `[..., *out_hw, C]` float canvas
    (bilinear, antialiased when shrinking). Boxes (top, left, height, width) may be traced."""
    src = jnp.asarray(src_box, jnp.float32)
    dst = jnp.asarray(dst_box, jnp.float32)
    rows = _triangle_weights(image.shape[-3], out_hw[0], src[0], src[2], dst[0], dst[2])
    cols = _triangle_weights(image.shape[-2], out_hw[1], src[1], src[3], dst[1], dst[3])
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,...hwc->...owc", rows, to_float(image), precision=hi)
    return jnp.einsum("pw,...owc->...opc", cols, x, precision=hi)


def resized_crop(frames: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """Crop `box` from every frame of `[..., H, W, C]` uint8 and resize it to size x size."""
    out = resample_box(frames, (size, size), box, jnp.array([0, 0, size, size]))
    return to_uint8(out)


def random_resized_crop(key: jax.Array, frames: jax.Array, size: int, scale: Sequence[float],
                        ratio: Sequence[float]) -> jax.Array:
    """One crop box for the whole clip `[T, H, W, C]` -> `[T, size, size, C]` uint8."""
    box = crop_box(key, frames.shape[-3], frames.shape[-2], scale, ratio)
    return resized_crop(frames, box, size)


def hflip(frames: jax.Array) -> jax.Array:
    """Mirror `[..., H, W, C]` left-right."""
    return jnp.flip(frames, axis=-2)


def random_hflip(key: jax.Array, frames: jax.Array, p: float) -> jax.Array:
    """Mirror the whole clip with probability p."""
    return jnp.where(jax.random.uniform(key) < p, hflip(frames), frames)


def paste(canvas: jax.Array, image: jax.Array, box: jax.Array) -> jax.Array:
    """Replace `box` of `canvas [..., H, W, C]` uint8 by `image [..., h, w, C]` resized to it."""
    h, w = image.shape[-3], image.shape[-2]
    placed = resample_box(image, canvas.shape[-3:-1], jnp.array([0, 0, h, w]), box)
    rows = jnp.arange(canvas.shape[-3])[:, None]
    cols = jnp.arange(canvas.shape[-2])[None, :]
    inside = ((rows >= box[0]) & (rows < box[0] + box[2]) & (cols >= box[1]) & (cols < box[1] + box[3]))
    return jnp.where(inside[..., None], to_uint8(placed), canvas)
