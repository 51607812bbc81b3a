"""Jitted kernels: frame-to-frame similarity of a whole canvas, the comparator CNN over (tiles of)
it with exact refills, and the per-(query, target) Chamfer reductions. See layout.py for the canvas.

Memory: the region-pair tensor [Tq, R, R, Tt] is never held: the frame-to-frame matrix is built by
blocks of `row_block` x `col_block` frames (one block's [rb*R, cb*R] product at a time, reduced over
regions at once), so the working memory is the [H, W] matrix (4 bytes per frame pair) plus one
block. Packed FG-Bin codes ignore those blocks: their Hamming loop runs over blocks of
`packed_block` target frames and holds [H*R, block] distances (on accelerators, with one block per
canvas, [H*R, W]: 36 bytes per frame pair, still ~ Tq * Tt; the native CPU kernel of
dns_jax.native holds only its [H, W] output and ~40 KB per chunk of 128 x 64 frames); the CNN runs on tiles with a halo, so its activations (32-128 channels per cell) are bounded
by the tile size rather than by Tq * Tt.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp
from jax import lax

from dns_jax import native
from dns_jax.retrieval import winograd
from dns_jax.retrieval.layout import HALO, LEVELS

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Static configuration of one compiled kernel (hashable: it is a jit static argument)."""

    sim: str = "float"            # 'float' region features | 'packed' binary codes | 'given' f2f
    bits: int = 0                 # >0: divide the region dot products by `bits` (FG-Bin)
    symmetric: bool = False       # ViSiL symmetric Chamfer (region and video level)
    comparator: bool = True       # run the comparator CNN (False: ViSiL-f)
    padding: str = "zero"         # comparator padding: 'zero' (DnS) or 'replicate' (ViSiL)
    reduce: str = "chamfer"       # 'chamfer' (video similarity) or 'mean' (selector self-similarity)
    clip: bool = True             # hard tanh on the comparator output
    precision: Any = None
    row_block: int = 0            # f2f blocking (frames); 0 = whole axis
    col_block: int = 0
    tile_rows: int = 0            # CNN tile size (full-resolution frames, multiple of 4); 0 = untiled
    tile_cols: int = 0
    tile_batch: int = 1           # tiles processed together (vmapped) by the CNN
    fuse_conv1: bool = True       # conv1 + ReLU + max-pool as one elementwise loop (see below)
    popcount: str = "lax"         # packed codes: 'lax' (lax.population_count), 'csa', 'swar', 'ffi' (see below)
                                  # or 'ffi' (dns_jax.native's AVX2 CPU kernel)
    packed_block: int = 0         # packed codes: target frames per elementwise block (0 = all)
    kernel_threads: int = 0       # popcount='ffi': threads of the native kernel (0 = XLA's CPU pool)
    winograd: tuple = (0, 0)      # conv2, conv3: Winograd F(m x m, 3 x 3) output tile m (2 or 4; conv2
                                  # with its ReLU + max-pool fused), 0 = XLA's direct convolution


# ------------------------------------------------------------------------------------------------
# frame-to-frame similarity

def _f2f_float_block(q: Array, t: Array, spec: KernelSpec) -> Array:
    """q [h, R, D], t [w, R, D] -> [h, w]: max over target regions, mean over query regions."""
    h, r, d = q.shape
    w, rt, _ = t.shape
    s = jnp.dot(q.reshape(h * r, d), t.reshape(w * rt, d).T, precision=spec.precision)
    s = s.reshape(h, r, w, rt)
    out = jnp.mean(jnp.max(s, axis=3), axis=1)
    if spec.symmetric:
        out = (out + jnp.mean(jnp.max(s, axis=1), axis=2)) / 2
    if spec.bits:
        out = out / spec.bits
    return out


_M1, _M2, _M4 = 0x55555555, 0x33333333, 0x0F0F0F0F
_SWAR_PAIRS = 15      # word pairs summed per byte lane before widening (15 * 16 = 240 < 256)


