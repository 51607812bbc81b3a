"""Text and emoji overlays on one uint8 frame `[H, W, 3]`, drawn from an `OverlayBank` and
alpha-blended (AugLy-style, as the official S2VS `OverlayTextTransform` /
`OverlayEmojiTransform`). Each overlay is `*_params(key, ...)` (the random draw) then
`apply_*(frame, bank, params)` (deterministic)."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from .overlay_bank import OverlayBank
from .sampling import between, integer
from .spatial import resample_box, to_float, to_uint8


class OverlayParams(NamedTuple):
    """One overlay: bank entry, box (float px), opacity, colour, and whether it is drawn."""
    index: jax.Array        # int32 [] bank entry
    top: jax.Array          # float32 []
    left: jax.Array         # float32 []
    height: jax.Array       # float32 [] rendered patch height
    width: jax.Array        # float32 [] visible width (text: the chosen characters)
    opacity: jax.Array      # float32 [] in the opacity range
    color: jax.Array        # float32 [3] text colour (unused by emoji)
    visible: jax.Array      # bool [] False: the frame is left as is


def blend(frame: jax.Array, color: jax.Array, alpha: jax.Array) -> jax.Array:
    """frame * (1 - alpha) + color * alpha, rounded to uint8 (alpha `[H, W, 1]` in [0, 1])."""
    return to_uint8(to_float(frame) * (1.0 - alpha) + color * alpha)


def text_params(key: jax.Array, bank: OverlayBank, frame_hw: Sequence[int],
                size_range: Sequence[float], opacity_range: Sequence[float]) -> OverlayParams:
    """Font size ~ U(size_range) * min(H, W); a string of 1..n characters, n the most that fit
    the width; top-left ~ U(0, 1) * (free space); opacity ~ U(opacity_range); colour uniform."""
    height, width = frame_hw
    u = jax.random.uniform(key, (9,))
    index = integer(u[0], 0, bank.text_alpha.shape[0] - 1)
    font = jnp.floor(min(height, width) * between(u[1], size_range[0], size_range[1]))
    scale = font / bank.text_size
    extent = jnp.asarray(bank.text_extent)[index] * scale
    max_len = jnp.sum(extent <= width)
    length = integer(u[2], 1, jnp.maximum(max_len, 1))
    text_w = extent[length - 1]
    text_h = bank.text_alpha.shape[1] * scale
    return OverlayParams(
        index=index,
        top=u[3] * jnp.maximum(height - text_h, 0.0),
        left=u[4] * jnp.maximum(width - text_w, 0.0),
        height=text_h, width=text_w,
        opacity=between(u[5], opacity_range[0], opacity_range[1]),
        color=integer(u[6:9], 0, 255).astype(jnp.float32),
        visible=(max_len > 0) & (text_h <= height) & (font >= 1))


def apply_text(frame: jax.Array, bank: OverlayBank, params: OverlayParams) -> jax.Array:
    """Blend the chosen text (its first characters, cut at `params.width`) into `frame`."""
    mask = jnp.asarray(bank.text_alpha)[params.index][..., None]                 # [Ht, Wt, 1]
    scale = params.height / mask.shape[0]
    src = jnp.array([0.0, 0.0, mask.shape[0], mask.shape[1]])
    dst = jnp.stack([params.top, params.left, params.height, mask.shape[1] * scale])
    coverage = resample_box(mask, frame.shape[:2], src, dst) / 255.0              # [H, W, 1]
    cols = jnp.arange(frame.shape[1], dtype=jnp.float32)[None, :, None]
    coverage = jnp.where(cols < params.left + params.width, coverage, 0.0)
    alpha = coverage * params.opacity * params.visible
    return blend(frame, params.color, alpha)


def emoji_params(key: jax.Array, bank: OverlayBank, frame_hw: Sequence[int],
                 size_range: Sequence[float], opacity_range: Sequence[float]) -> OverlayParams:
    """Side ~ U(size_range) * min(H, W) (integer px); integer top-left ~ U(0, 1) * (free
    space); opacity ~ U(opacity_range)."""
    height, width = frame_hw
    u = jax.random.uniform(key, (5,))
    side = jnp.floor(min(height, width) * between(u[1], size_range[0], size_range[1]))
    return OverlayParams(
        index=integer(u[0], 0, bank.emoji.shape[0] - 1),
        top=jnp.floor(u[2] * (height - side)),
        left=jnp.floor(u[3] * (width - side)),
        height=side, width=side,
        opacity=between(u[4], opacity_range[0], opacity_range[1]),
        color=jnp.zeros(3, jnp.float32),
        visible=side >= 1)


def apply_emoji(frame: jax.Array, bank: OverlayBank, params: OverlayParams) -> jax.Array:
    """Paste the chosen RGBA shape, resized to the box, with its alpha times the opacity."""
    patch = to_float(jnp.asarray(bank.emoji)[params.index])                      # [P, P, 4]
    alpha = patch[..., 3:] / 255.0
    premultiplied = jnp.concatenate([patch[..., :3] * alpha, alpha], axis=-1)
    src = jnp.array([0.0, 0.0, patch.shape[0], patch.shape[1]])
    dst = jnp.stack([params.top, params.left, params.height, params.width])
    placed = resample_box(premultiplied, frame.shape[:2], src, dst)              # [H, W, 4]
    a = placed[..., 3:] * params.opacity * params.visible
    rgb = placed[..., :3] / jnp.maximum(placed[..., 3:], 1e-6)
    return blend(frame, rgb, a)
