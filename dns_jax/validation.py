"""Input checks with clear messages, run before anything reaches XLA.

Shape checks work on traced arrays too; value checks (empty, NaN/inf) need concrete arrays and are
done by the user-facing wrappers on host data.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


class FeatureError(ValueError):
    """Video features that a network cannot take (wrong rank or size, empty, NaN)."""


class FeatureWarning(UserWarning):
    """Video features a network takes but that are almost surely not region features (integer
    values, all zero); the message names the video."""


def add_batch_axis(x, mask=None):
    """[T, R, D] -> [1, T, R, D] (mask [T] -> [1, T]); [N, T, R, D] passes. Other ranks: FeatureError."""
    if x.ndim == 4:
        return x, mask
    if x.ndim == 3:
        return x[None], (None if mask is None else mask[None])
    raise FeatureError(
        f"video features must be [T, R, D] or [N, T, R, D] (frames, regions, dims); got shape {tuple(x.shape)}")


def check_video(x, dims: Optional[int] = None, name: str = "video", min_frames: int = 1) -> np.ndarray:
    """Validate one video's region features and return them as float32 [T, R, D].

    A [T, D] array (one region per frame) becomes [T, 1, D], as the official loader does.
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise FeatureError(f"{name}: expected a float array of region features, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3:
        raise FeatureError(f"{name}: expected features of shape [T, R, D] (frames, regions, dims), "
                           f"got shape {arr.shape}")
    t, r, d = arr.shape
    if t < min_frames or r == 0:
        raise FeatureError(f"{name}: empty video (shape {arr.shape}); at least {min_frames} frame(s) needed")
    if dims is not None and d != dims:
        raise FeatureError(f"{name}: expected {dims}-d region features, got {d}-d (shape {arr.shape})")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = np.unique(np.nonzero(~np.isfinite(arr))[0])
        raise FeatureError(f"{name}: features contain NaN or inf in frame(s) {bad[:10].tolist()}"
                           f"{' ...' if bad.size > 10 else ''}")
    return arr


def repeat_to_min_frames(x: np.ndarray, min_frames: int = 4) -> np.ndarray:
    """Concatenate a video with itself until it has at least `min_frames` frames (official rule)."""
    while x.shape[0] < min_frames:
        x = np.concatenate([x, x], axis=0)
    return x


def check_batch(x, mask=None, dims: Optional[int] = None, name: str = "batch"):
    """Validate a padded batch [N, T, R, D] with an optional frame mask [N, T]; returns float32 arrays."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4:
        raise FeatureError(f"{name}: expected a padded batch [N, T, R, D], got shape {arr.shape}")
    if dims is not None and arr.shape[-1] != dims:
        raise FeatureError(f"{name}: expected {dims}-d region features, got {arr.shape[-1]}-d (shape {arr.shape})")
    if mask is None:
        return arr, None
    m = np.asarray(mask, dtype=np.float32)
    if m.shape != arr.shape[:2]:
        raise FeatureError(f"{name}: mask must be [N, T] = {arr.shape[:2]}, got {m.shape}")
    return arr, m
