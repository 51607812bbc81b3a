"""Pieces of `dns-jax build` that need no video: the selector threshold of small collections, the
settings that decide results and the stage each one belongs to."""
import h5py
import numpy as np
import pytest

from dns_jax.app.build import (
    BuildError,
    BuildOptions,
    _check_settings,
    decisive_settings,
    selector_target,
    selector_threshold,
    stage_of_setting,
    stage_pca,
    whitening_shrink,
)
from dns_jax.app.workdir import Workdir, WorkdirError
from dns_jax.features.pca import load_pca
from dns_jax.training.pairs import PairSet, selector_labels


def _pairs(fine_scores, coarse_scores):
    """One query (index 0) against len(scores) targets: fine pairs in [-1, 1], coarse cosines."""
    n = len(fine_scores)
    index = [f"v{i}" for i in range(n + 1)]
    fine = PairSet(index, {0: {"positives": {i + 1: float(s) for i, s in enumerate(fine_scores)}, "negatives": {}}})
    coarse = PairSet(index, {0: {"positives": {i + 1: float(s) for i, s in enumerate(coarse_scores)},
                                 "negatives": {}}})
    return fine, coarse


def test_selector_threshold_is_kept_when_both_classes_are_populated():
    rng = np.random.default_rng(0)
    fine = rng.uniform(-1, 1, 40)
    coarse = np.where(np.arange(40) % 2, fine / 2 + 0.5 + 0.5, fine / 2 + 0.5)   # half the pairs off by 0.5
    assert selector_threshold(*_pairs(fine, coarse), 0.2, 8, lambda *_: None) == 0.2


def test_selector_threshold_adapts_on_a_small_collection():
    """Every |fine/2 + 0.5 - coarse| below the recipe's 0.2: one class would be empty; the
    threshold becomes the median difference and splits the pairs in two."""
    fine = np.linspace(-0.5, 0.5, 10)
    diffs = np.linspace(0.01, 0.1, 10)
    coarse = fine / 2 + 0.5 + diffs
    said = []
    thr = selector_threshold(*_pairs(fine, coarse), 0.2, 8, said.append)
    assert thr == pytest.approx(np.median(diffs))
    assert 0 < int((diffs > thr).sum()) < 10 and "median difference" in said[0]
    with pytest.raises(BuildError, match="at least 2 scored pairs"):
        selector_threshold(*_pairs([0.1], [0.3]), 0.2, 8, said.append)


def _coarse_dict(coarse):
    return {(coarse.index[q], coarse.index[t]): s for q, t, s, _ in coarse.all_pairs()}


def test_selector_inversion_labels_mark_the_pairs_the_coarse_order_swaps():
    """Fine (on the coarse scale): two copies 1.0, 0.9 and three others 0.1. Coarse: the second copy
    falls below one other (0.45 < 0.5); the first copy is far off in scale (0.6) but still above
    every other. 'inversion' labels exactly the swapped copy and the other it falls below; 'gap'
    labels the first copy too (off by 0.4) and misses the swap of the other (0.1 vs 0.5: also 0.4)."""
    fine = np.array([1.0, 0.9, 0.1, 0.1, 0.1]) * 2 - 1
    coarse = np.array([0.6, 0.45, 0.5, 0.2, 0.15])
    f, c = _pairs(fine, coarse)
    items, labels, unmatched = selector_labels(f, _coarse_dict(c), 0.2, "inversion")
    assert unmatched == 0 and [it[1] for it in items] == ["v1", "v2", "v3", "v4", "v5"]
    assert labels == [0, 1, 1, 0, 0]
    assert selector_labels(f, _coarse_dict(c), 0.2, "gap")[1] == [1, 1, 1, 0, 0]
    # a fine gap below the margin is no swap worth a re-rank
    assert selector_labels(f, _coarse_dict(c), 0.85, "inversion")[1] == [0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="selector target must be one of gap, inversion, relevance"):
        selector_labels(f, _coarse_dict(c), 0.2, "nearest")


def test_selector_relevance_labels_mark_what_either_student_puts_near_the_top():
    """Fine (on the coarse scale) 1.0, 0.9, 0.1, 0.1, 0.1; coarse 0.15, 0.45, 0.5, 0.2, 0.1. Above
    0.3 by either student: the two copies (one the coarse student misses) and the other it overrates."""
    fine = np.array([1.0, 0.9, 0.1, 0.1, 0.1]) * 2 - 1
    coarse = np.array([0.15, 0.45, 0.5, 0.2, 0.1])
    f, c = _pairs(fine, coarse)
    assert selector_labels(f, _coarse_dict(c), 0.3, "relevance")[1] == [1, 1, 1, 0, 0]
    assert selector_labels(f, _coarse_dict(c), 0.95, "relevance")[1] == [1, 0, 0, 0, 0]
    said = []
    assert selector_target(f, c, 0.3, "relevance", 2, said.append) == (0.3, "relevance")
    # 0.95 leaves one positive: the threshold becomes the median of max(fine, coarse) (1, 0.9, 0.5, 0.2, 0.1)
    thr, target = selector_target(f, c, 0.95, "relevance", 2, said.append)
    assert target == "relevance" and thr == pytest.approx(0.5) and "using the median 0.500" in said[-1]
    assert selector_labels(f, _coarse_dict(c), thr, "relevance")[1] == [1, 1, 0, 0, 0]


