"""Pieces of `dns-jax build` that need no video: the selector threshold of small collections, the
settings that decide results and the stage each one belongs to."""
import numpy as np
import pytest

from dns_jax.app.build import (BuildError, BuildOptions, decisive_settings, selector_threshold,
                               stage_of_setting)
from dns_jax.training.pairs import PairSet


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


def test_decisive_settings_and_their_stages():
    opts = BuildOptions(videos="v", workdir="w", fine_steps=7, recipe="build:demo")
    s = decisive_settings(opts, opts.config())
    assert s["fine.steps"] == 7 and s["dims"] == 512 and s["teacher"] == "visil_f"
    assert "teacher_job.batch_size" not in s and "videos" not in s       # speed only / a moved folder is no change
    assert [stage_of_setting(k) for k in ("backbone", "features.fps", "dims", "seed", "fine.steps", "coarse.model.x",
                                          "selector.threshold", "s2vs.num_train_steps")] == [
        "features", "features", "whiten", "teacher", "fine", "coarse", "selector", "teacher"]
