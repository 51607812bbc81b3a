"""The CG student's region vectors (`region_max`): each region averaged over the video, a pair
scored by its best region pair, and over temporal segments (`num_segments`); the coarse search
(`CoarseDatabase(blocks=...)`, `coarse_scores`), the pair scorer, the build's `coarse.kind` and
`coarse.segments`, and the faiss stage's refusal."""
import numpy as np
import pytest

from dns_jax import checkpoint, pretrained
from dns_jax.app import coarse_recipe
from dns_jax.layers import block_max_pairs, block_max_similarity, mean_of_best
from dns_jax.models.registry import build_module
from dns_jax.retrieval import CoarseDatabase, coarse_scores, top_pairs, vector_blocks
from dns_jax.retrieval.dns import coarse_index

D = 16


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _region_max_reference(a, b):
    """Plain numpy: regions [T, 9, D] -> per-region means of unit vectors -> best of 9 x 9 cosines."""
    ra, rb = _unit(_unit(a).mean(0)), _unit(_unit(b).mean(0))
    return float(max(ra[i] @ rb[j] for i in range(9) for j in range(9)))


@pytest.fixture(scope="module")
def region_net(tmp_path_factory):
    """The build's region-vector CG student as the coarse stage writes it (neutral attention)."""
    config = coarse_recipe.region_max_config(D)
    variables = coarse_recipe.initial_variables(config, [], seed=0)
    path = str(tmp_path_factory.mktemp("rm") / "cg")
    checkpoint.save_network(path, "cg_student", config, variables)
    return pretrained.load("cg_student", path)


def _videos(n, seed=0, lengths=(3, 5, 7, 4, 6)):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(lengths[i % len(lengths)], 9, D)).astype(np.float32) for i in range(n)]


def _segment_reference(x, segments, min_frames=4):
    """Plain numpy: [T, 9, D] -> [segments, 9, D] unit vectors, frame t of T in segment
    floor(t * segments / T), an empty segment (T < segments) the whole video's. Videos under
    `min_frames` are first doubled until they have that many, as every indexing path does."""
    while len(x) < min_frames:
        x = np.concatenate([x, x])
    u = _unit(x)
    part = np.arange(len(x)) * segments // len(x)
    return np.stack([_unit(u[part == s].mean(0) if np.any(part == s) else u.mean(0)) for s in range(segments)])


@pytest.fixture(scope="module")
def segment_net(tmp_path_factory):
    """The build's CG student over 3 temporal segments (coarse.segments=3), as the coarse stage
    writes it."""
    config = coarse_recipe.region_max_config(D, segments=3)
    variables = coarse_recipe.initial_variables(config, [], seed=0)
    path = str(tmp_path_factory.mktemp("rm3") / "cg")
    checkpoint.save_network(path, "cg_student", config, variables)
    return pretrained.load("cg_student", path)


def test_block_max_similarity_by_hand():
    a = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)          # blocks (1, 0), (0, 1)
    b = np.array([[0.6, 0.8, -1.0, 0.0], [0.0, -1.0, -0.6, -0.8]], np.float32)
    # row 0: best of (1,0).(0.6,0.8)=0.6, (1,0).(-1,0)=-1, (0,1).(0.6,0.8)=0.8, (0,1).(-1,0)=0 -> 0.8
    # row 1: (1,0).(0,-1)=0, (1,0).(-0.6,-0.8)=-0.6, (0,1).(0,-1)=-1, (0,1).(-0.6,-0.8)=-0.8 -> 0
    np.testing.assert_allclose(np.asarray(block_max_similarity(a, b, 2)), [[0.8, 0.0]], atol=1e-7)
    np.testing.assert_allclose(coarse_scores(a, b, 2), [[0.8, 0.0]], atol=1e-7)
    np.testing.assert_allclose(np.asarray(block_max_similarity(a, b, 1)), a @ b.T, atol=1e-7)
    with pytest.raises(ValueError, match="do not split into 3 blocks"):
        block_max_similarity(a, b, 3)