def _nibble_counts(x: Array) -> Array:
    """uint32 -> the popcount of each 4-bit nibble (0..4) in place (two SWAR steps)."""
    x = x - ((x >> 1) & jnp.uint32(_M1))
    return (x & jnp.uint32(_M2)) + ((x >> 2) & jnp.uint32(_M2))


def _byte_lanes_to_count(acc: Array) -> Array:
    """uint32 holding four byte counts (each < 256) -> their sum."""
    acc = (acc & jnp.uint32(0x00FF00FF)) + ((acc >> 8) & jnp.uint32(0x00FF00FF))
    return (acc & jnp.uint32(0xFFFF)) + (acc >> 16)


def _carry_save(levels, k: int, word: Array) -> None:
    """Add a word of weight 2^k to `levels` (lists of pending words per weight), keeping at most two
    per weight: three words of one weight become their bitwise sum (same weight) and carry (next
    weight), a full adder in 5 operations."""
    levels[k].append(word)
    if len(levels[k]) == 3:
        a, b, c = levels[k]
        u = a ^ b
        levels[k] = [u ^ c]
        _carry_save(levels, k + 1, (a & b) | (u & c))


def _csa_count(words) -> Array:
    """Sum of the popcounts of up to 16 uint32 words (per element): carry-save adders reduce them
    to one word per weight 1, 2, 4, 8, 16 (about 4 operations per input word), then only those
    five words are counted (SWAR nibble counts, combined with their weights in byte lanes: at most
    16 * 8 = 128 per byte, so nothing overflows)."""
    assert 0 < len(words) <= 16
    levels = [[] for _ in range(6)]
    for w in words:
        _carry_save(levels, 0, w)
    for k in range(5):                                  # half adders: one word per weight
        if len(levels[k]) == 2:
            a, b = levels[k]
            levels[k] = [a ^ b]
            _carry_save(levels, k + 1, a & b)
    nib = [_nibble_counts(lv[0]) if lv else None for lv in levels[:5]]

    def pair(lo, hi):          # nibbles lo + 2 * hi (<= 12), widened to bytes
        if hi is not None:
            lo = (hi << 1) if lo is None else lo + (hi << 1)
        return None if lo is None else (lo & jnp.uint32(_M4)) + ((lo >> 4) & jnp.uint32(_M4))

    total = None
    for part, shift in ((pair(nib[0], nib[1]), 0), (pair(nib[2], nib[3]), 2), (pair(nib[4], None), 4)):
        if part is not None:
            part = part << shift if shift else part
            total = part if total is None else total + part
    return _byte_lanes_to_count(total)


def _hamming_words(qq: Array, tr: Array, popcount: str) -> Array:
    """Hamming distances of query codes qq [n, W] and target codes tr [W, c] (words along the
    leading axis) -> uint32 [n, c], as an elementwise expression (no reduction op).

    AVX2 has no vector popcount (XLA's popcount widens every word). 'csa' (the CPU default where
    dns_jax.native's faster kernel is not available) adds the
    XORed words with carry-save adders, 16 at a time, and counts five words per 16: ~8.6 vector
    operations per word, fewer than 'swar', which counts every word with shifts and masks,
    adds two words' nibble counts, widens to bytes and sums up to 15 word pairs per byte lane
    before the final widening (~11 per word). 'lax': lax.population_count per word."""
    nw = tr.shape[0]
    xor = lambda k: qq[:, k, None] ^ tr[k][None]
    if popcount == "csa":
        out = None
        for s in range(0, nw, 16):
            c = _csa_count([xor(k) for k in range(s, min(s + 16, nw))])
            out = c if out is None else out + c
        return out
    if popcount != "swar" or nw % 2:
        out = lax.population_count(xor(0))
        for k in range(1, nw):
            out = out + lax.population_count(xor(k))
        return out
    out, acc, pairs = None, None, 0
    for k in range(0, nw, 2):
        s = _nibble_counts(xor(k)) + _nibble_counts(xor(k + 1))          # nibbles <= 8
        s = (s & jnp.uint32(_M4)) + ((s >> 4) & jnp.uint32(_M4))         # bytes <= 16
        acc = s if acc is None else acc + s
        pairs += 1
        if pairs == _SWAR_PAIRS or k + 2 == nw:
            c = _byte_lanes_to_count(acc)
            out = c if out is None else out + c
            acc, pairs = None, 0
    return out


