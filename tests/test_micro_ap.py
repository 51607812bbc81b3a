"""Micro-AP (µAP) and S2VS's evaluation protocol: hand-computed cases of the metric (ties, positives
never retrieved, missing videos, all negatives, no positive), FIVR's detection tasks with and without
the easy duplicates, VCDB with and without distractors, the annotation converter, and the µAP
columns of `dns-jax evaluate`.

Every expected value below is worked out by hand in the comments (ranked list -> precision at each
positive -> sum / number of positives)."""
import collections
import csv
import gzip
import importlib.util
import json
import math
import os
import pathlib
import pickle
import sys
import warnings

import numpy as np
import pytest

from dns_jax.evaluation import (FIVR, VCDB, EvaluationWarning, micro_ap, micro_average_precision, pool_pairs,
                                s2vs_order)
from dns_jax.evaluation.benchmarks import evaluate_with_s2vs
from dns_jax.evaluation.run import AnnotatedBenchmark, load_benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quiet(method, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return method(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# the metric

def test_micro_ap_hand_computed():
    # ranked: 0.9 P, 0.8 N, 0.7 P, 0.6 N -> precision 1/1 and 2/3 at the positives
    assert micro_average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == pytest.approx((1 + 2 / 3) / 2)
    # the input order does not matter when no score is tied
    assert micro_average_precision([0, 1, 0, 1], [0.6, 0.7, 0.8, 0.9]) == pytest.approx((1 + 2 / 3) / 2)
    # a third positive that was never scored: same hits, one more positive in the denominator
    assert micro_average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6], n_positives=3) == pytest.approx(
        (1 + 2 / 3) / 3)
    # every pair negative while positives exist: nothing retrieved
    assert micro_average_precision([0, 0, 0], [0.3, 0.2, 0.1], n_positives=2) == 0.0
    # no positive at all: undefined
    assert math.isnan(micro_average_precision([0, 0], [0.3, 0.2]))
    assert math.isnan(micro_average_precision([], []))
    with pytest.raises(ValueError, match="2 pairs but scores has 3"):
        micro_average_precision([1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="n_positives=1"):
        micro_average_precision([1, 1], [0.1, 0.2], n_positives=1)


def test_ties_rank_the_later_pair_first_and_nan_last():
    # equal scores: the pair pooled later ranks first (S2VS's reversed ascending sort)
    assert micro_average_precision([1, 0], [0.5, 0.5]) == pytest.approx(1 / 2)    # N, P
    assert micro_average_precision([0, 1], [0.5, 0.5]) == 1.0                     # P, N
    # three-way tie P, N, P in input order -> ranked P(3rd), N(2nd), P(1st): P, N, P -> 1/1, 2/3
    assert micro_average_precision([1, 0, 1], [0.2, 0.2, 0.2]) == pytest.approx((1 + 2 / 3) / 2)
    assert list(s2vs_order([0.2, 0.5, 0.2, 0.1, 0.5])) == [4, 1, 2, 0, 3]
    # NaN ranks below every number: the positive with NaN is last of three
    assert micro_average_precision([1, 0, 0], [np.nan, 0.1, -5.0]) == pytest.approx(1 / 3)
    assert list(s2vs_order([np.nan, 0.1, np.nan])) == [1, 2, 0]


def test_pooling_rules():
    sims = {"a": {"a": 1.0, "x": 0.9, "y": 0.4, "z": 0.8},      # z is not available
            "b": {"x": 0.7, "y": 0.95},
            "extra": {"x": 0.99}}
    positives = {"a": {"x", "w", "z"}, "b": {"y", "b"}, "c": {"x"}}
    all_db = {"a", "b", "x", "y", "w"}
    labels, scores, n_pos = pool_pairs(sims, positives, queries=["a", "b", "c"], all_db=all_db)
    # a: its own score and z (not available) are skipped; b: in its own positives, dropped; c: no results
    assert labels.tolist() == [True, False, False, True] and scores.tolist() == [0.9, 0.4, 0.7, 0.95]
    # positives counted: a -> x, w (w never scored; z not available); b -> y
    assert n_pos == 3
    # ranked 0.95 P, 0.9 P, 0.7 N, 0.4 N -> (1/1 + 2/2) / 3
    assert micro_ap(sims, positives, queries=["a", "b", "c"], all_db=all_db) == pytest.approx(2 / 3)
    # keeping a query among its own positives (S2VS's VCDB rule): b counts itself, never retrieved
    assert micro_ap(sims, positives, queries=["a", "b"], all_db=all_db, drop_self=False) == pytest.approx(2 / 4)
    # default: every key of `similarities` in its order, no availability restriction ('extra' has no
    # positive but its pair is pooled: 0.99 N first, then 0.95 P, 0.9 P, 0.8 P (z), 0.7, 0.4)
    assert micro_ap(sims, positives) == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 4)