def test_region_vectors_and_similarity_equal_plain_numpy(region_net):
    videos = _videos(5)
    assert region_net.module.vector_blocks == 9 and vector_blocks(region_net) == 9
    one = np.concatenate([np.asarray(region_net.index_video(v)) for v in videos])
    batched = coarse_index(region_net, videos)                 # padded, masked batches
    np.testing.assert_allclose(batched, one, atol=2e-6)
    sims = np.asarray(region_net.calculate_video_similarity(one, one))
    want = np.array([[_region_max_reference(a, b) for b in videos] for a in videos])
    np.testing.assert_allclose(sims, want, atol=2e-6)
    np.testing.assert_allclose(coarse_scores(one, one, 9), want, atol=2e-6)
    # the training forward scores (anchor, positive) and (anchor, negative) rows the same way
    pos, neg, _ = region_net.module.apply(region_net.variables, one[:2], one[2:4], one[3:5])
    np.testing.assert_allclose(np.asarray(pos)[:, 0], [want[0, 2], want[1, 3]], atol=2e-6)
    np.testing.assert_allclose(np.asarray(neg)[:, 0], [want[0, 3], want[1, 4]], atol=2e-6)


def test_segmented_region_vectors_equal_plain_numpy(segment_net):
    """3 segments: 27 unit vectors per video, each region's mean over its stretch of the video; one
    by one, in padded masked batches, through the coarse search and the training forward alike."""
    videos = _videos(6, seed=2, lengths=(1, 2, 3, 5, 7, 8))
    # the module alone, unrepeated and masked: a 2-frame video leaves its last stretch empty
    short = videos[1]
    padded, mask = np.zeros((2, 4, 9, D), np.float32), np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    padded[0, :2], padded[1] = short, videos[3][:4]
    got = np.asarray(segment_net.module.apply(segment_net.variables, padded, mask, method="index_video"))
    np.testing.assert_allclose(got[0].reshape(3, 9, D), _segment_reference(short, 3, min_frames=1), atol=2e-6)
    np.testing.assert_allclose(got[1].reshape(3, 9, D), _segment_reference(videos[3][:4], 3), atol=2e-6)
    assert segment_net.module.vector_blocks == 27 and vector_blocks(segment_net) == 27
    one = np.concatenate([np.asarray(segment_net.index_video(v)) for v in videos])
    refs = [_segment_reference(v, 3) for v in videos]
    np.testing.assert_allclose(one.reshape(6, 3, 9, D), np.stack(refs), atol=2e-6)
    np.testing.assert_allclose(coarse_index(segment_net, videos), one, atol=2e-6)
    want = np.array([[float((a.reshape(27, D) @ b.reshape(27, D).T).max()) for b in refs] for a in refs])
    np.testing.assert_allclose(np.asarray(segment_net.calculate_video_similarity(one, one)), want, atol=2e-6)
    np.testing.assert_allclose(coarse_scores(one, one, 27), want, atol=2e-6)
    cdb = CoarseDatabase(one, blocks=27)
    np.testing.assert_allclose(cdb.similarities(one), want, atol=2e-6)
    pos, neg, _ = segment_net.module.apply(segment_net.variables, one[:2], one[2:4], one[3:5])
    np.testing.assert_allclose(np.asarray(pos)[:, 0], [want[0, 2], want[1, 3]], atol=2e-6)
    np.testing.assert_allclose(np.asarray(neg)[:, 0], [want[0, 3], want[1, 4]], atol=2e-6)


def test_a_copied_stretch_matches_its_segment(segment_net, region_net):
    """A video of three 2-frame scenes and a copy of its middle scene: the segmented vectors meet
    it exactly (cosine 1), one average over the source video does not."""
    rng = np.random.default_rng(4)
    scenes = [np.repeat(rng.normal(size=(1, 9, D)).astype(np.float32), 2, axis=0) for _ in range(3)]
    source, copy = np.concatenate(scenes), scenes[1]
    seg = np.asarray(segment_net.calculate_video_similarity(segment_net.index_video(copy),
                                                            segment_net.index_video(source)))[0, 0]
    whole = np.asarray(region_net.calculate_video_similarity(region_net.index_video(copy),
                                                             region_net.index_video(source)))[0, 0]
    assert seg == pytest.approx(1.0, abs=1e-5)
    assert whole < 0.9