def _min_hamming_block(qq: Array, tb: Array, popcount: str) -> Array:
    """qq [n, W] query region codes, tb [W, Rt, c] target codes (words, regions, frames) ->
    int32 [n, c]: the minimum over the Rt target regions of the Hamming distance. One fused
    elementwise loop over [n, c]: the min over regions and the sum over words are unrolled, so
    XLA vectorises along the target frames instead of emitting a scalar reduction loop."""
    best = None
    for r in range(tb.shape[1]):
        h = _hamming_words(qq, tb[:, r], popcount)
        best = h if best is None else jnp.minimum(best, h)
    return best.astype(jnp.int32)


def _f2f_packed(q: Array, t: Array, spec: KernelSpec) -> Array:
    """Packed binary codes q [h, R, W] uint32, t [w, R, W] -> [h, w], identical to the float path
    on the +-1 codes: dot = bits - 2 * hamming (exact integers), max over target regions = bits -
    2 * min hamming, mean over query regions, / bits.

    The target codes are turned word-major ([W, R, w]) once, then processed by blocks of
    `spec.packed_block` frames (cache-sized on CPU; one block on accelerators). popcount='ffi':
    the native CPU kernel instead (same distances and float operations: equal to this loop for
    power-of-two `bits`, within a float32 ulp otherwise)."""
    if spec.popcount == "ffi":
        return native.min_hamming_similarity(q, t, spec.bits, threads=spec.kernel_threads)
    h, r, nw = q.shape
    w = t.shape[0]
    qq = q.reshape(h * r, nw)
    tt = jnp.transpose(t, (2, 1, 0))                                    # [W, Rt, w]

    def sims(tb):                                                       # [W, Rt, c] -> [h, c]
        best = _min_hamming_block(qq, tb, spec.popcount)
        if cb < w:   # keep the mean below a separate loop: fused into it, the min loop turns scalar
            best = lax.optimization_barrier(best)
        dot = (spec.bits - 2 * best).astype(jnp.float32).reshape(h, r, -1)
        return jnp.mean(dot, axis=1) / spec.bits

    cb = min(spec.packed_block or w, w)
    if cb == w:
        return sims(tt)
    nb = -(-w // cb)
    tt = jnp.pad(tt, ((0, 0), (0, 0), (0, nb * cb - w)))
    blocks = jnp.moveaxis(tt.reshape(nw, tt.shape[1], nb, cb), 2, 0)           # [nb, W, Rt, cb]
    out = lax.map(sims, blocks)                                                  # [nb, h, cb]
    return jnp.moveaxis(out, 0, 1).reshape(h, nb * cb)[:, :w]


def _blocks(x: Array, size: int):
    """Split the leading axis into full blocks [n, size, ...] and a remainder (or None)."""
    n = x.shape[0] // size
    full = x[:n * size].reshape((n, size) + x.shape[1:])
    rest = x[n * size:] if x.shape[0] > n * size else None
    return full, rest


def _map_blocks(fn, x: Array, size: int, axis: int) -> Array:
    """fn over blocks of `size` along x's leading axis (lax.map over the full blocks, one call for
    the remainder); the block results are concatenated along `axis` of fn's output."""
    full, rest = _blocks(x, size)
    parts = []
    if full.shape[0]:
        out = lax.map(fn, full)                                    # [n, ...]
        out = jnp.moveaxis(out, 0, axis)
        shape = out.shape[:axis] + (out.shape[axis] * out.shape[axis + 1],) + out.shape[axis + 2:]
        parts.append(out.reshape(shape))
    if rest is not None:
        parts.append(fn(rest))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def frame_to_frame_canvas(q: Array, t: Array, spec: KernelSpec, t_take=None) -> Array:
    """[H, R, .] x [W, R, .] -> [H, W], computed by blocks of row_block x col_block frames (the
    last block of each axis may be shorter: H and W need not be multiples of the blocks); packed
    codes by blocks of packed_block target frames instead (see _f2f_packed).

    `t_take` [W] int32: the target frames are t[t_take] (t: a resident array of frames), gathered
    block by block inside the column loop, so a block is copied while it is in cache and the
    gathered canvas never exists in memory (packed codes, 16x smaller, are gathered at once)."""
    if spec.sim == "packed":
        if t_take is not None:
            t = jnp.take(t, t_take, axis=0)
        return _f2f_packed(q, t, spec)       # elementwise blocks of its own; memory ~ H*R x W
    fn = functools.partial(_f2f_float_block, spec=spec)
    cols = t if t_take is None else t_take
    block = (lambda tj: tj) if t_take is None else (lambda ij: jnp.take(t, ij, axis=0))
    hh, ww = q.shape[0], cols.shape[0]
    rb = min(spec.row_block or hh, hh)
    cb = min(spec.col_block or ww, ww)
    if rb == hh and cb == ww:
        return fn(q, block(cols))
    rows = lambda qi: _map_blocks(lambda tj: fn(qi, block(tj)), cols, cb, axis=1) if cb < ww else fn(qi, block(cols))
    return _map_blocks(rows, q, rb, axis=0) if rb < hh else rows(q)


frame_to_frame_dense = jax.jit(frame_to_frame_canvas, static_argnames=("spec",))


# ------------------------------------------------------------------------------------------------
# comparator CNN with exact refills, by tiles

def _conv(x: Array, layer: Dict[str, Array], precision) -> Array:
    y = lax.conv_general_dilated(x[None], layer["kernel"], (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)[0]
    return y + layer["bias"]


def _conv1_relu_pool(xp: Array, layer: Dict[str, Array]) -> Array:
    """First conv (1 input channel, 3x3) + ReLU + 2x2 max-pool, fused into one elementwise loop.

    xp [h + 2, w + 2] (already padded), h and w even -> [h/2, w/2, C]. Equal to conv -> relu ->
    max-pool up to float rounding, without materialising the [h, w, C] conv output (a 1-channel
    convolution is memory-bound in XLA's convolution; this is much faster on CPU)."""
    h, w = xp.shape[0] - 2, xp.shape[1] - 2
    h2, w2 = h // 2, w // 2
    k = layer["kernel"][:, :, 0, :]                                   # [3, 3, C]
    sl = {(u, v): lax.slice(xp, (u, v), (u + 2 * h2 - 1, v + 2 * w2 - 1), (2, 2))[..., None]
          for u in range(4) for v in range(4)}
    out = None
    for di in range(2):
        for dj in range(2):
            acc = layer["bias"]
            for a in range(3):
                for b in range(3):
                    acc = acc + sl[(di + a, dj + b)] * k[a, b]
            out = acc if out is None else jnp.maximum(out, acc)
    return jax.nn.relu(out)


def winograd_kernel(layer: Dict[str, Array], m: int) -> Array:
    """The layer's kernel transformed for F(m x m, 3 x 3): [(m+2)^2, Cin, Cout]; precomputed under
    the key f'winograd{m}' (see winograd.with_transformed), else transformed here (float32)."""
    key = f"winograd{m}"
    return layer[key] if key in layer else winograd.transform_kernel(layer["kernel"], m)


def _max_pool(x: Array) -> Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (2, 2, 1), (2, 2, 1), "VALID")


def _refill(x: Array, rv, cv, rs, cs, padding: str) -> Array:
    """Cells outside the valid segments take their official padding value (see layout.py)."""
    if padding == "zero":
        return jnp.where((rv[:, None] & cv[None, :])[..., None], x, 0.0)
    x = jnp.take(x, rs, axis=0, mode="clip")
    return jnp.take(x, cs, axis=1, mode="clip")


def comparator_canvas(params: Dict[str, Any], f2f: Array, rmaps: Dict[str, Array],
                      cmaps: Dict[str, Array], spec: KernelSpec) -> Array:
    """The official comparator applied to every segment pair of the canvas at once.

    f2f [H, W] -> [H//4, W//4] raw CNN output (before the hard tanh); cells outside the segment
    pairs hold garbage. Exact per pair (see layout.py); tiled with a halo of HALO frames when
    spec.tile_rows/tile_cols are set. conv2 and conv3 run as Winograd convolutions where
    spec.winograd sets their tile (equal to the direct ones to float32 rounding).
    """
    hh, ww = f2f.shape
    th, tw = spec.tile_rows or hh, spec.tile_cols or ww
    hr, hc = (HALO if spec.tile_rows else 0), (HALO if spec.tile_cols else 0)
    nr, nc = hh // th, ww // tw
    wh, wwid = th + 2 * hr, tw + 2 * hc
    x = jnp.pad(f2f, ((hr, hr), (hc, hc))) if (hr or hc) else f2f
    pad_mode = "constant" if spec.padding == "zero" else "edge"
    convs = [params["conv1"], params["conv2"], params["conv3"]]
    tiles = (0,) + tuple(spec.winograd)                           # Winograd tile per level (0: direct)
    wkern = {lv: winograd_kernel(convs[lv], m) for lv, m in enumerate(tiles) if m}   # once per call

    def tile(idx):
        i, j = idx // nc, idx % nc
        r0, c0 = i * th, j * tw            # window start in padded coordinates
        y = lax.dynamic_slice(x, (r0, c0), (wh, wwid))[..., None]
        for level in range(LEVELS):
            rl, cl = r0 >> level, c0 >> level
            nh, nw = wh >> level, wwid >> level
            rv = lax.dynamic_slice(rmaps[f"valid{level}"], (rl,), (nh,))
            cv = lax.dynamic_slice(cmaps[f"valid{level}"], (cl,), (nw,))
            rs = lax.dynamic_slice(rmaps[f"src{level}"], (rl,), (nh,)) - (rl - (hr >> level))
            cs = lax.dynamic_slice(cmaps[f"src{level}"], (cl,), (nw,)) - (cl - (hc >> level))
            y = _refill(y, rv, cv, rs, cs, spec.padding)
            y = jnp.pad(y, ((1, 1), (1, 1), (0, 0)), mode=pad_mode)
            if level == 0 and spec.fuse_conv1:
                y = _conv1_relu_pool(y[..., 0], convs[0])
                continue
            if tiles[level]:
                args = (y, wkern[level], convs[level]["bias"], tiles[level], spec.precision)
                y = winograd.conv3x3_relu_pool(*args) if level < LEVELS - 1 else \
                    jax.nn.relu(winograd.conv3x3(*args))
                continue
            y = jax.nn.relu(_conv(y, convs[level], spec.precision))
            if level < LEVELS - 1:
                y = _max_pool(y)
        y = _conv(y, params["fconv"], spec.precision)[..., 0]
        return y[hr >> 2:(hr >> 2) + th // 4, hc >> 2:(hc >> 2) + tw // 4]

    if nr * nc == 1:
        return tile(jnp.int32(0))
    tiles = lax.map(tile, jnp.arange(nr * nc, dtype=jnp.int32), batch_size=min(spec.tile_batch, nr * nc))
    tiles = tiles.reshape(nr, nc, th // 4, tw // 4)
    return jnp.transpose(tiles, (0, 2, 1, 3)).reshape(hh // 4, ww // 4)


# ------------------------------------------------------------------------------------------------
# per segment-pair reductions

def _segment_max(x: Array, seg: Array, n: int) -> Array:
    """Max over the leading axis of x grouped by seg (n groups); empty groups -> 0."""
    m = jax.ops.segment_max(x, seg, num_segments=n, indices_are_sorted=True)
    return jnp.where(jnp.isfinite(m), m, 0.0)


def _segment_sum(x: Array, seg: Array, n: int) -> Array:
    return jax.ops.segment_sum(x, seg, num_segments=n, indices_are_sorted=True)


def reduce_pairs(out: Array, rmaps, cmaps, spec: KernelSpec) -> Array:
    """[H', W'] similarity map -> [Sr+1, Sc+1] per (row segment, column segment); last row/column
    collect the cells outside any segment."""
    sr, sc = rmaps["count"].shape[0], cmaps["count"].shape[0]
    rseg, cseg = rmaps["seg"], cmaps["seg"]
    if spec.reduce == "mean":
        s = _segment_sum(_segment_sum(out, rseg, sr).T, cseg, sc).T
        return s / (rmaps["count"][:, None] * cmaps["count"][None, :])
    # max over the target frames of each column segment, mean over the query frames of each row
    colmax = _segment_max(out.T, cseg, sc).T                       # [H', Sc]
    fwd = _segment_sum(colmax, rseg, sr) / rmaps["count"][:, None]
    if not spec.symmetric:
        return fwd
    rowmax = _segment_max(out, rseg, sr)                            # [Sr, W']
    bwd = _segment_sum(rowmax.T, cseg, sc).T / cmaps["count"][None, :]
    return (fwd + bwd) / 2


def place_dense(f2f: Array, rows_index, cols_index) -> Array:
    """Dense frame-to-frame matrix [Hd, Wd] -> canvas [H, W]: canvas position p takes dense frame
    index[p]. Positions outside the segments take any frame: the kernel refills them."""
    if rows_index is not None:
        f2f = jnp.take(f2f, rows_index, axis=0, mode="clip")
    if cols_index is not None:
        f2f = jnp.take(f2f, cols_index, axis=1, mode="clip")
    return f2f


@functools.partial(jax.jit, static_argnames=("spec", "with_f2f"))
def canvas_similarity(params, q, t, rmaps, cmaps, spec: KernelSpec, rows_index=None, cols_index=None,
                      cols_take=None, with_f2f: bool = False):
    """Video similarity of every (query segment, target segment) pair of a canvas.

    params: the comparator's {'conv1', 'conv2', 'conv3', 'fconv'} (ignored without comparator);
    q [H, R, .], t [W, R, .] (float features or packed codes) laid out on the canvas; maps from
    layout.Axis.maps. Or, with rows_index [H] / cols_index [W] int32, q [Hd, R, .] / t [Wd, R, .]
    hold the frames densely (no gaps, no padding): the frame-to-frame products are computed on the
    dense frames only and then placed on the canvas (see place_dense). With cols_take [Wd] int32,
    t is a resident array of frames and the dense target frames are t[cols_take].
    Returns [Sr+1, Sc+1] float32; with `with_f2f`, also the frame-to-frame matrix the scores were
    computed from, on the dense frames (rows q, columns t, or t[cols_take]): [Hd, Wd] float32, what
    copied-segment localization reads.
    """
    dense = frame_to_frame_canvas(q, t, spec, cols_take)
    f2f = place_dense(dense, rows_index, cols_index)
    if spec.comparator:
        out = comparator_canvas(params, f2f, rmaps, cmaps, spec)
        if spec.clip:
            out = jnp.clip(out, -1.0, 1.0)
    else:
        out = f2f
    sims = reduce_pairs(out, rmaps, cmaps, spec)
    return (sims, dense) if with_f2f else sims


def _given(params, f2f, rmaps, cmaps, spec: KernelSpec) -> Array:
    out = comparator_canvas(params, f2f, rmaps, cmaps, spec)
    if spec.clip:
        out = jnp.clip(out, -1.0, 1.0)
    return reduce_pairs(out, rmaps, cmaps, spec)


@functools.partial(jax.jit, static_argnames=("spec",))
def given_similarity(params, f2f, rmaps, cmaps, spec: KernelSpec) -> Array:
    """As canvas_similarity for an already computed frame-to-frame matrix."""
    return _given(params, f2f, rmaps, cmaps, spec)


@functools.partial(jax.jit, static_argnames=("spec",))
def given_similarity_batch(params, f2f, rmaps, cmaps, spec: KernelSpec) -> Array:
    """given_similarity vmapped over a leading batch axis of f2f and of every map."""
    return jax.vmap(lambda f, r, c: _given(params, f, r, c, spec))(f2f, rmaps, cmaps)
