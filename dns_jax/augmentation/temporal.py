"""Temporal edits as index plans (official S2VS `temporal_trans.py`), with static shapes.

A `TemporalPlan` says, for every output position p < length, which source frame to show
(`index[p]`) and whether to show it as is (fill 0) or replace it by black (1) or uniform noise
(2). Plans are padded to a static size; positions >= length are ignored. `window_plan` then
cuts the fixed-length window the official code takes (tiling short clips by doubling), and
`gather_frames` materialises it from a `[T, H, W, 3]` uint8 clip.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from .sampling import integer

KEEP, BLACK, NOISE = 0, 1, 2
EDITS = ("shuffle_dropout", "fast_forward", "slow_motion", "reverse", "pause")


class TemporalPlan(NamedTuple):
    index: jax.Array    # int32 [M] source frame of each output position
    fill: jax.Array     # int32 [M] KEEP, BLACK or NOISE
    length: jax.Array   # int32 [] number of valid positions


def _plan(index: jax.Array, length, size: int, fill: Optional[jax.Array] = None) -> TemporalPlan:
    """Pad/cut `index` (and `fill`) to `size` positions."""
    pad = size - index.shape[0]
    index = jnp.pad(index, (0, max(pad, 0)))[:size].astype(jnp.int32)
    fill = jnp.zeros(size, jnp.int32) if fill is None else jnp.pad(fill, (0, max(pad, 0)))[:size]
    return TemporalPlan(index, fill.astype(jnp.int32), jnp.asarray(length, jnp.int32))


def plan_size(num_frames: int, temporal) -> int:
    """Static size that holds the longest edit of `num_frames` frames under config `temporal`."""
    return max(num_frames * temporal.slow_motion[1], num_frames + temporal.pause_frames[1], num_frames)


def identity_plan(num_frames: int, size: Optional[int] = None) -> TemporalPlan:
    return _plan(jnp.arange(num_frames), num_frames, size or num_frames)


def reverse_plan(num_frames: int, size: Optional[int] = None) -> TemporalPlan:
    """Frames in reverse order."""
    return _plan(jnp.arange(num_frames)[::-1], num_frames, size or num_frames)


def fast_forward_plan(key: jax.Array, num_frames: int, factors: Sequence[int],
                      size: Optional[int] = None) -> TemporalPlan:
    """Every k-th frame from the first, k ~ U{factors} (inclusive): ceil(T / k) frames."""
    k = integer(jax.random.uniform(key), factors[0], factors[1])
    return _plan(jnp.arange(num_frames) * k, (num_frames + k - 1) // k, size or num_frames)


def slow_motion_plan(key: jax.Array, num_frames: int, factors: Sequence[int],
                     size: Optional[int] = None) -> TemporalPlan:
    """Every frame repeated k times, k ~ U{factors} (inclusive): k * T frames."""
    k = integer(jax.random.uniform(key), factors[0], factors[1])
    size = size or num_frames * factors[1]
    return _plan(jnp.arange(size) // k, num_frames * k, size)


def pause_plan(key: jax.Array, num_frames: int, durations: Sequence[int],
               size: Optional[int] = None) -> TemporalPlan:
    """Frame s (s ~ U{0..T-2}) shown d extra times (d ~ U{durations}, inclusive): T + d frames."""
    u = jax.random.uniform(key, (2,))
    start = integer(u[0], 0, max(num_frames - 2, 0))
    dur = integer(u[1], durations[0], durations[1])
    size = size or num_frames + durations[1]
    p = jnp.arange(size)
    index = jnp.where(p < start, p, jnp.where(p < start + dur, start, p - dur))
    return _plan(index, num_frames + dur, size)


def shuffle_dropout_plan(key: jax.Array, num_frames: int, segment_frames: Sequence[int],
                         p_shuffle: float, p_dropout: float, p_remove: float, p_black: float,
                         size: Optional[int] = None) -> TemporalPlan:
    """Cut the clip into segments of L ~ U{segment_frames} frames (the T mod L last frames are
    discarded; L > T: one segment of T), permute them with probability p_shuffle, then mark each
    with probability p_dropout as dropped, and a dropped one as removed (p_remove) or replaced
    frame by frame by black (p_black) or noise. Drops apply only when at least one segment is
    marked and the sum of the marks (1 removed, 2 replaced) is below the segment count (as
    the official code)."""
    max_segments = max(num_frames // max(segment_frames[0], 1), 1)
    u = jax.random.uniform(key, (2 + 3 * max_segments + num_frames,))
    u_perm, u_drop, u_kind, u_black = jnp.split(u[2:], [max_segments, 2 * max_segments, 3 * max_segments])
    seg_len = jnp.minimum(integer(u[0], segment_frames[0], segment_frames[1]), num_frames)
    n_seg = num_frames // seg_len
    slot = jnp.arange(max_segments)
    valid = slot < n_seg
    # A random permutation of the n_seg real segments (invalid slots sort last).
    order = jnp.where(u[1] < p_shuffle, jnp.argsort(jnp.where(valid, u_perm, 2.0 + slot)), slot)
    mark = (u_drop < p_dropout) * (1 + (u_kind > p_remove)) * valid
    total = mark.sum()
    active = (total > 0) & (total < n_seg)
    kept = valid & ~(active & (mark == 1))
    compact = jnp.argsort(~kept, stable=True)            # kept slots first, in order
    n_kept = kept.sum()
    size = size or num_frames
    p = jnp.arange(size)
    which = compact[jnp.minimum(p // seg_len, max_segments - 1)]
    source = order[which] * seg_len + p % seg_len
    replaced = active & (mark[which] == 2)
    black = u_black < p_black                            # per source frame
    fill = jnp.where(replaced, jnp.where(black[jnp.clip(source, 0, num_frames - 1)], BLACK, NOISE), KEEP)
    return _plan(source, n_kept * seg_len, size, fill)


def random_temporal_edit(key: jax.Array, num_frames: int, temporal) -> TemporalPlan:
    """One edit (or none) drawn with the probabilities of config `temporal`, padded to
    `plan_size(num_frames, temporal)`."""
    size = plan_size(num_frames, temporal)
    probs = [temporal.p_shuffle_dropout, temporal.p_fast_forward, temporal.p_slow_motion,
             temporal.p_reverse, temporal.p_pause]
    probs.append(max(0.0, 1.0 - sum(probs)))
    k_choice, k_edit = jax.random.split(key)
    choice = jnp.searchsorted(jnp.cumsum(jnp.asarray(probs)), jax.random.uniform(k_choice), side="right")
    choice = jnp.minimum(choice, len(probs) - 1)
    branches = [
        lambda k: shuffle_dropout_plan(k, num_frames, temporal.segment_frames, temporal.p_shuffle,
                                       temporal.p_dropout, temporal.p_remove, temporal.p_black, size),
        lambda k: fast_forward_plan(k, num_frames, temporal.fast_forward, size),
        lambda k: slow_motion_plan(k, num_frames, temporal.slow_motion, size),
        lambda k: reverse_plan(num_frames, size),
        lambda k: pause_plan(k, num_frames, temporal.pause_frames, size),
        lambda k: identity_plan(num_frames, size),
    ]
    return jax.lax.switch(choice, branches, k_edit)


def window_plan(key: jax.Array, plan: TemporalPlan, window: int) -> TemporalPlan:
    """Official `random_temporal_crop`: double the sequence until it has >= window positions,
    then take `window` consecutive ones from offset ~ U{0 .. max(len - window, 1) - 1}."""
    n = jnp.maximum(plan.length, 1)
    tiled = n
    for _ in range(max(window, 1).bit_length()):
        tiled = jnp.where(tiled < window, tiled * 2, tiled)
    offset = integer(jax.random.uniform(key), 0, jnp.maximum(tiled - window, 1) - 1)
    pos = (offset + jnp.arange(window)) % n
    return TemporalPlan(plan.index[pos], plan.fill[pos], jnp.asarray(window, jnp.int32))


def _hashed_noise(seed: jax.Array, index: jax.Array, frame_shape) -> jax.Array:
    """Uniform uint8 noise `[M, *frame_shape]` that depends only on (seed, index[m]): a
    murmur3-style integer hash (cheap, and a repeated source frame repeats its noise)."""
    pixel = jnp.arange(math.prod(frame_shape), dtype=jnp.uint32).reshape(frame_shape)
    x = seed ^ (index.astype(jnp.uint32)[:, None, None, None] * jnp.uint32(0x9E3779B1))
    x = x ^ (pixel * jnp.uint32(0x85EBCA77))
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        x = (x ^ (x >> shift)) * jnp.uint32(mult)
    x = x ^ (x >> 16)
    return (x >> 24).astype(jnp.uint8)


def gather_frames(key: jax.Array, video: jax.Array, plan: TemporalPlan) -> jax.Array:
    """`video [T, H, W, 3]` uint8 -> `[M, H, W, 3]`: the planned frames, black or uniform noise
    where the plan says (noise is a function of the source frame, so repeats repeat it)."""
    index = jnp.clip(plan.index, 0, video.shape[0] - 1)
    frames = video[index]
    noise = _hashed_noise(jax.random.bits(key, (), jnp.uint32), index, video.shape[1:])
    frames = jnp.where((plan.fill == NOISE)[:, None, None, None], noise, frames)
    return jnp.where((plan.fill == BLACK)[:, None, None, None], jnp.zeros((), jnp.uint8), frames)
