"""dns_jax.retrieval.winograd: Winograd F(2x2,3x3) / F(4x4,3x3) convolutions against XLA's direct
convolution, and the fine scorer with conv_algorithm='winograd' against 'direct'."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import network
from jax import lax
from test_retrieval import TINY, _videos

from dns_jax.retrieval import kernels, winograd
from dns_jax.retrieval.fine import FineScorer, ScorerOptions, resolve_conv


def _direct(x, k, b):
    y = lax.conv_general_dilated(x[None], k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)[0]
    return y + b


def _random(rng, h, w, ci, co):
    x = rng.standard_normal((h + 2, w + 2, ci)).astype(np.float32)
    k = (rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(k), jnp.asarray(rng.standard_normal(co).astype(np.float32))


# output sizes: odd, not multiples of m, a single cell, the comparator's tile shapes
SHAPES = [(1, 1, 1, 1), (3, 5, 2, 3), (7, 9, 3, 5), (6, 11, 4, 2), (13, 4, 8, 16), (30, 264, 32, 64),
          (15, 132, 64, 128)]


@pytest.mark.parametrize("m", winograd.TILES)
@pytest.mark.parametrize("shape", SHAPES)
def test_conv_equals_direct(m, shape):
    rng = np.random.default_rng(hash(shape) % 2 ** 32)
    x, k, b = _random(rng, *shape)
    ref = np.asarray(_direct(x, k, b))
    u = winograd.transform_kernel(k, m)
    assert u.shape == ((m + 2) ** 2, shape[2], shape[3])
    got = np.asarray(winograd.conv3x3(x, u, b, m))
    assert got.shape == ref.shape
    # F(4,3)'s transform constants (up to 8 and 1/24) cost a few bits of float32
    tol = (2e-6 if m == 2 else 2e-5) * max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(got, ref, atol=tol, rtol=0)
    pooled = np.asarray(winograd.conv3x3_relu_pool(x, u, b, m))
    ref_pool = np.asarray(jax.nn.relu(lax.reduce_window(ref, -np.inf, lax.max, (2, 2, 1), (2, 2, 1), "VALID")))
    assert pooled.shape == ref_pool.shape == (shape[0] // 2, shape[1] // 2, shape[3])
    np.testing.assert_allclose(pooled, ref_pool, atol=tol, rtol=0)


@pytest.mark.parametrize("m", winograd.TILES)
def test_traced_kernel_transform_equals_host_one(m):
    k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 4, 5)).astype(np.float32))
    host = winograd.transform_kernel(k, m)
    traced = jax.jit(lambda a: winograd.transform_kernel(a, m))(k)
    np.testing.assert_allclose(np.asarray(traced), np.asarray(host), atol=1e-6, rtol=1e-6)


def test_bad_tile():
    with pytest.raises(ValueError, match="tile"):
        winograd.matrices(3)
    with pytest.raises(ValueError, match="conv_algorithm"):
        resolve_conv(ScorerOptions(conv_algorithm="fft"))
    with pytest.raises(ValueError, match="winograd_tiles"):
        resolve_conv(ScorerOptions(conv_algorithm="winograd", winograd_tiles=(3, 4)))


def test_resolve_conv_per_platform():
    assert resolve_conv(ScorerOptions(), "cpu") == (2, 4)
    assert resolve_conv(ScorerOptions(), "gpu") == (0, 0)
    assert resolve_conv(ScorerOptions(conv_algorithm="direct"), "cpu") == (0, 0)
    assert resolve_conv(ScorerOptions(conv_algorithm="winograd", winograd_tiles=(4, 2)), "gpu") == (4, 2)
    # 'auto' leaves canvases below winograd_min_cells to the direct convolution; an explicit choice holds
    assert resolve_conv(ScorerOptions(), "cpu", 60 * 4096) == (2, 4)
    assert resolve_conv(ScorerOptions(), "cpu", 60 * 256) == (0, 0)
    assert resolve_conv(ScorerOptions(winograd_min_cells=0), "cpu", 60 * 256) == (2, 4)
    assert resolve_conv(ScorerOptions(conv_algorithm="winograd"), "cpu", 16) == (2, 4)


def _count_convs(sc, spec):
    """conv_general_dilated ops in the traced canvas kernel of `spec` (conv1 is fused elementwise:
    direct -> conv2, conv3 and the 1x1 conv; Winograd -> the 1x1 conv only)."""
    rows, cols = 16, 32
    rmaps = {k: jnp.asarray(v) for k, v in sc._axis([rows], rows, bool(spec.tile_rows))[0].maps("zero").items()}
    cmaps = {k: jnp.asarray(v) for k, v in sc._axis([cols], cols, bool(spec.tile_cols))[0].maps("zero").items()}
    dt, d = (jnp.uint32, 16) if sc.packed else (jnp.float32, 512)
    shapes = (jax.ShapeDtypeStruct((rows, 9, d), dt), jax.ShapeDtypeStruct((cols, 9, d), dt))
    text = kernels.canvas_similarity.lower(sc.kernel_params(spec), *shapes, rmaps, cmaps, spec=spec).as_text()
    return text.count("stablehlo.convolution")


# each network once, each tile size once in conv2 and once in conv3: the tile of one layer does not
# depend on the other's or on the network (the CNN sees the same f2f canvas), so (2, 2) and (4, 4)
# repeated these paths; test_retrieval holds the default (2, 4) on FG-Att, FG-Bin and ViSiL against
# the official per-pair path
@pytest.mark.parametrize("name,tiles", [("fg_att_student", (4, 2)), ("fg_bin_student", (2, 4))])
def test_scorer_winograd_equals_direct(name, tiles):
    """The whole fine scorer on tiny tiled canvases (many tiles with halos, several canvases, odd
    video lengths): Winograd and direct agree to float32 rounding, and the Winograd kernels really
    use no convolution for conv2/conv3 (a silent fallback to 'direct' would fail here)."""
    ref, net = network(name)
    queries, targets = _videos(ref, name)
    targets = [t for t in targets if len(t) < 2048][:6]
    direct = FineScorer(net, options=dataclasses.replace(TINY, conv_algorithm="direct"))
    wino = FineScorer(net, options=dataclasses.replace(TINY, conv_algorithm="winograd", winograd_tiles=tiles))
    spec_d, spec_w = direct.spec_for(16, 32, (9, 9)), wino.spec_for(16, 32, (9, 9))
    assert spec_d.winograd == (0, 0) and spec_w.winograd == tiles
    params = wino.kernel_params(spec_w)
    assert params["conv2"][f"winograd{tiles[0]}"].shape == ((tiles[0] + 2) ** 2, 32, 64)
    assert params["conv3"][f"winograd{tiles[1]}"].shape == ((tiles[1] + 2) ** 2, 64, 128)
    assert _count_convs(direct, spec_d) == 3 and _count_convs(wino, spec_w) == 1
    a = direct.similarities(direct.index(queries), direct.index(targets))
    b = wino.similarities(wino.index(queries), wino.index(targets))
    assert a.shape == b.shape == (len(queries), len(targets))
    np.testing.assert_allclose(b, a, atol=2e-6, rtol=0)


def test_scorer_winograd_equals_direct_random_database():
    """FG-Bin on a random database of FIVR-like lengths (default CPU options: 40k-cell tiles)."""
    _, net = network("fg_bin_student")
    rng = np.random.default_rng(3)
    lengths = np.clip(np.round(rng.lognormal(np.log(40.0), 0.9, 40)), 1, 400).astype(int)
    feats = [rng.standard_normal((n, 9, 512)).astype(np.float32) for n in lengths]
    query = [rng.standard_normal((60, 9, 512)).astype(np.float32)]
    direct = FineScorer(net, options=ScorerOptions(conv_algorithm="direct"))
    wino = FineScorer(net, options=ScorerOptions(conv_algorithm="winograd"))
    a = direct.similarities(direct.index(query), direct.index(feats))
    b = wino.similarities(wino.index(query), wino.index(feats))
    assert 0 < np.abs(a - b).max() < 2e-6      # different arithmetic, same results to float32 rounding
