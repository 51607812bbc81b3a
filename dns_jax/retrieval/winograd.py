"""Winograd minimal-filtering 3x3 convolutions (F(m x m, 3 x 3), m = 2 or 4) for the comparator CNN.

A VALID 3x3 cross-correlation of x [H + 2, W + 2, Cin] with g [3, 3, Cin, Cout] is computed on
output tiles of m x m cells: each (m + 2) x (m + 2) input window d (stride m) is transformed to
V = B^T d B, multiplied channel-wise with the transformed kernel U = G g G^T at each of the
(m + 2)^2 positions (one batched matrix product [P, tiles, Cin] @ [P, Cin, Cout]) and brought back
by Y = A^T M A. Multiplies per output cell and (Cin, Cout) pair: (m + 2)^2 / m^2 instead of 9
(2.25x fewer for m = 2, 4x for m = 4); the transforms are additions (and small constants for m = 4,
whose float32 error is a few times that of the direct sum; see docs/retrieval.md).

H and W need not be multiples of m: the input is zero-padded to whole tiles and the output cropped.
The kernel transform depends on the weights only: `transform_kernel` once per set of parameters.
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

# Interpolation points 0, 1, -1 (m = 2) and 0, 1, -1, 2, -2 (m = 4), plus the point at infinity.
_MATRICES = {
    2: dict(
        BT=[[1, 0, -1, 0],
            [0, 1, 1, 0],
            [0, -1, 1, 0],
            [0, 1, 0, -1]],
        G=[[1, 0, 0],
           [0.5, 0.5, 0.5],
           [0.5, -0.5, 0.5],
           [0, 0, 1]],
        AT=[[1, 1, 1, 0],
            [0, 1, -1, -1]]),
    4: dict(
        BT=[[4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1]],
        G=[[1 / 4, 0, 0],
           [-1 / 6, -1 / 6, -1 / 6],
           [-1 / 6, 1 / 6, -1 / 6],
           [1 / 24, 1 / 12, 1 / 6],
           [1 / 24, -1 / 12, 1 / 6],
           [0, 0, 1]],
        AT=[[1, 1, 1, 1, 1, 0],
            [0, 1, -1, 2, -2, 0],
            [0, 1, 1, 4, 4, 0],
            [0, 1, -1, 8, -8, 1]]),
}
TILES = tuple(_MATRICES)


def matrices(m: int):
    """(B^T [m+2, m+2], G [m+2, 3], A^T [m, m+2]) as float64 numpy arrays for F(m, 3)."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd tile must be one of {TILES}, got {m}")
    d = _MATRICES[m]
    return tuple(np.asarray(d[k], np.float64) for k in ("BT", "G", "AT"))


def transform_kernel(kernel, m: int) -> Array:
    """HWIO kernel [3, 3, Cin, Cout] -> U = G g G^T per position: [(m+2)^2, Cin, Cout] float32
    (computed in float64 on the host when the kernel is concrete)."""
    _, g, _ = matrices(m)
    if isinstance(kernel, jax.core.Tracer):
        u = jnp.einsum("ai,ijcd,bj->abcd", jnp.asarray(g, jnp.float32), kernel, jnp.asarray(g, jnp.float32),
                       precision=lax.Precision.HIGHEST)
    else:
        u = jnp.asarray(np.einsum("ai,ijcd,bj->abcd", g, np.asarray(kernel, np.float64), g), jnp.float32)
    return u.reshape((m + 2) ** 2, *u.shape[2:])


def _combine(coeffs, terms):
    """sum_k coeffs[k] * terms[k], skipping zero coefficients and multiplying by +-1 as adds."""
    out = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        term = t if c == 1 else (-t if c == -1 else t * np.float32(c))
        out = term if out is None else out + term
    return out


