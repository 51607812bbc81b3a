"""The native FG-Bin kernel (dns_jax.native, XLA FFI): exact distances against numpy, the XLA
formulations and the official float path; its build cache and its fallbacks."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import network

from dns_jax import native
from dns_jax.native import build
from dns_jax.retrieval import kernels
from dns_jax.retrieval.fine import FineScorer, ScorerOptions, resolve_popcount

needs_kernel = pytest.mark.skipif(not native.available(), reason="native kernel not available here (no C++ compiler, no AVX2, or DNS_JAX_NATIVE=off)")


def _expected(q, t, bits):
    """numpy: mean over query regions of (bits - 2 min Hamming) / bits, as XLA rounds it."""
    d = np.bitwise_count(q[:, None, :, None, :] ^ t[None, :, None, :, :]).astype(np.int64)  # [H, N, Rq, Rt, W]
    s = (bits - 2 * d.sum(-1).min(-1)).astype(np.float32).sum(-1, dtype=np.float32)
    return s * np.float32(1 / q.shape[1]) / np.float32(bits)


@needs_kernel
@pytest.mark.parametrize("h,n,r,w,bits", [
    (3, 13, 9, 16, 512),       # targets not a multiple of the 8 lanes
    (130, 70, 9, 16, 512),     # several row (128) and column (64) chunks
    (2, 9, 4, 3, 96),          # a partial carry-save group
    (4, 11, 2, 34, 1088),      # three groups
    (1, 1, 1, 1, 32),
    (5, 17, (3, 4), 16, 512),  # fewer query than target regions
])
def test_min_hamming_equals_numpy(h, n, r, w, bits):
    rng = np.random.default_rng(h * n + w)
    rq, rt = r if isinstance(r, tuple) else (r, r)
    q = rng.integers(0, 2 ** 32, (h, rq, w), dtype=np.uint32)
    t = rng.integers(0, 2 ** 32, (n, rt, w), dtype=np.uint32)
    q[0] = q[0, :1]                                      # one code in every region of query frame 0
    t[0] = q[0, :1]                                      # distance 0: similarity 1
    if n > 1:
        t[1] = ~q[0, :1]                                 # every bit differs: -1
    got = np.asarray(jax.jit(lambda a, b: native.min_hamming_similarity(a, b, bits))(q, t))
    exp = _expected(q, t, bits)
    np.testing.assert_array_equal(got, exp)
    assert got[0, 0] == 1.0 and (n == 1 or got[0, 1] == -1.0)


@needs_kernel
@pytest.mark.parametrize("h,n,r,w,bits", [(3, 13, 9, 16, 512), (130, 70, 9, 16, 512), (2, 9, 4, 3, 96),
                                          (4, 11, 2, 34, 1088), (1, 1, 1, 1, 32), (5, 17, (3, 4), 16, 512)])
def test_both_hamming_loops_equal_numpy(h, n, r, w, bits):
    """The AVX2 loop and (where the CPU has it) the AVX-512 VPOPCNTDQ loop give the same numbers."""
    rng = np.random.default_rng(h + n + w)
    rq, rt = r if isinstance(r, tuple) else (r, r)
    q = rng.integers(0, 2 ** 32, (h, rq, w), dtype=np.uint32)
    t = rng.integers(0, 2 ** 32, (n, rt, w), dtype=np.uint32)
    fn = jax.jit(lambda a, b: native.min_hamming_similarity(a, b, bits))
    try:
        for isa in ("avx2", "avx512"):
            used = native.set_isa(isa)
            assert used == "avx2" or isa == "avx512"
            np.testing.assert_array_equal(np.asarray(fn(q, t)), _expected(q, t, bits), err_msg=used)
    finally:
        native.set_isa("auto")
    with pytest.raises(ValueError, match="isa must be"):
        native.set_isa("sse")


@needs_kernel
def test_min_hamming_vmap_and_xla_loop():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 2 ** 32, (2, 5, 9, 16), dtype=np.uint32)
    t = rng.integers(0, 2 ** 32, (2, 21, 9, 16), dtype=np.uint32)
    got = jax.jit(jax.vmap(lambda a, b: native.min_hamming_similarity(a, b, 512)))(q, t)
    spec = kernels.KernelSpec(sim="packed", bits=512, popcount="csa", packed_block=8)
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(kernels._f2f_packed(q[i], t[i], spec)))


@needs_kernel
def test_scorer_with_kernel_equals_official_and_float_codes():
    """FineScorer on packed codes through the kernel == the official per-pair numbers, and bit for
    bit the official float +-1 path (binary='float')."""
    ref, net = network("fg_bin_student")
    opts = ScorerOptions(max_cols=16, max_rows=32, popcount="ffi")
    q, d = ref.videos("q"), ref.videos("d")
    sc = FineScorer(net, options=opts)
    got = sc.similarities(sc.index(q), sc.prepare(sc.index(d)))
    np.testing.assert_allclose(got, ref.out["sim_unbatched"], atol=1e-5)
    fl = FineScorer(net, binary="float", options=opts)
    np.testing.assert_array_equal(got, fl.similarities(fl.index(q), fl.prepare(fl.index(d))))


def test_min_hamming_bad_input():
    if not native.available():
        with pytest.raises(RuntimeError, match="not available"):
            native.min_hamming_similarity(jnp.zeros((1, 9, 16), jnp.uint32), jnp.zeros((1, 9, 16), jnp.uint32), 512)
        return
    z = jnp.zeros((2, 9, 16), jnp.uint32)
    with pytest.raises(ValueError, match="uint32"):
        native.min_hamming_similarity(z.astype(jnp.int32), z, 512)
    with pytest.raises(ValueError, match="same W"):
        native.min_hamming_similarity(z, jnp.zeros((2, 9, 8), jnp.uint32), 512)
    with pytest.raises(ValueError, match="bits=513"):
        native.min_hamming_similarity(z, z, 513)


def test_disabled_by_environment_falls_back(monkeypatch):
    _, net = network("fg_bin_student")
    sc = FineScorer(net, options=ScorerOptions.for_platform("cpu"))
    assert sc.options.popcount == "auto"
    monkeypatch.setenv(native.ENV, "off")
    assert not native.available()
    assert sc.spec_for(64, 64, (9, 9)).popcount == "csa"
    monkeypatch.delenv(native.ENV)
    assert sc.spec_for(64, 64, (9, 9)).popcount == ("ffi" if native.available() else "csa")
    assert resolve_popcount("auto", "gpu") == "lax" and resolve_popcount("swar") == "swar"
    with pytest.raises(ValueError, match="renamed"):
        resolve_popcount("native")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_popcount("popcnt")


def test_build_errors_name_the_cause(tmp_path, monkeypatch):
    bad = tmp_path / "broken.cc"
    bad.write_text("this is not C++\n")
    with pytest.raises(build.BuildError, match="broken.cc"):
        build.library_path(str(bad), cache_dir=str(tmp_path / "cache"))
    assert not [p for p in os.listdir(tmp_path / "cache") if p.endswith(".so")]     # no partial file
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler"):
        build.library_path(str(bad), cache_dir=str(tmp_path / "cache2"))


@needs_kernel
def test_build_cache_hit_needs_no_compiler(monkeypatch):
    """The library built for `available()` is found again without a compiler on PATH."""
    first = build.library_path(build.source_path("min_hamming.cc"))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    assert build.library_path(build.source_path("min_hamming.cc")) == first


_CACHED_CHILD = r"""
import numpy as np, jax
from dns_jax import native
from dns_jax.compile_cache import enable_compilation_cache
enable_compilation_cache(min_compile_secs=0)
q = np.arange(2 * 9 * 16, dtype=np.uint32).reshape(2, 9, 16)
print(float(jax.jit(lambda a: native.min_hamming_similarity(a, a, 512))(q)[0, 0]))
"""


@needs_kernel
def test_persistent_compilation_cache_reloads_the_custom_call(tmp_path):
    """A second process loads the executable from the XLA cache; the custom call target must be
    registered by then."""
    import subprocess
    import sys
    env = dict(os.environ, DNS_JAX_COMPILATION_CACHE=str(tmp_path / "xla"), JAX_PLATFORMS="cpu")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CACHED_CHILD], env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "1.0"
    assert any((tmp_path / "xla").iterdir())
