"""Affine warps with nearest-neighbour sampling and zero fill, in torchvision's conventions
(`F.affine` / `F.rotate` on tensors): shear, translate, rotate. Frames are `[..., H, W, C]`;
angles in degrees may be traced values."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def inverse_affine(center, angle, translate, shear) -> jax.Array:
    """torchvision `_get_inverse_affine_matrix` (scale 1): the [2, 3] map from output pixel
    centres to input ones, both relative to the image centre."""
    rot = jnp.deg2rad(angle)
    sx, sy = jnp.deg2rad(shear[0]), jnp.deg2rad(shear[1])
    cx, cy = center
    tx, ty = translate
    a = jnp.cos(rot - sy) / jnp.cos(sy)
    b = -jnp.cos(rot - sy) * jnp.tan(sx) / jnp.cos(sy) - jnp.sin(rot)
    c = jnp.sin(rot - sy) / jnp.cos(sy)
    d = -jnp.sin(rot - sy) * jnp.tan(sx) / jnp.cos(sy) + jnp.cos(rot)
    m00, m01, m10, m11 = d, -b, -c, a
    m02 = m00 * (-cx - tx) + m01 * (-cy - ty) + cx
    m12 = m10 * (-cx - tx) + m11 * (-cy - ty) + cy
    return jnp.stack([jnp.stack([m00, m01, m02]), jnp.stack([m10, m11, m12])]).astype(jnp.float32)


def warp_nearest(frames: jax.Array, matrix: jax.Array) -> jax.Array:
    """Sample every output pixel at `matrix @ (x, y, 1)` (centre-relative), nearest pixel
    (round half to even, as grid_sample), zero outside the input."""
    height, width = frames.shape[-3], frames.shape[-2]
    x = jnp.arange(width, dtype=jnp.float32) - width * 0.5 + 0.5
    y = jnp.arange(height, dtype=jnp.float32) - height * 0.5 + 0.5
    yy, xx = jnp.meshgrid(y, x, indexing="ij")
    col = jnp.round(matrix[0, 0] * xx + matrix[0, 1] * yy + matrix[0, 2] + width * 0.5 - 0.5)
    row = jnp.round(matrix[1, 0] * xx + matrix[1, 1] * yy + matrix[1, 2] + height * 0.5 - 0.5)
    valid = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    rows = jnp.clip(row, 0, height - 1).astype(jnp.int32)
    cols = jnp.clip(col, 0, width - 1).astype(jnp.int32)
    picked = frames[..., rows, cols, :]
    return jnp.where(valid[..., None], picked, jnp.zeros((), frames.dtype))


def _corner(frames: jax.Array):
    """torchvision's `center=[0, 0]` (the top-left corner) in centre-relative coordinates."""
    return -frames.shape[-2] * 0.5, -frames.shape[-3] * 0.5


def shear_x(frames: jax.Array, factor) -> jax.Array:
    """x' = x - factor * y about the top-left corner (RandAugment ShearX)."""
    angle = jnp.rad2deg(jnp.arctan(factor))
    return warp_nearest(frames, inverse_affine(_corner(frames), 0.0, (0.0, 0.0), (angle, 0.0)))


def shear_y(frames: jax.Array, factor) -> jax.Array:
    """Vertical shear by `factor` about the top-left corner (RandAugment ShearY)."""
    angle = jnp.rad2deg(jnp.arctan(factor))
    return warp_nearest(frames, inverse_affine(_corner(frames), 0.0, (0.0, 0.0), (0.0, angle)))


def translate(frames: jax.Array, dx, dy) -> jax.Array:
    """Move the content by (dx, dy) pixels (right, down); uncovered pixels are zero."""
    return warp_nearest(frames, inverse_affine((0.0, 0.0), 0.0, (dx, dy), (0.0, 0.0)))


def rotate(frames: jax.Array, degrees) -> jax.Array:
    """Rotate counter-clockwise about the image centre (torchvision `F.rotate`)."""
    return warp_nearest(frames, inverse_affine((0.0, 0.0), -jnp.asarray(degrees, jnp.float32),
                                               (0.0, 0.0), (0.0, 0.0)))