def test_segments_need_region_max_and_a_positive_count():
    with pytest.raises(ValueError, match="num_segments 3: a positive count, above 1 only with region_max"):
        build_module("cg_student", dict(dims=D, num_segments=3)).init(np.zeros(2, np.uint32), method="init_all")
    with pytest.raises(ValueError, match="num_segments 0"):
        build_module("cg_student", dict(coarse_recipe.region_max_config(D), num_segments=0)).init(
            np.zeros(2, np.uint32), method="init_all")
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="coarse.segments .*: expected a whole number >= 1"):
            coarse_recipe.region_max_config(D, bad)
    for bad in (0, 82, True, 1.0):
        with pytest.raises(ValueError, match="coarse.top_pairs .*: expected a whole number from 1 to 81"):
            coarse_recipe.region_max_config(D, 1, bad)
    with pytest.raises(ValueError, match="top_pairs 100: 1 to 81"):
        build_module("cg_student", dict(coarse_recipe.region_max_config(D), top_pairs=100)).init(
            np.zeros(2, np.uint32), method="init_all")


def test_attention_weights_the_frames(region_net):
    """A trained context vector weights frames unequally (no longer the plain mean); the build's
    start (zero context vector) weights them all alike."""
    v = _videos(1, seed=3, lengths=(6,))[0]
    params = dict(region_net.variables["params"])
    att = dict(params["attention_layer"])
    att["context_vector"] = {"kernel": np.random.default_rng(0).normal(size=(D, 1)).astype(np.float32) * 3}
    params["attention_layer"] = att
    weighted = np.asarray(region_net.module.apply({"params": params}, v, method="index_video"))
    plain = np.asarray(region_net.index_video(v))
    assert np.abs(weighted - plain).max() > 1e-3
    np.testing.assert_allclose(plain.reshape(9, D), _unit(_unit(v).mean(0)), atol=2e-6)


def test_mean_of_the_best_pairs_by_hand():
    """top=2: the mean of the two largest block-pair products, everywhere a pair is scored."""
    a = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)          # blocks (1, 0), (0, 1)
    b = np.array([[0.6, 0.8, -1.0, 0.0], [0.0, -1.0, -0.6, -0.8]], np.float32)
    # row 0 products 0.6, -1, 0.8, 0 -> (0.8 + 0.6) / 2; row 1: 0, -0.6, -1, -0.8 -> (0 - 0.6) / 2
    want = [[0.7, -0.3]]
    np.testing.assert_allclose(np.asarray(block_max_similarity(a, b, 2, top=2)), want, atol=1e-7)
    np.testing.assert_allclose(coarse_scores(a, b, 2, top=2), want, atol=1e-7)
    np.testing.assert_allclose(np.asarray(block_max_pairs(np.repeat(a, 2, 0), b, 2, top=2)), want[0], atol=1e-7)
    np.testing.assert_allclose(CoarseDatabase(b, blocks=2, top=2).similarities(a), want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mean_of_best(np.array([[3.0, 1.0, 2.0]]), 3)), [2.0])
    with pytest.raises(ValueError, match="top must be 1 to 4"):
        block_max_similarity(a, b, 2, top=5)
    with pytest.raises(ValueError, match="top must be 1 to 1"):
        block_max_similarity(a, b, 1, top=2)            # one vector per video: one pair, not silently the max
    with pytest.raises(ValueError, match="top 5 of 4 block pairs"):
        CoarseDatabase(b, blocks=2, top=5)


@pytest.fixture(scope="module")
def top3_net(tmp_path_factory):
    """The build recipe's CG student: 3 segments, a pair scored by the mean of its 3 best pairs."""
    config = coarse_recipe.region_max_config(D, segments=3, top_pairs=3)
    variables = coarse_recipe.initial_variables(config, [], seed=0)
    path = str(tmp_path_factory.mktemp("rm3t") / "cg")
    checkpoint.save_network(path, "cg_student", config, variables)
    return pretrained.load("cg_student", path)


