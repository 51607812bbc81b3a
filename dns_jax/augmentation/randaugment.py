"""RandAugment (torchvision `RandAugment(num_ops, magnitude, num_bins=31)`) on a clip: each of
`num_ops` rounds draws one operation uniformly from `ops` and, for signed ones, a random sign;
the same operation and magnitude apply to every frame of the clip (as torchvision on a
`[T, C, H, W]` tensor). Geometric operations use nearest sampling and zero fill."""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

from . import geometric, photometric
from .sampling import integer


def magnitudes(num_bins: int, magnitude: int, height: int, width: int) -> Dict[str, Tuple[float, bool]]:
    """name -> (magnitude at bin `magnitude` of torchvision's augmentation space, signed)."""
    def bin_of(lo: float, hi: float) -> float:
        return lo + (hi - lo) * magnitude / (num_bins - 1)
    posterize_bits = 8 - int(round(magnitude / ((num_bins - 1) / 4)))
    return {
        "identity": (0.0, False),
        "shear_x": (bin_of(0.0, 0.3), True),
        "shear_y": (bin_of(0.0, 0.3), True),
        "translate_x": (bin_of(0.0, 150.0 / 331.0 * width), True),
        "translate_y": (bin_of(0.0, 150.0 / 331.0 * height), True),
        "rotate": (bin_of(0.0, 30.0), True),
        "brightness": (bin_of(0.0, 0.9), True),
        "color": (bin_of(0.0, 0.9), True),
        "contrast": (bin_of(0.0, 0.9), True),
        "sharpness": (bin_of(0.0, 0.9), True),
        "posterize": (float(posterize_bits), False),
        "solarize": (bin_of(255.0, 0.0), False),
        "autocontrast": (0.0, False),
        "equalize": (0.0, False),
    }


def _trunc(v):
    """Python int(): toward zero."""
    return jnp.trunc(v)


_OPS: Dict[str, Callable] = {
    "identity": lambda x, m: x,
    "shear_x": geometric.shear_x,
    "shear_y": geometric.shear_y,
    "translate_x": lambda x, m: geometric.translate(x, _trunc(m), 0.0),
    "translate_y": lambda x, m: geometric.translate(x, 0.0, _trunc(m)),
    "rotate": geometric.rotate,
    "brightness": lambda x, m: photometric.brightness(x, 1.0 + m),
    "color": lambda x, m: photometric.saturation(x, 1.0 + m),
    "contrast": lambda x, m: photometric.contrast(x, 1.0 + m),
    "sharpness": lambda x, m: photometric.sharpness(x, 1.0 + m),
    "posterize": lambda x, m: photometric.posterize(x, m.astype(jnp.int32)),
    "solarize": photometric.solarize,
    "autocontrast": lambda x, m: photometric.autocontrast(x),
    "equalize": lambda x, m: photometric.equalize(x),
}


def apply_op(name: str, frames: jax.Array, magnitude) -> jax.Array:
    """One RandAugment operation with an explicit (signed) magnitude on uint8 `[..., H, W, 3]`."""
    if name not in _OPS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of {', '.join(_OPS)}")
    return _OPS[name](frames, jnp.asarray(magnitude, jnp.float32))


def rand_augment(key: jax.Array, frames: jax.Array, num_ops: int, magnitude: int,
                 ops: Sequence[str], num_bins: int = 31) -> jax.Array:
    """`[T, H, W, 3]` uint8 -> same, after `num_ops` random operations from `ops`."""
    table = magnitudes(num_bins, magnitude, frames.shape[-3], frames.shape[-2])
    branches = [lambda x, sign, n=name: apply_op(n, x, sign * table[n][0] if table[n][1] else table[n][0])
                for name in ops]
    def one_round(x, u):
        index = integer(u[0], 0, len(ops) - 1)
        sign = jnp.where(u[1] < 0.5, -1.0, 1.0)
        return jax.lax.switch(index, branches, x, sign), None
    frames, _ = jax.lax.scan(one_round, frames, jax.random.uniform(key, (num_ops, 2)))
    return frames
