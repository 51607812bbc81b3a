"""Native CPU kernels registered with XLA through its FFI (custom calls), for the work XLA's own
code generation does poorly on CPUs.

`min_hamming_similarity` is FG-Bin's frame-to-frame similarity on bit-packed codes: AVX2 has no
vector popcount and XLA gives no byte shuffle, so its best elementwise formulation ('csa' in
dns_jax.retrieval.kernels) is vector-ALU bound; the hand-written loop here (eight target frames per
vector, carry-save adders, vpshufb nibble counts, ~16 vector operations per region pair) is about
twice as fast (figures in docs/retrieval.md). On CPUs with AVX-512 VPOPCNTDQ (AMD Zen 4, Intel Ice
Lake and later) the kernel takes a second loop, sixteen target frames per vector counted by
vpopcntd (~2.4x faster again, docs/scaling.md); `set_isa('avx2')` or DNS_JAX_NATIVE=avx2 forces the
first. Results are identical (integer distances, the same float operations after them).

The kernel is compiled on first use (build.py: the system C++ compiler and jaxlib's FFI headers,
once, cached under ~/.cache/dns_jax/native). Without a compiler, on a CPU without AVX2, or
with DNS_JAX_NATIVE=off, `available()` is False and callers use the XLA formulation.
`python -m dns_jax.native` builds it, checks it against numpy and says which kernel is used.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp

from dns_jax.compile_cache import is_off
from dns_jax.native.build import BuildError, library_path, source_path

ENV = "DNS_JAX_NATIVE"
TARGET = "dns_jax_min_hamming"
ISAS = {"auto": 0, "avx2": 1, "avx512": 2}      # the kernel's Hamming loops (see set_isa)
log = logging.getLogger(__name__)
_lib: Optional[ctypes.CDLL] = None


def _setting() -> str:
    return os.environ.get(ENV, "").strip()


def _disabled() -> bool:
    return is_off(_setting())


@functools.lru_cache(maxsize=None)
def _load() -> Optional[str]:
    """Build (or find in the cache), load and register the library once per process. Returns
    None, with one warning, when that is not possible on this machine."""
    try:
        path = library_path(source_path("min_hamming.cc"))
        lib = ctypes.CDLL(path)
        if not lib.dns_jax_native_supported():
            log.info("dns_jax native kernels: this CPU has no AVX2; using the XLA kernels")
            return None
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.DnsJaxMinHamming), platform="cpu")
        global _lib
        _lib = lib
        if _setting().lower() == "avx2":
            lib.dns_jax_native_set_isa(ISAS["avx2"])
        return path
    except (BuildError, OSError, AttributeError) as e:
        log.warning("dns_jax native kernels unavailable, using the XLA kernels: %s", e)
        return None


def available() -> bool:
    """True when the native FG-Bin kernel can run here (built, AVX2, not disabled by
    DNS_JAX_NATIVE=off). The first call may compile it (seconds)."""
    return not _disabled() and _load() is not None


def set_isa(isa: str = "auto") -> str:
    """Which Hamming loop the native kernel runs from now on (every compiled call, process-wide):
    'auto' (the best this CPU has, the default), 'avx2' (eight target frames per vector, carry-save
    adders), or 'avx512' (sixteen per vector and vpopcntd, where the CPU has AVX-512 VPOPCNTDQ; else
    as 'auto'). Both give identical results; this is for comparing them. Returns the loop now used
    for 512-bit codes: 'avx2' or 'avx512'."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}, got {isa!r}")
    if not available():
        raise RuntimeError("the native FG-Bin kernel is not available on this machine")
    return {1: "avx2", 2: "avx512"}[_lib.dns_jax_native_set_isa(ISAS[isa])]


def min_hamming_similarity(q: jax.Array, t: jax.Array, bits: int, threads: int = 0) -> jax.Array:
    """Packed codes q uint32 [H, Rq, W], t uint32 [N, Rt, W] -> float32 [H, N]: mean over query
    regions of (bits - 2 * min over target regions of the Hamming distance) / bits, the FG-Bin
    frame-to-frame similarity. CPU only; jit- and vmap-able. `threads`: intra-op threads used
    (0 = XLA's CPU thread pool size)."""
    if not available():
        raise RuntimeError("the native FG-Bin kernel is not available on this machine "
                           "(see the log, or unset DNS_JAX_NATIVE)")
    if q.ndim != 3 or t.ndim != 3 or q.shape[2] != t.shape[2] or 0 in q.shape[1:] + t.shape[1:]:
        raise ValueError(f"expected q [H, Rq, W] and t [N, Rt, W] with the same W (Rq, Rt, W > 0); "
                         f"got {q.shape}, {t.shape}")
    if q.dtype != jnp.uint32 or t.dtype != jnp.uint32:
        raise ValueError(f"packed codes must be uint32, got {q.dtype}, {t.dtype}")
    if not 1 <= bits <= 32 * q.shape[2]:
        raise ValueError(f"bits={bits} does not fit {q.shape[2]} 32-bit words")
    out = jax.ShapeDtypeStruct((q.shape[0], t.shape[0]), jnp.float32)
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    return call(q, t, bits=int(bits), threads=int(threads))
