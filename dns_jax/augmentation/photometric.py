"""Colour and filter operations on uint8 frames `[..., H, W, 3]`, with torchvision's tensor
semantics (float math, truncation to uint8 in `_blend`) unless noted. Per-image statistics
(contrast mean, autocontrast range, equalize histogram) are taken per frame."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .spatial import to_float, to_uint8

_GRAY = (0.2989, 0.587, 0.114)   # torchvision rgb_to_grayscale


def _blend(img: jax.Array, other: jax.Array, factor) -> jax.Array:
    """torchvision `_blend`: factor * img + (1 - factor) * other, clamped, truncated to uint8."""
    out = factor * to_float(img) + (1.0 - factor) * other
    return jnp.clip(out, 0, 255).astype(jnp.uint8)


def grayscale(frames: jax.Array) -> jax.Array:
    """Luma `[..., H, W, 1]`, truncated to uint8 like torchvision."""
    x = to_float(frames)
    gray = _GRAY[0] * x[..., 0] + _GRAY[1] * x[..., 1] + _GRAY[2] * x[..., 2]
    return gray.astype(jnp.uint8)[..., None]


def brightness(frames: jax.Array, factor) -> jax.Array:
    return _blend(frames, 0.0, factor)


def saturation(frames: jax.Array, factor) -> jax.Array:
    return _blend(frames, to_float(grayscale(frames)), factor)


def contrast(frames: jax.Array, factor) -> jax.Array:
    mean = jnp.mean(to_float(grayscale(frames)), axis=(-3, -2, -1), keepdims=True)
    return _blend(frames, mean, factor)


def sharpness(frames: jax.Array, factor) -> jax.Array:
    """Blend with a 3x3 smoothed copy (centre weight 5, others 1, /13); borders stay sharp."""
    height, width = frames.shape[-3], frames.shape[-2]
    if height <= 2 or width <= 2:
        return frames
    x = to_float(frames)
    acc = 4.0 * x[..., 1:-1, 1:-1, :]
    for dy in range(3):
        for dx in range(3):
            acc = acc + x[..., dy:height - 2 + dy, dx:width - 2 + dx, :]
    smooth = x.at[..., 1:-1, 1:-1, :].set(jnp.round(acc / 13.0))
    return _blend(frames, smooth, factor)


def posterize(frames: jax.Array, bits) -> jax.Array:
    """Keep the `bits` most significant bits of every channel."""
    mask = (256 - jnp.left_shift(1, 8 - jnp.asarray(bits, jnp.int32))).astype(jnp.uint8)
    return jnp.bitwise_and(frames, mask)


def solarize(frames: jax.Array, threshold) -> jax.Array:
    """Invert the pixels at or above `threshold`."""
    return jnp.where(to_float(frames) >= threshold, 255 - frames, frames)


def autocontrast(frames: jax.Array) -> jax.Array:
    """Stretch every channel of every frame to [0, 255] (flat channels unchanged)."""
    x = to_float(frames)
    lo = jnp.min(x, axis=(-3, -2), keepdims=True)
    hi = jnp.max(x, axis=(-3, -2), keepdims=True)
    flat = hi == lo
    scale = jnp.where(flat, 1.0, 255.0 / jnp.where(flat, 1.0, hi - lo))
    lo = jnp.where(flat, 0.0, lo)
    return jnp.clip((x - lo) * scale, 0, 255).astype(jnp.uint8)


def _equalize_channel(values: jax.Array) -> jax.Array:
    """torchvision `_scale_channel` on one flat uint8 channel."""
    hist = jnp.bincount(values.astype(jnp.int32), length=256)
    last = 255 - jnp.argmax(hist[::-1] > 0)
    step = (values.size - hist[last]) // 255
    safe = jnp.maximum(step, 1)
    lut = (jnp.cumsum(hist) + safe // 2) // safe
    lut = jnp.clip(jnp.concatenate([jnp.zeros(1, lut.dtype), lut[:-1]]), 0, 255).astype(jnp.uint8)
    return jnp.where(step == 0, values, lut[values.astype(jnp.int32)])


def equalize(frames: jax.Array) -> jax.Array:
    """Histogram-equalise every channel of every frame."""
    *lead, height, width, channels = frames.shape
    flat = jnp.moveaxis(frames.reshape(-1, height * width, channels), -1, 1)   # [N, C, HW]
    out = jax.vmap(jax.vmap(_equalize_channel))(flat)
    return jnp.moveaxis(out, 1, -1).reshape(frames.shape)


def blur_taps(max_sigma: float) -> int:
    """Static half-width of a Gaussian kernel covering 3 sigma of the largest radius."""
    return max(1, int(math.ceil(3.0 * max_sigma)))


def _blur_matrix(size: int, kernel: jax.Array, taps: int) -> jax.Array:
    """[size, size] 1-D convolution with `kernel` (2 * taps + 1 weights), edges replicated."""
    src = jnp.clip(jnp.arange(size)[:, None] + jnp.arange(-taps, taps + 1)[None, :], 0, size - 1)
    return jnp.einsum("k,okc->oc", kernel, jax.nn.one_hot(src, size, dtype=jnp.float32))


def gaussian_blur(frames: jax.Array, sigma, taps: int) -> jax.Array:
    """Separable Gaussian blur (standard deviation `sigma` px, kernel half-width `taps`),
    edge pixels replicated. Stands in for PIL's GaussianBlur(radius=sigma)."""
    offsets = jnp.arange(-taps, taps + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
    kernel = kernel / kernel.sum()
    rows = _blur_matrix(frames.shape[-3], kernel, taps)
    cols = _blur_matrix(frames.shape[-2], kernel, taps)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,...hwc->...owc", rows, to_float(frames), precision=hi)
    return to_uint8(jnp.einsum("pw,...owc->...opc", cols, x, precision=hi))
