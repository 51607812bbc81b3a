"""Bit-packed FG-Bin codes: 512 bits = 64 bytes per region instead of 512 float32 +-1 values.

Packing: bit k of a region's code is 1 where the code is > 0 and 0 otherwise, little-endian bit
order within bytes; bytes are grouped by 4 into uint32 words for the kernel (XOR + popcount).

The official codes are sign(projection), i.e. +1, -1, or 0 where the projection is exactly 0 (in
practice only for an all-zero region vector). Packing stores such a 0 as -1, so a packed
similarity equals the float +-1 similarity for every region without a zero code, which is every
region of real features; `count_zero_codes` tells how many there are (the index records it).
Hamming distance is invariant to a permutation of the bits applied to both codes, so packed codes
are portable across byte orders as long as they are packed and read on the same convention.
"""
from __future__ import annotations

import numpy as np

WORD_BITS = 32


def check_bits(bits: int) -> int:
    if bits <= 0 or bits % WORD_BITS:
        raise ValueError(f"binary codes need a positive multiple of {WORD_BITS} bits to be packed; got {bits}")
    return bits


def pack_codes(codes) -> np.ndarray:
    """[..., bits] +-1 (float or int) codes -> [..., bits/8] uint8 (1 where code > 0)."""
    c = np.asarray(codes)
    check_bits(c.shape[-1])
    return np.packbits(c > 0, axis=-1, bitorder="little")


def as_words(packed) -> np.ndarray:
    """[..., bytes] uint8 packed codes -> [..., bytes/4] uint32 words (a view where possible)."""
    p = np.ascontiguousarray(packed, dtype=np.uint8)
    if p.shape[-1] % 4:
        raise ValueError(f"packed codes must have a multiple of 4 bytes per region; got {p.shape[-1]}")
    return p.view("<u4")


def unpack_codes(packed, dtype=np.float32) -> np.ndarray:
    """[..., bits/8] uint8 (or uint32 words) -> [..., bits] +-1 codes."""
    p = np.asarray(packed)
    if p.dtype != np.uint8:
        p = np.ascontiguousarray(p).view(np.uint8)
    bits = np.unpackbits(p, axis=-1, bitorder="little")
    return (2 * bits.astype(np.int8) - 1).astype(dtype)


def count_zero_codes(codes) -> int:
    """Number of exactly-0 code values (stored as -1 by pack_codes)."""
    return int(np.count_nonzero(np.asarray(codes) == 0))


def hamming_similarity(q_words, t_words, bits: int) -> np.ndarray:
    """Reference (numpy) frame-to-frame similarity of packed codes: [Tq, R, W] x [Tt, R, W] ->
    [Tq, Tt], mean over query regions of the max over target regions of 1 - 2 * hamming / bits."""
    x = np.bitwise_xor(np.asarray(q_words)[:, :, None, None, :], np.asarray(t_words)[None, None])
    ham = np.unpackbits(x.view(np.uint8), axis=-1).sum(-1, dtype=np.int64)   # [Tq, R, Tt, R]
    dot = bits - 2 * ham.min(axis=3)
    return dot.mean(axis=1) / bits