def _input_tiles(xp: Array, m: int, nth: int, ntw: int) -> Array:
    """Padded input [(nth*m) + 2, (ntw*m) + 2, C] -> V = B^T d B for every tile: [(m+2)^2, nth*ntw, C]."""
    bt, _, _ = matrices(m)
    n = m + 2
    c = xp.shape[-1]
    rows = [lax.slice(xp, (u, 0, 0), (u + m * (nth - 1) + 1, xp.shape[1], c), (m, 1, 1)) for u in range(n)]
    out = []
    for a in range(n):
        ra = _combine(bt[a], rows)                                        # [nth, W + 2, C]
        cols = [lax.slice(ra, (0, v, 0), (nth, v + m * (ntw - 1) + 1, c), (1, m, 1)) for v in range(n)]
        for b in range(n):
            out.append(_combine(bt[b], cols).reshape(nth * ntw, c))
    return jnp.stack(out)


def _output_tiles(mm: Array, m: int, nth: int, ntw: int):
    """M [(m+2)^2, nth*ntw, C] -> Y = A^T M A as a nested list y[i][j] of [nth, ntw, C]."""
    _, _, at = matrices(m)
    n = m + 2
    c = mm.shape[-1]
    mm = mm.reshape(n, n, nth, ntw, c)
    rows = [_combine(at[i], [mm[a] for a in range(n)]) for i in range(m)]     # [n(b), nth, ntw, C]
    return [[_combine(at[j], [r[b] for b in range(n)]) for j in range(m)] for r in rows]


def _tile_counts(h: int, w: int, m: int):
    return -(-h // m), -(-w // m)


def _products(x: Array, u: Array, m: int, precision):
    """Padded input x [H + 2, W + 2, Cin] -> (M [(m+2)^2, tiles, Cout], nth, ntw, H, W)."""
    h, w = x.shape[0] - 2, x.shape[1] - 2
    nth, ntw = _tile_counts(h, w, m)
    x = jnp.pad(x, ((0, nth * m - h), (0, ntw * m - w), (0, 0)))
    v = _input_tiles(x, m, nth, ntw)                                      # [P, T, Cin]
    mm = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision)   # [P, T, Cout]
    return mm, nth, ntw, h, w


def conv3x3(x: Array, u: Array, bias: Array, m: int, precision=None) -> Array:
    """VALID 3x3 convolution + bias: x [H + 2, W + 2, Cin], u = transform_kernel(kernel, m),
    bias [Cout] -> [H, W, Cout] (equal to lax.conv_general_dilated to float rounding)."""
    mm, nth, ntw, h, w = _products(x, u, m, precision)
    y = _output_tiles(mm, m, nth, ntw)
    y = jnp.stack([jnp.stack(r, axis=2) for r in y], axis=1)              # [nth, m, ntw, m, C]
    y = y.reshape(nth * m, ntw * m, -1)[:h, :w]
    return y + bias


def conv3x3_relu_pool(x: Array, u: Array, bias: Array, m: int, precision=None) -> Array:
    """relu(max_pool_2x2(conv3x3(x) + bias)) without the full-resolution output: the 2x2 pooling
    windows lie inside the m x m output tiles (m even), so each is reduced from the tile's cells.
    x [H + 2, W + 2, Cin] -> [H // 2, W // 2, Cout] (a last odd row/column is dropped, as by a
    VALID max-pool)."""
    mm, nth, ntw, h, w = _products(x, u, m, precision)
    y = _output_tiles(mm, m, nth, ntw)
    half = m // 2
    pooled = [[jnp.maximum(jnp.maximum(y[2 * i][2 * j], y[2 * i][2 * j + 1]),
                           jnp.maximum(y[2 * i + 1][2 * j], y[2 * i + 1][2 * j + 1]))
               for j in range(half)] for i in range(half)]
    if half == 1:
        p = pooled[0][0]
    else:
        p = jnp.stack([jnp.stack(r, axis=2) for r in pooled], axis=1)     # [nth, half, ntw, half, C]
        p = p.reshape(nth * half, ntw * half, -1)
    return jax.nn.relu(p[:h // 2, :w // 2] + bias)


def with_transformed(params: Dict[str, Dict[str, Array]], tiles: Dict[str, int]) -> Dict[str, Dict[str, Array]]:
    """Comparator params with each layer name of `tiles` given its transformed kernel under the key
    f'winograd{m}' (computed once, in float64, instead of in every kernel call); a new dict."""
    out = dict(params)
    for name, m in tiles.items():
        if m:
            out[name] = dict(params[name], **{f"winograd{m}": transform_kernel(params[name]["kernel"], m)})
    return out