# ------------------------------------------------------------------------------------------------
# FIVR with S2VS's protocol

def _toy_fivr(tmp_path, annotation, queries, database, easy=None):
    path = tmp_path / "toy_fivr.json"
    path.write_text(json.dumps({"format": "dns_jax.evaluation/fivr/1", "name": "toy", "queries": queries,
                                "database": database, "annotation": annotation}))
    bench = AnnotatedBenchmark(str(path))
    if easy is not None:
        bench.easy_duplicates = frozenset(easy)
    return bench


TOY_ANNOTATION = {"q1": {"ND": ["a"], "DS": ["b"], "CS": ["c"], "IS": ["d"]},
                  "q2": {"ND": ["e"], "IS": ["a"]}}
TOY_SIMS = {"q1": {"a": 0.9, "b": 0.3, "c": 0.8, "d": 0.1, "e": 0.5, "q1": 1.0},
            "q2": {"a": 0.7, "b": 0.2, "c": 0.6, "d": 0.4, "e": 0.85}}
# pooled ranking of all pairs: .9 q1a, .85 q2e, .8 q1c, .7 q2a, .6 q2c, .5 q1e, .4 q2d, .3 q1b, .2 q2b, .1 q1d
EXPECTED = {
    # DSVR: q1 {a, b}: a 1/1, b at 4 -> (1 + 2/4) / 2; q2 {e}: first -> 1
    "DSVR": (0.75 + 1) / 2,
    # DSVD: positives q1a (1st), q2e (2nd), q1b (8th) -> (1/1 + 2/2 + 3/8) / 3
    "DSVD": (1 + 1 + 3 / 8) / 3,
    # CSVR: q1 {a, b, c}: a 1/1, c 2/2, b 3/4 -> 2.75/3; q2: 1
    "CSVR": ((1 + 1 + 3 / 4) / 3 + 1) / 2,
    # CSVD: q1a, q2e, q1c at 1, 2, 3; q1b at 8 -> (1 + 1 + 1 + 4/8) / 4
    "CSVD": (1 + 1 + 1 + 4 / 8) / 4,
    # ISVR: q1 {a, b, c, d}: 1/1, 2/2, 3/4, 4/5; q2 {e, a}: 1/1, 2/2
    "ISVR": ((1 + 1 + 3 / 4 + 4 / 5) / 4 + 1) / 2,
    # ISVD: q1a, q2e, q1c, q2a at 1-4; q1b 5/8; q1d 6/10
    "ISVD": (4 + 5 / 8 + 6 / 10) / 6,
    # without the easy duplicate a: pooled .85 q2e, .8 q1c, .6 q2c, .5 q1e, .4 q2d, .3 q1b, .2 q2b, .1 q1d
    # DSVR_h: q1 {b}: c, e, b -> 1/3; q2 {e}: 1
    "DSVR_h": (1 / 3 + 1) / 2,
    # DSVD_h: q2e 1/1, q1b 2/6
    "DSVD_h": (1 + 2 / 6) / 2,
    # CSVR_h: q1 {b, c}: c 1/1, b 2/3; q2: 1
    "CSVR_h": ((1 + 2 / 3) / 2 + 1) / 2,
    # CSVD_h: q2e 1/1, q1c 2/2, q1b 3/6
    "CSVD_h": (1 + 1 + 3 / 6) / 3,
    # ISVR_h: q1 {b, c, d}: c 1/1, b 2/3, d 3/4; q2 {e} (a left out): 1
    "ISVR_h": ((1 + 2 / 3 + 3 / 4) / 3 + 1) / 2,
    # ISVD_h: q2e 1/1, q1c 2/2, q1b 3/6, q1d 4/8
    "ISVD_h": (1 + 1 + 3 / 6 + 4 / 8) / 4,
}


