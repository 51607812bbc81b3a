"""dns_jax.retrieval: the batched kernel against the official one-pair-at-a-time path, packed vs
float binary codes, rerank against the official mixing, coarse top-k, bounded memory, bad input."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import network, reference

from dns_jax import retrieval
from dns_jax.retrieval import binary, kernels, selector
from dns_jax.retrieval.fine import FineScorer, ScorerOptions
from dns_jax.validation import FeatureError

# forces tiled CNN, row/column f2f blocks and several canvases on the tiny fixture videos
TINY = ScorerOptions(max_cols=64, max_rows=32, block_bytes=1 << 14, untiled_rows=8, untiled_cells=64,
                     tile_rows=16, tile_cols=16, tile_batch=3)


def _videos(ref, name):
    """Queries and targets from the fixtures plus 1-3 frame videos, lengths that are not multiples
    of 4 (5, 7, 9, 13, 6, 11) and targets over 2048 frames (chunks 2048 + 5, and 2048 + 2 where the
    2-frame chunk is skipped). The official per-pair path compiles once per shape pair, so the
    other networks get a subset."""
    q, d = ref.videos("q"), ref.videos("d")
    rng = np.random.default_rng(5)
    long = np.concatenate([d[0]] * 158, 0)                       # 2054 frames
    long = long + 0.01 * rng.standard_normal(long.shape).astype(np.float32)
    if name == "fg_att_student":
        queries = [q[0], d[1][:2]]                               # 9, 2 frames (5: fixture test)
        targets = d + [d[0][:1], q[0][:3], long[:2053], long[:2050]]
    elif name == "visil_head_f512":                              # no comparator: no repeat, no chunks
        queries, targets = q[:1], d + [d[0][:1], q[0][:3]]
    else:
        queries = [q[0], d[1][:2]]
        targets = d + [d[0][:1], q[0][:3], d[0][:6]]
    return queries, targets


def _official(net, queries, targets):
    """The per-pair official evaluation path of dns_jax.pretrained."""
    qi = [net.index_video(q) for q in queries]
    ti = [net.index_video(t) for t in targets]
    return np.array([[float(net.calculate_video_similarity(a, b)) for b in ti] for a in qi])


@pytest.fixture(scope="module")
def cases():
    out = {}
    for name in ("fg_att_student", "fg_bin_student", "visil_head_sym512", "visil_head_f512"):
        ref, net = network(name)
        queries, targets = _videos(ref, name)
        out[name] = (net, queries, targets, _official(net, queries, targets))
    return out


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student", "visil_head_sym512", "visil_head_f512"])
def test_score_equals_official_per_pair_path(cases, name):
    net, queries, targets, expected = cases[name]
    for i, q in enumerate(queries):
        got = retrieval.score(net, q, targets)
        assert got.dtype == np.float32 and got.shape == (len(targets),)
        np.testing.assert_allclose(got, expected[i], atol=2e-6, rtol=0)
        if i == 0:  # q0 against d0, d1, d2: the official fixture numbers themselves
            ref = reference(name)
            np.testing.assert_allclose(got[:3], ref.out["sim_unbatched" if "fg" in name else "sim"][0], atol=1e-5)


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student", "visil_head_sym512"])
def test_winograd_comparator_equals_the_official_outputs(cases, name):
    """The Winograd conv2/conv3 (the CPU default on large canvases; these tiny ones would take the
    direct convolution under 'auto') held against the official per-pair path and the official
    fixture numbers themselves, not only against our direct convolution."""
    net, queries, targets, expected = cases[name]
    for options in (ScorerOptions(conv_algorithm="winograd"), dataclasses.replace(TINY, conv_algorithm="winograd")):
        sc = FineScorer(net, options=options)
        assert sc.spec_for(64, 64, (9, 9)).winograd == (2, 4)
        got = sc.similarities(sc.index(queries), sc.index(targets[:3]))
        np.testing.assert_allclose(got, expected[:, :3], atol=2e-6, rtol=0)
        ref = reference(name)
        np.testing.assert_allclose(got[0], ref.out["sim_unbatched" if "fg" in name else "sim"][0], atol=1e-5)


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student", "visil_head_sym512"])
def test_tiled_blocked_multi_canvas_path(cases, name):
    """Tiny canvases: the CNN runs on tiles with halos, f2f by row and column blocks, many canvases
    (FG-Bin: packed codes and the native Hamming kernel, canvases filled by width)."""
    net, queries, targets, expected = cases[name]
    sc = FineScorer(net, options=TINY)
    targets = [t for t in targets if len(t) < 2048][:5]      # keep the canvases tiny
    got = sc.similarities(sc.index(queries), sc.index(targets))
    np.testing.assert_allclose(got, expected[:, :len(targets)], atol=2e-6, rtol=0)
    spec = sc.spec_for(64, 64, (9, 9))
    assert spec.tile_rows and spec.tile_cols
    assert spec.col_block or name == "fg_bin_student"       # packed codes: no float f2f blocks


def test_indexed_input_and_binary_modes_agree(cases):
    net, queries, targets, expected = cases["fg_bin_student"]
    float_codes = [np.asarray(net.index_video(t)) for t in targets]
    packed_codes = [binary.pack_codes(c) for c in float_codes]
    q = np.asarray(net.index_video(queries[0]))
    a = retrieval.score(net, q, float_codes, indexed=True, binary="float")
    b = retrieval.score(net, q, packed_codes, indexed=True, binary="packed")
    c = retrieval.score(net, binary.pack_codes(q), float_codes, indexed=True)
    np.testing.assert_array_equal(a, b)                      # packed == float, bit for bit
    np.testing.assert_array_equal(b, c)
    np.testing.assert_allclose(a, expected[0], atol=2e-6)


def test_packed_frame_similarity_equals_float():
    rng = np.random.default_rng(0)
    q = np.where(rng.random((7, 9, 512)) < 0.5, -1.0, 1.0).astype(np.float32)
    t = np.where(rng.random((11, 9, 512)) < 0.5, -1.0, 1.0).astype(np.float32)
    t[3] = q[2]                                              # identical frames: similarity 1
    spec_f = kernels.KernelSpec(sim="float", bits=512)
    spec_p = kernels.KernelSpec(sim="packed", bits=512)
    f = kernels.frame_to_frame_canvas(jnp.asarray(q), jnp.asarray(t), spec_f)
    p = kernels.frame_to_frame_canvas(jnp.asarray(binary.as_words(binary.pack_codes(q))),
                                      jnp.asarray(binary.as_words(binary.pack_codes(t))), spec_p)
    np.testing.assert_array_equal(np.asarray(f), np.asarray(p))
    ref = binary.hamming_similarity(binary.as_words(binary.pack_codes(q)), binary.as_words(binary.pack_codes(t)), 512)
    np.testing.assert_allclose(np.asarray(p), ref, atol=1e-7)
    assert np.asarray(p)[2, 3] == 1.0
    official = np.einsum("iok,jpk->iopj", q, t).max(2).mean(1) / 512
    np.testing.assert_allclose(np.asarray(f), official, atol=1e-7)


def test_pack_codes_layout_and_zero_codes():
    codes = np.where(np.random.default_rng(1).random((3, 2, 512)) < 0.5, -1.0, 1.0).astype(np.float32)
    packed = binary.pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (3, 2, 64)            # 64 bytes per region
    np.testing.assert_array_equal(binary.unpack_codes(packed), codes)
    np.testing.assert_array_equal(binary.unpack_codes(binary.as_words(packed)), codes)
    codes[0, 0, :5] = 0                                                       # sign(0) = 0 officially
    assert binary.count_zero_codes(codes) == 5
    assert (binary.unpack_codes(binary.pack_codes(codes))[0, 0, :5] == -1).all()  # documented: stored as -1
    with pytest.raises(ValueError):
        binary.pack_codes(np.ones((2, 100)))


def test_rerank_matches_official_mixing():
    z = np.load(os.path.join(os.path.dirname(__file__), "data", "reference", "eval.npz"))
    coarse, fine, sel = z["fivr5k/sims"], z["fivr5k_rerank/fine_sims"], z["fivr5k_rerank/selector_scores"]
    for p in [f"{i / 10:.1f}" for i in range(11)]:
        expected = z[f"fivr5k_rerank/sims_at_{p}"]
        np.testing.assert_array_equal(retrieval.rerank(coarse, fine, sel, float(p), fine_mapped=True), expected)
        # raw fine similarities in [-1, 1] are mapped with s/2 + 0.5 by default
        np.testing.assert_allclose(retrieval.rerank(coarse, 2 * fine - 1, sel, float(p)), expected, atol=1e-12)
    # a single query, unselected fine entries never read
    f0 = np.where(np.isin(np.arange(coarse.shape[1]), retrieval.selection(sel[:1], 0.3)[0]), fine[0], np.nan)
    np.testing.assert_array_equal(retrieval.rerank(coarse[0], f0, sel[0], 0.3, fine_mapped=True),
                                  z["fivr5k_rerank/sims_at_0.3"][0])
    with pytest.raises(ValueError):
        retrieval.rerank(coarse, fine, sel, 1.5)
    with pytest.raises(ValueError):
        retrieval.rerank(coarse, fine[:, :3], sel, 0.5)


def test_coarse_student_score_and_search():
    ref, net = network("cg_student")
    q, d = ref.videos("q"), ref.videos("d")
    got = np.stack([retrieval.score(net, v, d) for v in q])
    np.testing.assert_allclose(got, ref.out["sim_unbatched"], atol=1e-5)
    long = np.concatenate([d[0]] * (40 // len(d[0]) + 1))[:40]           # bucket 48
    vecs = retrieval.coarse_index(net, d + [d[0][:2], long])     # masked length buckets
    np.testing.assert_allclose(vecs[0], ref.out["index_d0"][0], atol=1e-5)
    np.testing.assert_allclose(vecs[:3] @ retrieval.coarse_index(net, q).T, ref.out["sim_unbatched"].T, atol=1e-5)
    np.testing.assert_allclose(vecs[3], np.asarray(net.index_video(d[0][:2]))[0], atol=1e-5)
    np.testing.assert_allclose(vecs[4], np.asarray(net.index_video(long))[0], atol=1e-5)


def _coarse_case():
    rng = np.random.default_rng(3)
    db = rng.standard_normal((1003, 32)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    db[17] = db[5]                                            # a tie: lower index first
    q = np.concatenate([db[5:6], rng.standard_normal((4, 32)).astype(np.float32)])
    return db, q


def test_coarse_topk_chunked():
    db, q = _coarse_case()
    cdb = retrieval.CoarseDatabase(db, chunk=128)
    exp = q @ db.T
    np.testing.assert_allclose(cdb.similarities(q), exp, atol=1e-6)
    s, i = cdb.topk(q, 7)
    order = np.argsort(-exp, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(i, order)
    assert i[0, 0] == 5 and i[0, 1] == 17
    np.testing.assert_allclose(s, np.take_along_axis(exp, order, 1), atol=1e-6)
    half = retrieval.CoarseDatabase(db, dtype="float16", chunk=256)
    np.testing.assert_allclose(half.similarities(q), exp, atol=3e-3)
    if half.upcast:     # CPU: float32 queries against the float16-rounded vectors, by 256-row blocks
        exp16 = q @ db.astype(np.float16).astype(np.float32).T
        np.testing.assert_allclose(half.similarities(q), exp16, atol=1e-6)
        np.testing.assert_allclose(half.topk(q, 7)[0], -np.sort(-exp16, axis=1)[:, :7], atol=1e-6)
    with pytest.raises(FeatureError):
        cdb.topk(np.zeros((2, 31)), 3)
    with pytest.raises(FeatureError):
        retrieval.CoarseDatabase(np.zeros((0, 32)))


_SHARDED = r"""
import json, sys, numpy as np, jax
sys.path.insert(0, sys.argv[1])
from test_retrieval import _coarse_case, _region_case, _segment_case
from dns_jax.retrieval import CoarseDatabase, ShortlistCoarseDatabase
db, q = _coarse_case()
cdb = CoarseDatabase(db, chunk=64)
s, i = cdb.topk(q, 9)
rdb, rq = _region_case()
regions = CoarseDatabase(rdb, dtype="float16", blocks=9)
rs, ri = regions.topk(rq, 7)
sdb, sq = _segment_case()
ci, cs = ShortlistCoarseDatabase(CoarseDatabase(sdb, blocks=27, top=3), 3).candidates(sq, 30)
print(json.dumps({"devices": jax.device_count(), "shards": cdb.n_shards, "region_shards": regions.n_shards,
                  "ci": ci.tolist(), "cs": cs.tolist(),
                  "sims": cdb.similarities(q).tolist(), "s": s.tolist(), "i": i.tolist(),
                  "region_sims": regions.similarities(rq).tolist(), "rs": rs.tolist(), "ri": ri.tolist()}))