def test_quantile_map_puts_fine_scores_where_the_coarse_student_puts_the_same_quantile():
    from dns_jax.app.coarse_recipe import fit_quantile_map, quantile_scores
    rng = np.random.default_rng(0)
    fine = rng.uniform(-1, 1, 1000)
    coarse = 0.3 * fine ** 3 + 0.05           # another, monotone scale
    params = fit_quantile_map(fine, coarse, points=101)
    assert params["rule"] == "quantiles" and len(params["fine"]) == len(params["coarse"]) == 101
    x = np.linspace(-0.95, 0.95, 41)
    np.testing.assert_allclose(quantile_scores(x, params), 0.3 * x ** 3 + 0.05, atol=2e-3)
    # monotone, and beyond the fitted range the fine order is kept (no ties at the ends)
    y = quantile_scores(np.array([-3.0, -2.0, 0.0, 2.0, 3.0]), params)
    assert np.all(np.diff(y) > 0)


def test_selector_target_lowers_the_margin_or_falls_back_to_the_gap():
    fine = np.array([1.0, 0.9, 0.1, 0.1, 0.1]) * 2 - 1
    swapped = np.array([0.6, 0.45, 0.5, 0.2, 0.15])
    said = []
    assert selector_target(*_pairs(fine, swapped), 0.2, "inversion", 2, said.append) == (0.2, "inversion")
    # needs 2 pairs a class: a margin of 0.85 swaps nothing, half of it (0.425) the two pairs
    assert selector_target(*_pairs(fine, swapped), 0.85, "inversion", 2, said.append) == (0.425, "inversion")
    assert "using 0.425" in said[-1]
    ordered = np.array([0.9, 0.8, 0.3, 0.2, 0.1])        # the coarse order is the fine one: nothing swaps
    thr, target = selector_target(*_pairs(fine, ordered), 0.2, "inversion", 2, said.append)
    assert target == "gap" and "labelling by the gap" in " ".join(said)
    assert selector_target(*_pairs(fine, swapped), 0.2, "gap", 2, said.append) == (0.2, "gap")


def test_decisive_settings_and_their_stages():
    opts = BuildOptions(videos="v", workdir="w", fine_steps=7, recipe="build:demo")
    s = decisive_settings(opts, opts.config())
    assert s["fine.steps"] == 7 and s["dims"] == 512 and s["teacher"] == "visil_f"
    assert "teacher_job.batch_size" not in s and "videos" not in s       # speed only / a moved folder is no change
    assert [stage_of_setting(k) for k in ("backbone", "features.fps", "dims", "seed", "fine.steps", "coarse.model.x",
                                          "selector.threshold", "s2vs.num_train_steps")] == [
        "features", "features", "whiten", "teacher", "fine", "coarse", "selector", "teacher"]


def test_whitening_shrink_is_a_pca_setting_checked_before_any_work():
    assert stage_of_setting("features.whitening_shrink") == "pca"
    assert stage_of_setting("features.dims") == "features"
    assert whitening_shrink("auto") == "auto" and whitening_shrink(0) == 0.0 and whitening_shrink("2.5") == 2.5
    for bad in ("fast", -1, float("nan"), True, None):
        with pytest.raises(BuildError, match="features.whitening_shrink must be 'auto' or a number >= 0"):
            whitening_shrink(bad)


def test_stage_pca_writes_the_shrink_its_setting_gives(tmp_path):
    """'auto' = dims / frames of the fit, stored in pca.npz so every reader whitens alike."""
    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo")
    rc = opts.config()
    rc.features.dims = 8
    wd = Workdir(str(tmp_path))
    (tmp_path / "features").mkdir()
    rng = np.random.default_rng(0)
    with h5py.File(wd.raw_features, "w") as h5:
        for i, t in enumerate((7, 13)):
            h5.create_dataset(f"v{i}", data=rng.normal(size=(t, 9, 16)).astype(np.float32))
    info = stage_pca(opts, rc, wd, lambda *_: None, None)
    assert info["frames"] == 20 and info["shrink"] == pytest.approx(8 / 20)
    with np.load(wd.pca) as z:
        V, d, shrink = z["V"], z["d"], float(z["shrink"])
    assert shrink == pytest.approx(0.4)
    top = np.argsort(-d)[:8]
    np.testing.assert_allclose(load_pca(wd.pca, 8)["DVt"], V[:, top] / np.sqrt(d[top] + 0.4 * d[top].mean() + 1e-7),
                               rtol=1e-5)
    rc.features.whitening_shrink = "0"
    stage_pca(opts, rc, wd, lambda *_: None, None)
    np.testing.assert_allclose(load_pca(wd.pca, 8)["DVt"], V[:, top] / np.sqrt(d[top] + 1e-7), rtol=1e-5)