def test_fivr_tasks_and_easy_duplicates(tmp_path):
    bench = _toy_fivr(tmp_path, TOY_ANNOTATION, ["q1", "q2"], list("abcde"), easy={"a"})
    got = quiet(bench.evaluate_s2vs, TOY_SIMS)
    assert list(got) == ["DSVR", "CSVR", "ISVR", "DSVD", "CSVD", "ISVD",
                         "DSVR_h", "CSVR_h", "ISVR_h", "DSVD_h", "CSVD_h", "ISVD_h"]
    for key, value in EXPECTED.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    # the official (DnS) mAP is unchanged and, without ties, equals S2VS's mAP here
    official = quiet(bench.evaluate, TOY_SIMS)
    assert set(official) == {"DSVR", "CSVR", "ISVR"}
    for task in official:
        assert official[task] == pytest.approx(EXPECTED[task], abs=1e-12)
    # arrays aligned with the database give the same numbers
    arrays = {q: np.array([s[v] for v in bench.get_database()]) for q, s in TOY_SIMS.items()}
    got_arrays = quiet(bench.evaluate_s2vs, arrays)
    for key in EXPECTED:
        assert got_arrays[key] == pytest.approx(EXPECTED[key], abs=1e-12), key
    # no easy-duplicate list: no '_h' keys
    plain = _toy_fivr(tmp_path, TOY_ANNOTATION, ["q1", "q2"], list("abcde"))
    assert list(quiet(plain.evaluate_s2vs, TOY_SIMS)) == ["DSVR", "CSVR", "ISVR", "DSVD", "CSVD", "ISVD"]


def test_fivr_missing_videos_and_queries(tmp_path):
    bench = _toy_fivr(tmp_path, TOY_ANNOTATION, ["q1", "q2", "q3"], list("abcde"), easy={"a"})
    # b is not available: left out of q1's pairs and positives; q3 has no results; q2 lost its score for e
    sims = {"q1": dict(TOY_SIMS["q1"]), "q2": {k: v for k, v in TOY_SIMS["q2"].items() if k != "e"}}
    with pytest.warns(EvaluationWarning, match="q3"):
        got = bench.evaluate_s2vs(sims, all_db=set("acde"))
    # DSVD pooled: .9 q1a P, .8 q1c, .7 q2a, .6 q2c, .5 q1e, .4 q2d, .1 q1d; positives: q1a, q2e (never
    # scored) -> (1/1) / 2
    assert got["DSVD"] == pytest.approx(1 / 2)
    # DSVR: q1 {a}: 1; q2 {e}: 0 -> 0.5
    assert got["DSVR"] == pytest.approx(1 / 2)
    # without a: q1 has no DSVR positive left (left out of the mean); q2 {e} never retrieved -> 0
    assert got["DSVR_h"] == 0.0
    assert any("left out of the mAP" in note and "DSVR_h" in note for note in bench.last_report.notes)
    assert bench.last_report.missing_queries == ["q3"]
    # DSVD_h: positives q2e only, never scored -> 0
    assert got["DSVD_h"] == 0.0