def test_top_pairs_score_the_mean_of_the_best_pairs_everywhere(top3_net, tmp_path):
    """The network, the host scores, the device database (all scores and top-k), the pair scorer and
    the training forward all give the mean of the 3 best of the 27 x 27 vector-pair cosines."""
    from dns_jax.datasets.stores import open_features
    from dns_jax.training.scoring import PairScorer

    videos = _videos(5, seed=6, lengths=(4, 5, 7, 8, 6))
    assert top_pairs(top3_net) == 3 and vector_blocks(top3_net) == 27
    one = np.concatenate([np.asarray(top3_net.index_video(v)) for v in videos])
    refs = [_segment_reference(v, 3) for v in videos]
    want = np.array([[float(np.sort((a.reshape(27, D) @ b.reshape(27, D).T).ravel())[-3:].mean()) for b in refs]
                     for a in refs])
    np.testing.assert_allclose(np.asarray(top3_net.calculate_video_similarity(one, one)), want, atol=2e-6)
    np.testing.assert_allclose(coarse_scores(one, one, 27, top=3), want, atol=2e-6)
    cdb = CoarseDatabase(one, blocks=27, top=3)
    np.testing.assert_allclose(cdb.similarities(one), want, atol=2e-6)
    scores, idx = cdb.topk(one[:2], 3)
    np.testing.assert_allclose(scores, np.sort(want[:2], 1)[:, ::-1][:, :3], atol=2e-6)
    pos, neg, _ = top3_net.module.apply(top3_net.variables, one[:2], one[2:4], one[3:5])
    np.testing.assert_allclose(np.asarray(pos)[:, 0], [want[0, 2], want[1, 3]], atol=2e-6)
    np.testing.assert_allclose(np.asarray(neg)[:, 0], [want[0, 3], want[1, 4]], atol=2e-6)
    path = str(tmp_path / "f.npz")
    np.savez(path, **{f"v{i}": v for i, v in enumerate(videos)})
    scorer = PairScorer("cg_student", top3_net.module, top3_net.variables, batch_size=4)
    np.testing.assert_allclose(scorer.score(open_features(path), [("v0", "v1"), ("v2", "v4")]),
                               [want[0, 1], want[2, 4]], atol=2e-6)
    # the mean of 3 is below the best pair alone, which it is not at top_pairs=1
    assert np.all(want[~np.eye(5, dtype=bool)] < coarse_scores(one, one, 27)[~np.eye(5, dtype=bool)])


def test_region_max_takes_no_transformer_or_netvlad():
    with pytest.raises(ValueError, match="transformer=False and netvlad=False"):
        build_module("cg_student", dict(dims=D, region_max=True)).init(
            np.zeros(2, np.uint32), method="init_all")


@pytest.mark.parametrize("dtype, atol", [("float32", 2e-6), ("float16", 2e-3)])
def test_coarse_database_with_blocks_equals_host_scores(dtype, atol):
    """Chunked (shrunk by blocks^2 to 200 rows here, N not a multiple) similarities and top-k of
    region vectors equal the host computation."""
    rng = np.random.default_rng(1)
    n, q = 450, 3
    db = _unit(rng.normal(size=(n, 9, D))).reshape(n, 9 * D).astype(np.float32)
    queries = _unit(rng.normal(size=(q, 9, D))).reshape(q, 9 * D).astype(np.float32)
    cdb = CoarseDatabase(db, dtype=dtype, blocks=9)
    assert cdb.chunk == 200
    want = coarse_scores(queries, db.astype(dtype).astype(np.float32), 9)
    np.testing.assert_allclose(cdb.similarities(queries), want, atol=atol)
    scores, idx = cdb.topk(queries, 7)
    for r in range(q):
        np.testing.assert_allclose(scores[r], np.sort(want[r])[::-1][:7], atol=atol)
        np.testing.assert_allclose(want[r, idx[r]], scores[r], atol=atol)
    with pytest.raises(ValueError, match="do not split into 5 blocks"):
        CoarseDatabase(db, blocks=5)


def test_pair_scorer_scores_region_pairs(region_net, tmp_path):
    from dns_jax.datasets.stores import open_features
    from dns_jax.training.scoring import PairScorer

    videos = _videos(4, seed=5)
    path = str(tmp_path / "f.npz")
    np.savez(path, **{f"v{i}": v for i, v in enumerate(videos)})
    scorer = PairScorer("cg_student", region_net.module, region_net.variables, batch_size=4)
    got = scorer.score(open_features(path), [("v0", "v1"), ("v2", "v3"), ("v1", "v1")])
    want = [_region_max_reference(videos[0], videos[1]), _region_max_reference(videos[2], videos[3]), 1.0]
    np.testing.assert_allclose(got, want, atol=2e-6)
    # the one-vector CG student through the same path: plain cosines of its vectors
    from tests.helpers import random_network
    config, variables = random_network("cg_student", 1, dims=D, netvlad_clusters=4, netvlad_outdims=8,
                                       transformer_feedforward_dims=16, transformer_heads=2)
    module = build_module("cg_student", config)
    scorer = PairScorer("cg_student", module, variables, batch_size=4)
    got = scorer.score(open_features(path), [("v0", "v1"), ("v2", "v3")])
    vecs = [np.asarray(module.apply(variables, videos[i], method="index_video"))[0] for i in range(4)]
    np.testing.assert_allclose(got, [vecs[0] @ vecs[1], vecs[2] @ vecs[3]], atol=2e-6)