"""


def _region_case():
    """450 videos of 9 unit region vectors (16-d, flattened) and 3 queries."""
    rng = np.random.default_rng(7)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)      # noqa: E731
    return (unit(rng.normal(size=(450, 9, 16))).reshape(450, 144).astype(np.float32),
            unit(rng.normal(size=(3, 9, 16))).reshape(3, 144).astype(np.float32))


def _segment_case():
    """203 videos of 3 segments x 9 unit region vectors (16-d, flattened) and 3 queries."""
    rng = np.random.default_rng(8)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)      # noqa: E731
    return (unit(rng.normal(size=(203, 27, 16))).reshape(203, 432).astype(np.float32),
            unit(rng.normal(size=(3, 27, 16))).reshape(3, 432).astype(np.float32))


def test_sharded_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8 and res["shards"] == 8
    db, q = _coarse_case()
    single = retrieval.CoarseDatabase(db, chunk=64, devices=jax.local_devices()[:1])
    s, i = single.topk(q, 9)
    np.testing.assert_array_equal(np.array(res["i"]), i)
    np.testing.assert_allclose(np.array(res["s"]), s, atol=1e-6)
    np.testing.assert_allclose(np.array(res["sims"]), single.similarities(q), atol=1e-6)
    # region vectors (the build's CG student): 8 shards of float16 chunks against the host's best region pairs
    rdb, rq = _region_case()
    want = retrieval.coarse_scores(rq, rdb.astype(np.float16).astype(np.float32), 9)
    assert res["region_shards"] == 8
    np.testing.assert_allclose(np.array(res["region_sims"]), want, atol=2e-3)
    np.testing.assert_allclose(np.array(res["rs"]), -np.sort(-want, axis=1)[:, :7], atol=2e-3)
    np.testing.assert_allclose(np.take_along_axis(want, np.array(res["ri"]), 1), np.array(res["rs"]), atol=2e-3)
    # the shortlist over 8 shards: the single device's pool and exact scores
    sdb, sq = _segment_case()
    ci, cs = retrieval.ShortlistCoarseDatabase(retrieval.CoarseDatabase(sdb, blocks=27, top=3,
                                                                        devices=jax.local_devices()[:1]),
                                               3).candidates(sq, 30)
    np.testing.assert_array_equal(np.array(res["ci"]), ci)
    np.testing.assert_allclose(np.array(res["cs"]), cs, atol=1e-6)
    np.testing.assert_allclose(cs, np.take_along_axis(retrieval.coarse_scores(sq, sdb, 27, top=3), ci, 1), atol=1e-5)


def test_faiss_topk_if_installed():
    if not retrieval.faiss_available():
        pytest.skip("faiss not installed (optional)")
    db, q = _coarse_case()
    s, i = retrieval.FaissCoarseIndex(db).topk(q, 5)
    s2, i2 = retrieval.CoarseDatabase(db).topk(q, 5)
    np.testing.assert_allclose(s, s2, atol=1e-5)


def test_selector_self_similarity_exact():
    ref, net = network("selector")
    d0 = ref.videos("d")[0]
    long = np.concatenate([d0] * (40 // len(d0) + 1))[:40]       # bucket 48: not a power of two
    vids = ref.videos("q") + ref.videos("d")[:1] + [ref.videos("d")[2][:2], d0[:6], long]
    got = retrieval.self_similarities(net, vids)
    np.testing.assert_allclose(got[[0, 2]], [ref.out[k][0, 0] for k in ("index_q0", "index_d0")], atol=1e-6)
    np.testing.assert_allclose(got[[1, 3, 4, 5]], [float(net.index_video(vids[i])[0, 0]) for i in (1, 3, 4, 5)],
                               atol=1e-6)
    z = ref.out["mlp_in"]
    s = retrieval.selector_scores(net, z[::3, 0], z[:3, 1], z[:, 2].reshape(2, 3))
    np.testing.assert_allclose(s.reshape(-1), ref.out["mlp_out"][:, 0], atol=1e-6)


def test_selector_scores_over_several_chunks_equal_one_call():
    """selector_scores runs the MLP in chunks of MLP_CHUNK pairs (the last one padded): the same
    probabilities as one call of the network on every pair."""
    _, net = network("selector")
    rng = np.random.default_rng(4)
    n = 2 * selector.MLP_CHUNK + 37
    qs, ts = rng.uniform(0.2, 0.9, 2).astype(np.float32), rng.uniform(0.2, 0.9, n).astype(np.float32)
    c = rng.uniform(-1, 1, (2, n)).astype(np.float32)
    got = retrieval.selector_scores(net, qs, ts, c)
    z = np.stack([np.broadcast_to(qs[:, None], c.shape), np.broadcast_to(ts[None, :], c.shape), c], -1)
    want = np.asarray(net(z.reshape(-1, 3)))[:, 0].reshape(c.shape)
    np.testing.assert_allclose(got, want, atol=1e-7, rtol=0)


@pytest.mark.parametrize("platform,tt", [("cpu", 2048), ("gpu", 8192)])
def test_memory_grows_like_tq_tt(platform, tt):
    """Working memory of the compiled kernel for a 512 x tt-frame pair, with each platform's
    default options (compiled for whichever device runs the tests): CPU blocks keep it far below
    the official [Tq, R, R, Tt] region tensor and of the order of the [Tq, Tt] matrix; the
    accelerator defaults allow one f2f block of up to `block_bytes` (256 MiB) on top of that,
    which for 512 x 8192 frames is about half of the region tensor (1.4 GB)."""
    _, net = network("fg_att_student")
    opts = ScorerOptions.for_platform(platform)
    sc = FineScorer(net, options=opts)
    tq = 512
    spec = sc.spec_for(tq, tt, (9, 9))
    rmaps = {k: jnp.asarray(v) for k, v in sc._axis([tq], tq, bool(spec.tile_rows))[0].maps("zero").items()}
    cmaps = {k: jnp.asarray(v) for k, v in sc._axis([tt], tt, bool(spec.tile_cols))[0].maps("zero").items()}
    shapes = (jax.ShapeDtypeStruct((tq, 9, 512), jnp.float32), jax.ShapeDtypeStruct((tt, 9, 512), jnp.float32))
    compiled = kernels.canvas_similarity.lower(sc.conv_params, *shapes, rmaps, cmaps, spec=spec).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    region_tensor = tq * 81 * tt * 4
    matrices = 24 * tq * tt * 4 + (64 << 20)
    if platform == "cpu":
        assert temp < region_tensor / 8, (temp, region_tensor)
        assert temp < matrices, temp
    else:
        assert temp < opts.block_bytes + matrices < region_tensor * 0.6, (temp, region_tensor)


def test_bad_input():
    ref, net = network("fg_att_student")
    q, d = ref.videos("q"), ref.videos("d")
    with pytest.raises(FeatureError, match="empty database"):
        retrieval.score(net, q[0], [])
    with pytest.raises(FeatureError, match="512-d"):
        retrieval.score(net, q[0][:, :, :100], d)
    with pytest.raises(FeatureError):
        retrieval.score(net, np.stack([q[0], q[0]]), d)
    with pytest.raises(FeatureError, match="NaN"):
        retrieval.score(net, q[0], [d[0] * np.nan])
    with pytest.raises(FeatureError):
        retrieval.score(net, q[0], [np.zeros((0, 9, 512), np.float32)])
    with pytest.raises(FeatureError, match="packed"):
        retrieval.score(net, q[0], [np.zeros((5, 9, 64), np.uint8)], indexed=True)
    _, sel = network("selector")
    with pytest.raises(TypeError):
        retrieval.score(sel, q[0], d)


def test_weightless_teacher_scores_through_every_public_function():
    """`pretrained.load_teacher('visil_f')` has no parameters at all (no 'params' collection); the
    scoring functions must take it like the visil_f loaded from a .pth (whose attention has weights,
    so the two differ only in those weights: the weightless one is ViSiL_f without attention)."""
    from dns_jax import pretrained
    name, teacher = pretrained.load_teacher("visil_f")
    assert name == "visil_f" and "params" not in teacher.variables
    rng = np.random.default_rng(0)
    videos = [rng.standard_normal((t, 9, 512)).astype(np.float32) for t in (3, 5, 1, 8)]
    expected = [float(teacher.calculate_video_similarity(teacher.index_video(videos[0]), teacher.index_video(t)))
                for t in videos[1:]]
    np.testing.assert_allclose(retrieval.score(teacher, videos[0], videos[1:]), expected, atol=1e-5)
    scorer = retrieval.scorer_for(teacher)
    reps = scorer.index(videos)
    db = scorer.prepare(reps[1:])
    np.testing.assert_allclose(scorer.similarities(reps[:1], db)[0], expected, atol=1e-5)
    np.testing.assert_allclose(FineScorer(teacher).similarities(reps[:1], reps[1:])[0], expected, atol=1e-5)