def test_fivr_ties_follow_the_pooling_order(tmp_path):
    bench = _toy_fivr(tmp_path, {"q1": {"ND": ["a"]}, "q2": {"ND": ["c"]}}, ["q1", "q2"], list("abc"))
    # q1's positive a and q2's negative b share the top score 0.5; q2's positive c is last
    sims = {"q1": {"a": 0.5}, "q2": {"b": 0.5, "c": 0.1}}
    # pooled q1a, q2b, q2c: the later q2b ranks above q1a: N, P, P -> (1/2 + 2/3) / 2
    assert quiet(bench.evaluate_s2vs, sims)["DSVD"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # q2 first in the dict: pooled q2b, q2c, q1a -> q1a ranks first: P, N, P -> (1 + 2/3) / 2
    swapped = {"q2": sims["q2"], "q1": sims["q1"]}
    assert quiet(bench.evaluate_s2vs, swapped)["DSVD"] == pytest.approx((1 + 2 / 3) / 2)
    # the same through the public pooled function
    assert micro_ap(swapped, {"q1": ["a"], "q2": ["c"]}) == pytest.approx((1 + 2 / 3) / 2)


def test_fivr_no_positive_and_bad_input(tmp_path):
    bench = _toy_fivr(tmp_path, {"q1": {"ND": ["a"]}}, ["q1", "q2"], list("ab"))
    with pytest.warns(EvaluationWarning, match="undefined"):
        got = bench.evaluate_s2vs({"q2": {"a": 0.3, "b": 0.1}})
    assert math.isnan(got["DSVD"]) and math.isnan(got["DSVR"])
    with pytest.raises(TypeError, match="mapping"):
        bench.evaluate_s2vs([("q1", {})])


def test_fivr_packaged_s2vs_labels_and_easy_duplicates():
    fivr = FIVR("5k")
    easy = fivr.easy_duplicates
    assert len(easy) == 4873 and easy <= set(FIVR("200k").get_database())
    labels = fivr.s2vs_annotation()
    # S2VS's file moves AeAuCxdv1KI from IS to DS for query f5AgpPVG9vM, and drops a few labels
    assert "AeAuCxdv1KI" in labels["f5AgpPVG9vM"]["DS"]
    assert "AeAuCxdv1KI" not in labels["f5AgpPVG9vM"]["IS"]
    assert "AeAuCxdv1KI" in fivr.annotation["f5AgpPVG9vM"]["IS"]         # DnS's labels are untouched
    with gzip.open(ROOT / "dns_jax" / "evaluation" / "data" / "fivr_s2vs.json.gz") as f:
        fix = json.load(f)
    for query, by_label in fix["remove"].items():
        for label, ids in by_label.items():
            assert set(ids) <= set(fivr.annotation[query][label]) and not set(ids) & labels[query][label]
    with pytest.raises(ValueError, match="audio"):
        FIVR("5k", audio=True).evaluate_s2vs({})


# ------------------------------------------------------------------------------------------------
# VCDB

VCDB_TOY = {"queries": ["v1", "v2", "v3"],
            "positives": {"v1": ["v2"], "v2": ["v1", "v3"], "v3": ["v2"]},
            "distractors": ["d1", "d2"]}
VCDB_SIMS = {"v1": {"v2": 0.8, "v3": 0.6, "d1": 0.9, "d2": 0.1},
             "v2": {"v1": 0.7, "v3": 0.4, "d1": 0.2, "d2": 0.65},
             "v3": {"v1": 0.5, "v2": 0.3, "d1": 0.05, "d2": 0.35}}


def test_vcdb_with_and_without_distractors(tmp_path):
    core = VCDB(VCDB_TOY)
    assert core.name == "VCDB" and core.get_database() == ["v1", "v2", "v3"]
    got = quiet(core.evaluate_s2vs, VCDB_SIMS)
    # core only (distractor scores ignored): v1: v2 first -> 1; v2: v1, v3 -> 1; v3: v1, v2 -> 1/2
    assert got["mAP"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    # pooled: .8 P, .7 P, .6 N, .5 N, .4 P, .3 P -> (1/1 + 2/2 + 3/5 + 4/6) / 4
    assert got["uAP"] == pytest.approx((1 + 1 + 3 / 5 + 4 / 6) / 4)
    assert quiet(core.evaluate, VCDB_SIMS) == {"mAP": got["mAP"]}

    dist = VCDB(VCDB_TOY, distractors=True)
    assert dist.name == "VCDB-DIST" and dist.get_database() == ["v1", "v2", "v3", "d1", "d2"]
    got = quiet(dist.evaluate_s2vs, VCDB_SIMS)
    # v1: d1, v2 -> 1/2; v2: v1 1/1, d2, v3 2/3; v3: v1, d2, v2 -> 1/3
    assert got["mAP"] == pytest.approx((1 / 2 + (1 + 2 / 3) / 2 + 1 / 3) / 3)
    # pooled: .9 N, .8 P, .7 P, .65 N, .6 N, .5 N, .4 P, .35 N, .3 P, ... -> 1/2, 2/3, 3/7, 4/9
    assert got["uAP"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 7 + 4 / 9) / 4)
    # a distractor missing from all_db drops out: without d1, v1's ranking starts with v2
    got = quiet(dist.evaluate_s2vs, VCDB_SIMS, all_db={"v1", "v2", "v3", "d2"})
    assert got["mAP"] == pytest.approx((1 + (1 + 2 / 3) / 2 + 1 / 3) / 3)


def test_vcdb_self_positive_missing_query_and_files(tmp_path):
    # a video listed among its own positives keeps it, as S2VS does: a positive never retrieved
    ann = dict(VCDB_TOY, positives=dict(VCDB_TOY["positives"], v3=["v2", "v3"]))
    got = quiet(VCDB(ann).evaluate_s2vs, VCDB_SIMS)
    # v3: v1, v2 P -> (1/2) / 2
    assert got["mAP"] == pytest.approx((1 + 1 + 1 / 4) / 3)
    # pooled positives: v1v2 .8, v2v1 .7, v2v3 .4, v3v2 .3 and v3v3 never: (1 + 1 + 3/5 + 4/6) / 5
    assert got["uAP"] == pytest.approx((1 + 1 + 3 / 5 + 4 / 6) / 5)
    # a query without results is left out of both
    bench = VCDB(VCDB_TOY)
    with pytest.warns(EvaluationWarning, match="v3"):
        got = bench.evaluate_s2vs({q: VCDB_SIMS[q] for q in ("v1", "v2")})
    # v1: v2 first; v2: v1, v3 first -> mAP 1; pooled .8 P, .7 P, .6 N, .4 P -> (1 + 1 + 3/4) / 3
    assert got["mAP"] == 1.0 and got["uAP"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    # the JSON file the converter writes
    path = tmp_path / "vcdb.json.gz"
    path.write_bytes(gzip.compress(json.dumps(dict(VCDB_TOY, format="dns_jax.evaluation/vcdb/1")).encode()))
    assert VCDB(str(path), distractors=True).get_database() == ["v1", "v2", "v3", "d1", "d2"]
    assert isinstance(load_benchmark("vcdb_dist", vcdb_annotation=str(path)), VCDB)
    with pytest.raises(ValueError, match="convert_eval_annotations.py --vcdb"):
        VCDB()
    with pytest.raises(ValueError, match="convert_eval_annotations.py --vcdb"):
        load_benchmark("vcdb")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VCDB(str(tmp_path / "nope.json"))
    (tmp_path / "other.json").write_text(json.dumps({"format": "dns_jax.evaluation/fivr/1"}))
    with pytest.raises(ValueError, match="not a VCDB annotation"):
        VCDB(str(tmp_path / "other.json"))
    with pytest.raises(ValueError, match="distractor ids"):
        VCDB({"queries": ["v1"], "positives": {}}, distractors=True)


def test_evaluate_with_s2vs_columns(tmp_path):
    bench = _toy_fivr(tmp_path, TOY_ANNOTATION, ["q1", "q2"], list("abcde"), easy={"a"})
    maps, extra, problems = evaluate_with_s2vs(bench, TOY_SIMS, set("abcde") | {"q1", "q2"})
    assert list(maps) == ["DSVR", "CSVR", "ISVR"]
    assert list(extra) == ["uAP_DSVD", "uAP_CSVD", "uAP_ISVD", "mAP_DSVR_h", "mAP_CSVR_h", "mAP_ISVR_h",
                           "uAP_DSVD_h", "uAP_CSVD_h", "uAP_ISVD_h"]
    assert extra["uAP_CSVD"] == pytest.approx(EXPECTED["CSVD"]) and extra["mAP_ISVR_h"] == pytest.approx(
        EXPECTED["ISVR_h"])
    # q1's score of itself is not a database video (reported once, not again by the S2VS pass)
    assert len(problems) == 1 and "1 scored ids are not toy database videos" in problems[0]
    maps, extra, _ = evaluate_with_s2vs(VCDB(VCDB_TOY), VCDB_SIMS, {"v1", "v2", "v3"})
    assert list(maps) == ["mAP"] and list(extra) == ["uAP"]


# ------------------------------------------------------------------------------------------------
# the converter of S2VS's VCDB file

def _converter():
    spec = importlib.util.spec_from_file_location("convert_eval_annotations",
                                                  ROOT / "tools" / "convert_eval_annotations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vcdb_converter(tmp_path, capsys):
    src = tmp_path / "vcdb.pickle"
    positives = collections.defaultdict(set, {"v1": {"v2"}, "v2": {"v1", "v2"}})
    with open(src, "wb") as f:
        pickle.dump({"queries": ["v2", "v1"], "positives": positives, "dataset": ["d9", "d1"]}, f)
    conv = _converter()
    out = tmp_path / "vcdb.json.gz"
    assert conv.main(["x", "--vcdb", str(src), str(out)]) == 0
    assert "1 videos are listed among their own positives" in capsys.readouterr().out
    bench = VCDB(str(out), distractors=True)
    assert bench.get_queries() == ["v2", "v1"] and bench.get_database() == ["v2", "v1", "d9", "d1"]
    assert bench.positives == {"v1": {"v2"}, "v2": {"v1", "v2"}}

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())
    with open(src, "wb") as f:
        pickle.dump({"queries": [Evil()]}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        conv.convert_s2vs_vcdb(src)


# ------------------------------------------------------------------------------------------------
# dns-jax evaluate: the µAP columns

D = 512


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`dns-jax evaluate` on a toy FIVR-format benchmark and on a toy VCDB, with the reference networks
    (no network file is read: `load_networks` is replaced)."""
    sys.path.insert(0, str(ROOT))
    import evaluate
    from helpers import network

    from dns_jax.datasets.stores import write_hdf5
    from dns_jax.evaluation import run as run_lib

    d = tmp_path_factory.mktemp("micro_ap_cli")
    rng = np.random.default_rng(0)
    videos, annotation = {}, {}
    for i in range(2):
        q = rng.standard_normal((4, 9, D)).astype(np.float32)
        videos[f"q{i}"] = q
        videos[f"nd{i}"] = q + 0.05 * rng.standard_normal(q.shape).astype(np.float32)
        videos[f"x{i}"] = rng.standard_normal((3, 9, D)).astype(np.float32)
        annotation[f"q{i}"] = {"ND": [f"nd{i}"], "CS": [f"x{i}"]}
    features = write_hdf5(videos, str(d / "features.hdf5"))
    bench = d / "bench.json"
    bench.write_text(json.dumps({"format": "dns_jax.evaluation/fivr/1", "name": "toy", "queries": ["q0", "q1"],
                                 "database": ["nd0", "nd1", "x0", "x1"], "annotation": annotation}))
    vcdb = d / "vcdb.json"
    vcdb.write_text(json.dumps({"format": "dns_jax.evaluation/vcdb/1", "queries": ["q0", "nd0", "q1", "nd1"],
                                "positives": {"q0": ["nd0"], "nd0": ["q0"], "q1": ["nd1"], "nd1": ["q1"]},
                                "distractors": ["x0", "x1"]}))
    nets = run_lib.Networks(coarse=network("cg_student")[1], representations=[
        run_lib.Representation("FG-Att", network("fg_att_student")[1], network("selector")[1])])
    outs, args = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_lib, "load_networks", lambda *a, **k: nets)
        for name, extra in (("fivr", ["--benchmark", str(bench)]),
                            ("vcdb_dist", ["--benchmark", "vcdb_dist", "--vcdb-annotation", str(vcdb)])):
            outs[name] = d / name
            args[name] = extra + ["--features", features, "--output-dir", str(outs[name]),
                                  "--fine", "fg_att_student:x", "--selector", "selector:x", "--coarse", "cg_student:x",
                                  "--budgets", "0,1", "--no-plots", "--quiet"]
            assert evaluate.main(args[name]) == 0
    return outs, run_lib, str(bench), str(vcdb), lambda name: evaluate.main(args[name]), nets


def _fine_similarities(run_lib, out, queries):
    """{query: {video: fine / 2 + 0.5}} from the saved rows (aligned with the available database)."""
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f)
    sims = {}
    for q in queries:
        with np.load(run_lib.row_path(str(out), q)) as z:
            sims[q] = z["fine/FG-Att"] / 2.0 + 0.5
    return sims


def test_evaluate_cli_fivr_micro_ap_columns(cli_run, capsys, monkeypatch):
    outs, run_lib, bench_path, _, rerun, nets = cli_run
    out = outs["fivr"]
    res = json.load(open(out / "sweep.json"))
    by = {r["method"]: r for r in res["rows"]}
    fine = by["fine student (FG-Att)"]
    assert list(fine["mAP"]) == ["DSVR", "CSVR", "ISVR"]
    assert list(fine["s2vs"]) == ["uAP_DSVD", "uAP_CSVD", "uAP_ISVD"]     # no easy-duplicate list here
    # recompute from the rows: database order nd0, nd1, x0, x1 (all available)
    bench = load_benchmark(bench_path)
    rows = _fine_similarities(run_lib, out, ["q0", "q1"])
    sims = {q: dict(zip(bench.get_database(), rows[q])) for q in rows}
    want = micro_ap(sims, {"q0": ["nd0"], "q1": ["nd1"]})
    assert fine["s2vs"]["uAP_DSVD"] == pytest.approx(want, abs=1e-12)
    want = micro_ap(sims, {"q0": ["nd0", "x0"], "q1": ["nd1", "x1"]})
    assert fine["s2vs"]["uAP_CSVD"] == pytest.approx(want, abs=1e-12)
    assert by["DnS (FG-Att) 100%"]["s2vs"] == fine["s2vs"]
    csv_rows = list(csv.DictReader(open(out / "sweep.csv")))
    header = list(csv_rows[0])
    assert header[:8] == ["method", "kind", "representation", "budget", "mAP_DSVR", "mAP_CSVR", "mAP_ISVR",
                          "seconds_per_query"]
    assert header[-3:] == ["uAP_DSVD", "uAP_CSVD", "uAP_ISVD"]
    row = next(r for r in csv_rows if r["method"] == "fine student (FG-Att)")
    assert float(row["uAP_DSVD"]) == pytest.approx(fine["s2vs"]["uAP_DSVD"], abs=1e-6)
    # a rerun only evaluates (every row is saved) and prints the S2VS table after the official one
    monkeypatch.setattr(run_lib, "load_networks", lambda *a, **k: nets)
    capsys.readouterr()
    assert rerun("fivr") == 0
    text = capsys.readouterr().out
    official, s2vs = text.split("S2VS protocol: uAP = micro-AP over all (query, video) pairs")
    assert "DSVR" in official and "uAP_DSVD" not in official
    lines = [line for line in s2vs.splitlines() if line.startswith("fine student (FG-Att)")]
    assert lines and f"{fine['s2vs']['uAP_CSVD']:.4f}" in lines[0]


def test_evaluate_cli_vcdb(cli_run):
    outs, run_lib, _, vcdb_path, _, _ = cli_run
    out = outs["vcdb_dist"]
    res = json.load(open(out / "sweep.json"))
    assert res["benchmark"] == "VCDB-DIST"
    assert res["database"] == {"total": 6, "available": 6}
    fine = {r["method"]: r for r in res["rows"]}["fine student (FG-Att)"]
    assert list(fine["mAP"]) == ["mAP"] and list(fine["s2vs"]) == ["uAP"]
    queries = ["q0", "nd0", "q1", "nd1"]
    database = ["q0", "nd0", "q1", "nd1", "x0", "x1"]
    rows = _fine_similarities(run_lib, out, queries)
    sims = {q: dict(zip(database, rows[q])) for q in queries}
    positives = {"q0": ["nd0"], "nd0": ["q0"], "q1": ["nd1"], "nd1": ["q1"]}
    assert fine["s2vs"]["uAP"] == pytest.approx(micro_ap(sims, positives, queries=queries), abs=1e-12)
    header = next(csv.reader(open(out / "sweep.csv")))
    assert "mAP_mAP" in header and header[-1] == "uAP"