def test_a_work_directory_built_before_the_whitening_shrink_stays_valid(tmp_path):
    """Recorded settings without the key: the build goes on with the whitening it has (and says how to
    refit); a recorded value other than the recipe's is a change like any other."""
    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo")
    rc = opts.config()
    wd = Workdir(str(tmp_path))
    old = decisive_settings(opts, rc)
    old.pop("features.whitening_shrink")
    wd.record_settings(old)
    wd.mark_done("pca")
    said = []
    settings = _check_settings(opts, rc, wd, said.append)
    assert "features.whitening_shrink" not in settings
    assert any("--reset pca refits it" in line for line in said)
    wd.record_settings(dict(old, **{"features.whitening_shrink": 0.0}))
    with pytest.raises(WorkdirError, match="features.whitening_shrink: 0.0 -> 'auto'.*--reset pca"):
        _check_settings(opts, rc, wd, said.append)


@pytest.mark.parametrize("key, default, other, said, stage", [
    ("coarse.init", "mean_pooling", "vlad_pca", "keeps its CG student; --reset coarse trains it again", "coarse"),
    ("coarse.kind", "region_max", "netvlad", "keeps its CG student; --reset coarse builds it again", "coarse"),
    ("coarse.segments", 3, 1, "keeps its CG student; --reset coarse builds it again", "coarse"),
    ("coarse.top_pairs", 3, 1, "keeps its CG student; --reset coarse builds it again", "coarse"),
    ("fine.init", "teacher", "random", "keeps its fine student; --reset fine trains it again", "fine"),
    ("fine.init_noise", 0.1, 0.0, "keeps its fine student; --reset fine trains it again", "fine"),
    ("selector.target", "relevance", "gap", "keeps its selector; --reset selector trains it again", "selector"),
    ("selector.fine_scale", "quantiles", "spread", "--reset selector fits it again", "selector"),
    ("selector.coarse_weight", 0.5, 0.0, "keeps re-ranked scores of the fine student alone; --reset selector takes "
     "the recipe's mix", "selector")])
def test_a_work_directory_built_before_a_setting_existed_keeps_what_it_has(tmp_path, key, default, other, said,
                                                                           stage):
    """Settings that came after work directories existed: one recorded without the key goes on with
    what it was built with (and says how to redo it); a reset of the key's stage takes the recipe's;
    a recorded value other than the recipe's is a change like any other."""
    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo")
    rc = opts.config()
    wd = Workdir(str(tmp_path))
    old = decisive_settings(opts, rc)
    assert old[key] == default and stage_of_setting(key) == stage
    old.pop(key)
    wd.record_settings(old)
    lines = []
    assert key not in _check_settings(opts, rc, wd, lines.append)      # its stage has not run yet
    assert not any(said in line for line in lines)
    assert any(f"its {stage} stage has not run yet and takes the recipe's ({default!r})" in line for line in lines)
    wd.mark_done(stage)
    lines = []
    assert key not in _check_settings(opts, rc, wd, lines.append)
    assert any(said in line for line in lines)
    reset = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo", reset=stage)
    assert _check_settings(reset, rc, wd, lines.append)[key] == default
    wd.record_settings(dict(old, **{key: other}))
    with pytest.raises(WorkdirError, match=f"{key}: {other!r} -> {default!r}.*--reset {stage}"):
        _check_settings(opts, rc, wd, lines.append)


def test_stage_to_rebuild_names_the_first_stage_whose_settings_changed(tmp_path):
    """What the demo rebuilds after a recipe change: nothing for a new or up-to-date work directory,
    the first affected stage otherwise; settings a work directory predates are kept as built."""
    from dns_jax.app.build import stage_to_rebuild
    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo")
    assert stage_to_rebuild(opts) is None
    wd = Workdir(str(tmp_path))
    recorded = decisive_settings(opts, opts.config())
    wd.record_settings(recorded)
    assert stage_to_rebuild(opts) is None
    wd.record_settings(dict(recorded, **{"fine.steps": 200, "selector.steps": 7}))
    assert stage_to_rebuild(opts) == "fine"
    older = dict(recorded)
    older.pop("coarse.init")
    wd.record_settings(older)
    assert stage_to_rebuild(opts) is None
    assert stage_to_rebuild(BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo", teacher="s2vs")) \
        == "teacher"


def test_whitening_shrink_flag_reaches_the_settings_and_the_recorded_options(tmp_path, capsys):
    from dns_jax import cli
    from dns_jax.app.build import recorded_options
    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo", whitening_shrink="0.0", dims=64)
    assert decisive_settings(opts, opts.config())["features.whitening_shrink"] == "0.0"
    assert whitening_shrink(opts.config().features.whitening_shrink) == 0.0
    assert recorded_options(opts, Workdir(str(tmp_path)))["whitening_shrink"] == "0.0"
    for bad in ("-1", "inf", "lots"):
        with pytest.raises(SystemExit) as e:
            cli.main(["build", "--videos", str(tmp_path), "--workdir", str(tmp_path / "w"), "--whitening-shrink", bad])
        assert e.value.code == 2
        assert "--whitening-shrink must be 'auto' or a number >= 0" in capsys.readouterr().err
