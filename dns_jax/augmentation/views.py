"""The two S2VS views of a clip and the batch assembly (official `WeakAugmentations`,
`StrongAugmentations`, `TrainDataset.collate_fn`). Clips are uint8 `[T, H, W, 3]` (the recipe
feeds T = 2 * window_size frames); views are `[window_size, frame_size, frame_size, 3]`.
`cfg` is an augmentation config (see config.py), read at trace time: close over it
(`jax.jit(functools.partial(strong_view, cfg=cfg))`)."""
from __future__ import annotations

from typing import Any, Tuple

import jax
import jax.numpy as jnp

from . import overlay, photometric, temporal
from .config import validate_augmentation_config
from .mixing import video_in_video
from .overlay_bank import OverlayBank
from .randaugment import rand_augment
from .sampling import between
from .spatial import random_hflip, random_resized_crop
from .targets import similarity_targets


def _window(key: jax.Array, video: jax.Array, plan: temporal.TemporalPlan, window: int) -> jax.Array:
    k_win, k_fill = jax.random.split(key)
    return temporal.gather_frames(k_fill, video, temporal.window_plan(k_win, plan, window))


def weak_view(key: jax.Array, video: jax.Array, cfg: Any = None) -> jax.Array:
    """Random window of `window_size` frames, random resized crop (scale 0.8-1), flip."""
    c = validate_augmentation_config(cfg)
    k_time, k_crop, k_flip = jax.random.split(key, 3)
    frames = _window(k_time, video, temporal.identity_plan(video.shape[0]), c.window_size)
    frames = random_resized_crop(k_crop, frames, c.frame_size, c.weak.crop_scale, c.weak.crop_ratio)
    return random_hflip(k_flip, frames, c.weak.p_flip)


def frame_edits(key: jax.Array, frame: jax.Array, bank: OverlayBank, frame_cfg) -> jax.Array:
    """One frame `[H, W, 3]`: text overlay, emoji overlay, Gaussian blur, each with its own
    probability (official FrameTransforms order)."""
    k_text, k_emoji, k_draw = jax.random.split(key, 3)
    u = jax.random.uniform(k_draw, (4,))          # text?, emoji?, blur?, blur radius
    hw = frame.shape[:2]
    size, opacity = frame_cfg.overlay_size, frame_cfg.overlay_opacity
    text = overlay.apply_text(frame, bank, overlay.text_params(k_text, bank, hw, size, opacity))
    frame = jnp.where(u[0] < frame_cfg.p_text, text, frame)
    emoji = overlay.apply_emoji(frame, bank, overlay.emoji_params(k_emoji, bank, hw, size, opacity))
    frame = jnp.where(u[1] < frame_cfg.p_emoji, emoji, frame)
    lo, hi = frame_cfg.blur_radius
    blurred = photometric.gaussian_blur(frame, between(u[3], lo, hi), photometric.blur_taps(hi))
    return jnp.where(u[2] < frame_cfg.p_blur, blurred, frame)


def strong_view(key: jax.Array, video: jax.Array, cfg: Any = None, bank: OverlayBank = None) -> jax.Array:
    """Temporal edit, random window, random resized crop (scale 0.5-1), flip, RandAugment,
    per-frame overlays and blur; groups not in `strong.enabled` are skipped. `bank` is needed
    when 'frame' is enabled."""
    c = validate_augmentation_config(cfg)
    s = c.strong
    if "frame" in s.enabled and bank is None:
        raise ValueError("strong_view with 'frame' augmentations needs an overlay bank "
                         "(dns_jax.augmentation.build_overlay_bank())")
    k_edit, k_time, k_crop, k_flip, k_ra, k_frame = jax.random.split(key, 6)
    num_frames = video.shape[0]
    if "temporal" in s.enabled:
        plan = temporal.random_temporal_edit(k_edit, num_frames, s.temporal)
    else:
        plan = temporal.identity_plan(num_frames)
    frames = _window(k_time, video, plan, c.window_size)
    frames = random_resized_crop(k_crop, frames, c.frame_size, s.crop_scale, s.crop_ratio)
    frames = random_hflip(k_flip, frames, s.p_flip)
    if "global" in s.enabled:
        ra = s.randaugment
        frames = rand_augment(k_ra, frames, ra.num_ops, ra.magnitude, ra.ops, ra.num_bins)
    if "frame" in s.enabled:
        keys = jax.random.split(k_frame, frames.shape[0])
        frames = jax.vmap(lambda k, f: frame_edits(k, f, bank, s.frame))(keys, frames)
    return frames


def mix_strong_views(key: jax.Array, strong: jax.Array, cfg: Any = None) -> Tuple[jax.Array, jax.Array]:
    """Video-in-video over the batch of strong views `[B, T, S, S, 3]` when enabled
    -> (views, viv matrix [B, B]: identity plus lambda at [donor, host])."""
    c = validate_augmentation_config(cfg)
    if "video_in_video" not in c.strong.enabled:
        return strong, jnp.eye(strong.shape[0], dtype=jnp.float32)
    v = c.strong.video_in_video
    return video_in_video(key, strong, v.p, v.lam)


def augment_views(key: jax.Array, videos: jax.Array, cfg: Any = None,
                  bank: OverlayBank = None) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """`videos [B, T, H, W, 3]` uint8 -> (weak [B, W, S, S, 3], strong [B, W, S, S, 3],
    viv [B, B]): the views and the video-in-video matrix they were mixed with (identity plus
    lambda at [donor, host]), for callers that keep the sources (S2VS feature banks)."""
    c = validate_augmentation_config(cfg)
    k_weak, k_strong, k_mix = jax.random.split(key, 3)
    batch = videos.shape[0]
    # lax.map, not vmap: one video at a time keeps RandAugment's and the temporal edit's
    # lax.switch a real branch (vmap would evaluate every branch) and compiles one view.
    weak = jax.lax.map(lambda a: weak_view(a[0], a[1], c), (jax.random.split(k_weak, batch), videos))
    strong = jax.lax.map(lambda a: strong_view(a[0], a[1], c, bank), (jax.random.split(k_strong, batch), videos))
    strong, viv = mix_strong_views(k_mix, strong, c)
    return weak, strong, viv


def augment_batch(key: jax.Array, videos: jax.Array, cfg: Any = None,
                  bank: OverlayBank = None) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """`videos [B, T, H, W, 3]` uint8 -> (weak [B, W, S, S, 3], strong [B, W, S, S, 3],
    labels [2B, 2B]) where the model sees `concat([weak, strong])` (row B + i: strong view i)."""
    c = validate_augmentation_config(cfg)
    weak, strong, viv = augment_views(key, videos, c, bank)
    return weak, strong, similarity_targets(viv, c.labels)