def test_the_faiss_stage_refuses_region_vectors(tmp_path, region_net):
    pytest.importorskip("faiss")
    from dns_jax.index import Index, compressed
    from tests.helpers import network

    fine, selector = network("fg_bin_student")[1], network("selector")[1]
    index = Index.create(str(tmp_path / "idx"), fine, region_net, selector, "packed", 64)
    index.set_coarse_search(compressed.FAISS_IVFPQ)
    with pytest.raises(compressed.CompressedCoarseError, match="region_max coarse network.*--coarse exact"):
        compressed.sync(index, log=lambda m: None)
    index.close()


def test_the_build_refuses_faiss_for_region_vectors_before_any_work(tmp_path):
    from dns_jax.app.build import BuildError, BuildOptions, _check_settings
    from dns_jax.app.workdir import Workdir

    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo", coarse_search="faiss-ivfpq")
    rc = opts.config()
    assert rc.coarse.kind == "region_max"
    with pytest.raises(BuildError, match="--coarse faiss-ivfpq needs one vector per video.*coarse.kind 'netvlad'"):
        _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    rc.coarse.kind = "netvlad"
    assert _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)["coarse.kind"] == "netvlad"


def test_coarse_kind_flag(tmp_path, capsys):
    """`dns-jax build --coarse faiss-ivfpq` with the recipe's region vectors is one line naming the
    way out; `--coarse-kind netvlad` sets coarse.kind (and is recorded for add/remove)."""
    from dns_jax import cli
    from dns_jax.app.build import BuildOptions, recorded_options
    from dns_jax.app.workdir import Workdir

    (tmp_path / "videos").mkdir()
    args = ["build", "--videos", str(tmp_path / "videos"), "--workdir", str(tmp_path / "w"), "--coarse", "faiss-ivfpq"]
    assert cli.main(args) == 2
    assert "--coarse-kind netvlad" in capsys.readouterr().err
    opts = BuildOptions(videos="v", workdir=str(tmp_path / "w2"), coarse_kind="netvlad")
    assert opts.config().coarse.kind == "netvlad"
    assert recorded_options(opts, Workdir(str(tmp_path / "w2")))["coarse_kind"] == "netvlad"


def test_coarse_segments_flag(tmp_path, capsys, monkeypatch):
    """`--coarse-segments S` sets coarse.segments (recorded for add/remove); the recipe's is 3 (with
    the mean of the 3 best pairs); a count below 1 is one line from argparse."""
    from dns_jax import cli
    from dns_jax.app.build import BuildOptions, recorded_options
    from dns_jax.app.workdir import Workdir

    recipe = BuildOptions(videos="v", workdir=str(tmp_path / "w")).config()
    assert recipe.coarse.segments == 3 and recipe.coarse.top_pairs == 3
    opts = BuildOptions(videos="v", workdir=str(tmp_path / "w"), coarse_segments=1)
    assert opts.config().coarse.segments == 1
    assert recorded_options(opts, Workdir(str(tmp_path / "w")))["coarse_segments"] == 1
    (tmp_path / "videos").mkdir()
    given = []
    monkeypatch.setattr("dns_jax.commands.build.run_build", given.append)
    assert cli.main(["build", "--videos", str(tmp_path / "videos"), "--workdir", str(tmp_path / "w"),
                     "--coarse-segments", "2"]) == 0
    assert given[0].coarse_segments == 2 and given[0].config().coarse.segments == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["build", "--videos", str(tmp_path / "videos"), "--workdir", str(tmp_path / "w"),
                  "--coarse-segments", "0"])
    assert e.value.code == 2
    assert "--coarse-segments: expected a whole number >= 1, got '0'" in capsys.readouterr().err
