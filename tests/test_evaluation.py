"""dns_jax.evaluation against the official evaluation numbers (tests/data/reference/eval.npz)."""
import gzip
import json
import math
import re
import pathlib
import warnings

import numpy as np
import pytest

from dns_jax.evaluation import (CC_WEB_VIDEO, EVVE, FIVR, SVD, EvaluationReport, EvaluationWarning,
                                average_precision, descending_order,
                                ranked_list_average_precision, trapezoid_average_precision)

EVAL = pathlib.Path(__file__).parent / "data" / "reference" / "eval.npz"
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "dns_jax" / "evaluation"
TOL = 1e-9
P_KEYS = [f"{i / 10:.1f}" for i in range(11)]


@pytest.fixture(scope="module")
def ref():
    z = np.load(EVAL)
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def fivr5k():
    return FIVR(version="5k")


@pytest.fixture(scope="module")
def ccweb():
    return CC_WEB_VIDEO()


@pytest.fixture(scope="module")
def evve():
    return EVVE()


@pytest.fixture(scope="module")
def svd_labeled():
    return SVD(version="labeled")


def as_dict(query_ids, database_ids, sims):
    return {str(q): dict(zip(map(str, database_ids), map(float, row)))
            for q, row in zip(query_ids, sims)}


def quiet(evaluator, *args, **kwargs):
    """evaluate() with the expected warnings (the fixtures hold a subset of the queries) muted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return evaluator.evaluate(*args, **kwargs)


def assert_results(actual, ref, prefix, keys):
    assert list(actual) == list(keys)
    for k in keys:
        expected = float(ref[f"out/{prefix}/{k}"])
        assert abs(float(actual[k]) - expected) <= TOL, (prefix, k, float(actual[k]), expected)


# ---------------------------------------------------------------------------------------------
# official numbers
# ---------------------------------------------------------------------------------------------

def fivr_inputs(ref):
    q, d = ref["fivr5k/query_ids"], ref["fivr5k/database_ids"]
    return q, d, set(map(str, q)) | set(map(str, d))


def test_fivr5k_matches_official(ref, fivr5k):
    q, d, all_db = fivr_inputs(ref)
    with pytest.warns(EvaluationWarning, match="44 of 50 queries have no results"):
        out = fivr5k.evaluate(as_dict(q, d, ref["fivr5k/sims"]), all_db=all_db)
    assert_results(out, ref, "fivr5k", ["DSVR", "CSVR", "ISVR"])
    report = fivr5k.last_report
    assert report.evaluated == list(map(str, q))
    assert len(report.missing_queries) == 44 and not report.unknown_ids and not report.nan_scores
    for task in ("DSVR", "CSVR", "ISVR"):
        assert np.mean(list(report.per_query[task].values())) == out[task]


def rerank_matrix(coarse, fine, selector, p):
    """DnS re-ranking: per query the first int(p * N) database videos by descending selector
    score (stable order) take the fine similarity, the others keep the coarse one."""
    mixed = np.array(coarse, dtype=np.float64, copy=True)
    k = int(p * coarse.shape[1])
    for i in range(coarse.shape[0]):
        top = np.argsort(-selector[i], kind="stable")[:k]
        mixed[i, top] = fine[i, top]
    return mixed


@pytest.mark.parametrize("p", P_KEYS)
def test_fivr5k_rerank_matches_official(ref, fivr5k, p):
    q, d, all_db = fivr_inputs(ref)
    mixed = rerank_matrix(ref["fivr5k/sims"], ref["fivr5k_rerank/fine_sims"],
                          ref["fivr5k_rerank/selector_scores"], float(p))
    stored = f"fivr5k_rerank/sims_at_{p}"
    if stored in ref:
        np.testing.assert_array_equal(mixed, ref[stored])
    out = quiet(fivr5k, as_dict(q, d, mixed), all_db=all_db)
    assert_results(out, ref, f"fivr5k_rerank/{p}", ["DSVR", "CSVR", "ISVR"])


def test_rerank_endpoints(ref):
    coarse, fine = ref["fivr5k/sims"], ref["fivr5k_rerank/fine_sims"]
    sel = ref["fivr5k_rerank/selector_scores"]
    np.testing.assert_array_equal(rerank_matrix(coarse, fine, sel, 0.0), coarse)
    np.testing.assert_array_equal(rerank_matrix(coarse, fine, sel, 1.0), fine)


def test_ccweb_matches_official(ref, ccweb):
    q, d = ref["ccweb/query_ids"], ref["ccweb/database_ids"]
    # the fixture's query order is the ground-truth order of the annotation file
    assert [ccweb.queries[i] for i in ref["ccweb/query_set_index"]] == list(map(str, q))
    out = quiet(ccweb, as_dict(q, d, ref["ccweb/sims"]), all_db=set(map(str, d)))
    assert_results(out, ref, "ccweb", ["mAP", "mAP_star", "mAP_c", "mAP_c_star"])
    assert len(ccweb.last_report.missing_queries) == 20


def test_evve_matches_official(ref, evve):
    q, d = ref["evve/query_ids"], ref["evve/database_ids"]
    all_db = set(map(str, q)) | set(map(str, d))
    out = quiet(evve, as_dict(q, d, ref["evve/sims"]), all_db=all_db)
    assert_results(out, ref, "evve", ["mAP"])
    # events none of whose queries is in all_db have no per-event mAP (official: 0/0)
    per_event = evve.last_report.per_event
    assert sorted(per_event) == sorted(evve.events)
    assert any(math.isnan(v) for v in per_event.values())


def svd_inputs(ref):
    qids = [str(x) for x in ref["svd_labeled/query_ids"]]
    sims = {}
    for qi, t, s in zip(ref["svd_labeled/pair_query_index"], ref["svd_labeled/pair_target_id"],
                        ref["svd_labeled/pair_sim"]):
        sims.setdefault(qids[qi], {})[str(t)] = float(s)
    return qids, sims, set(map(str, ref["svd_labeled/pair_target_id"]))


def test_svd_labeled_matches_official(ref, svd_labeled):
    qids, sims, all_db = svd_inputs(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)  # a complete input warns about nothing
        out = svd_labeled.evaluate(sims, all_db=all_db)
    assert_results(out, ref, "svd_labeled", ["mAP"])
    assert svd_labeled.last_report.clean
    assert len(svd_labeled.last_report.evaluated) == 206
    # default all_db = the whole (labelled) database: same number here
    assert abs(float(svd_labeled.evaluate(sims)["mAP"]) - float(ref["out/svd_labeled/mAP"])) <= TOL


def test_array_results_equal_dict_results(ref, fivr5k):
    """Official alternative input: per query a score array aligned with get_database()."""
    q, d, all_db = fivr_inputs(ref)
    db_pos = {v: i for i, v in enumerate(fivr5k.get_database())}
    arrays = {}
    for qq, row in zip(q, ref["fivr5k/sims"]):
        a = np.zeros(len(fivr5k.get_database()))
        for v, s in zip(d, row):
            a[db_pos[str(v)]] = s
        arrays[str(qq)] = a
    out = quiet(fivr5k, arrays, all_db=all_db)
    assert_results(out, ref, "fivr5k", ["DSVR", "CSVR", "ISVR"])


def test_verbose_prints_table(ref, fivr5k, ccweb, evve, svd_labeled, capsys):
    q, d, all_db = fivr_inputs(ref)
    quiet(fivr5k, as_dict(q, d, ref["fivr5k/sims"]), all_db=all_db, verbose=True)
    text = capsys.readouterr().out
    assert "FIVR-5K" in text and "DSVR mAP: 0.3613" in text and "[WARNING] 44 of 50" in text
    q, d = ref["ccweb/query_ids"], ref["ccweb/database_ids"]
    quiet(ccweb, as_dict(q, d, ref["ccweb/sims"]), verbose=True)
    assert "CC_WEB* mAP: 0.3908" in capsys.readouterr().out
    q, d = ref["evve/query_ids"], ref["evve/database_ids"]
    quiet(evve, as_dict(q, d, ref["evve/sims"]), all_db=set(q) | set(d), verbose=True)
    text = capsys.readouterr().out
    assert "overall" in text and "0.5634" in text and "n/a" in text
    _, sims, all_db = svd_inputs(ref)
    svd_labeled.evaluate(sims, all_db=all_db, verbose=True)
    assert "mAP: 0.7382" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# annotation data
# ---------------------------------------------------------------------------------------------

def test_annotations(fivr5k, ccweb, evve, svd_labeled):
    assert fivr5k.name == "FIVR" and ccweb.name == "CC_WEB_VIDEO"
    assert evve.name == "EVVE" and svd_labeled.name == "SVD"
    assert len(fivr5k.get_queries()) == 50 and len(fivr5k.get_database()) == 5000
    assert fivr5k.get_queries() == sorted(fivr5k.get_queries())
    f200 = FIVR()  # official default: 200k
    assert f200.version == "200k"
    assert len(f200.get_queries()) == 100 and len(f200.get_database()) == 225960
    assert len(ccweb.get_queries()) == 24 and len(ccweb.index) == 13115
    assert len(ccweb.get_database()) == 13115 and max(ccweb.index.values()) == 13129
    assert all(isinstance(k, int) for gt in ccweb.ground_truth for k in gt)
    assert all(isinstance(ex, set) for ex in ccweb.excluded) and len(ccweb.excluded) == 24
    # the self-match quirk: each query is labelled E in its own ground truth, never excluded
    for qs, query in enumerate(ccweb.queries):
        vid = ccweb.index[query]
        assert ccweb.ground_truth[qs][vid] == "E" and vid not in ccweb.excluded[qs]
    assert len(evve.get_queries()) == 620 and len(evve.get_database()) == 2373
    assert len(evve.events) == 13
    assert all(isinstance(s, set) for triple in evve.events.values() for s in triple)
    assert sum(len(qs) for qs, _, _ in evve.events.values()) == 620
    assert len(svd_labeled.get_queries()) == 206 and len(svd_labeled.get_database()) == 6355
    assert sum(v for t in svd_labeled.ground_truth.values() for v in t.values()) == 1759


def test_annotation_files_are_plain_json():
    files = sorted((PACKAGE / "data").glob("*.json.gz"))
    assert [f.name for f in files] == ["cc_web_video.json.gz", "evve.json.gz", "fivr.json.gz",
                                       "fivr_s2vs.json.gz", "svd_test_groundtruth.json.gz"]
    for f in files:
        doc = json.loads(gzip.decompress(f.read_bytes()))
        assert doc["format"].startswith("dns_jax.evaluation/")
    for src in PACKAGE.glob("*.py"):
        code = src.read_text()
        assert not re.search(r"import\s+(c?pickle|joblib)|from\s+c?pickle\b|\bpickle\.", code), \
            f"{src.name} must not unpickle anything"


# ---------------------------------------------------------------------------------------------
# imperfect input
# ---------------------------------------------------------------------------------------------

def test_unknown_ids_are_ignored(ref, fivr5k, ccweb, evve, svd_labeled):
    q, d, all_db = fivr_inputs(ref)
    sims = as_dict(q, d, ref["fivr5k/sims"])
    for row in sims.values():
        row["not-a-video"] = 99.0
        row["another-one"] = np.nan
    sims["not-a-query"] = {"x": 1.0}
    with pytest.warns(EvaluationWarning, match="not FIVR-5K database videos"):
        out = fivr5k.evaluate(sims, all_db=all_db)
    assert_results(out, ref, "fivr5k", ["DSVR", "CSVR", "ISVR"])
    report = fivr5k.last_report
    assert report.unknown_queries == ["not-a-query"]
    assert report.unknown_ids == {str(x): 2 for x in q}

    q, d = ref["ccweb/query_ids"], ref["ccweb/database_ids"]
    sims = as_dict(q, d, ref["ccweb/sims"])
    for row in sims.values():
        row["0/unknown"] = 99.0
    assert_results(quiet(ccweb, sims), ref, "ccweb", ["mAP", "mAP_star", "mAP_c", "mAP_c_star"])
    assert ccweb.last_report.unknown_ids == {str(x): 1 for x in q}

    q, d = ref["evve/query_ids"], ref["evve/database_ids"]
    sims = as_dict(q, d, ref["evve/sims"])
    for row in sims.values():
        row["unknown"] = 99.0
    out = quiet(evve, sims, all_db=set(q) | set(d))
    assert_results(out, ref, "evve", ["mAP"])
    assert evve.last_report.unknown_ids == {str(x): 1 for x in q}

    qids, sims, all_db = svd_inputs(ref)
    for row in sims.values():
        row["unknown.mp4"] = 99.0
    with pytest.warns(EvaluationWarning, match="not SVD database videos"):
        out = svd_labeled.evaluate(sims, all_db=all_db)
    assert_results(out, ref, "svd_labeled", ["mAP"])


def test_missing_query_is_left_out_and_reported(ref, fivr5k, svd_labeled, evve):
    q, d, all_db = fivr_inputs(ref)
    sims = as_dict(q, d, ref["fivr5k/sims"])
    quiet(fivr5k, sims, all_db=all_db)
    full = fivr5k.last_report.per_query
    dropped = str(q[2])
    del sims[dropped]
    with pytest.warns(EvaluationWarning, match="45 of 50 queries have no results"):
        out = fivr5k.evaluate(sims, all_db=all_db)
    assert dropped in fivr5k.last_report.missing_queries
    for task in out:
        kept = [ap for qq, ap in full[task].items() if qq != dropped]
        assert abs(out[task] - np.mean(kept)) <= 1e-15

    # the official SVD code raises KeyError here; we leave the query out and say so
    _, sims, all_db = svd_inputs(ref)
    gone = next(iter(sims))
    del sims[gone]
    with pytest.warns(EvaluationWarning, match="1 of 206 queries have no results"):
        out = svd_labeled.evaluate(sims, all_db=all_db, verbose=False)
    assert svd_labeled.last_report.missing_queries == [gone]
    assert len(svd_labeled.last_report.evaluated) == 205 and np.isfinite(out["mAP"])


def test_empty_results_do_not_crash(fivr5k, ccweb, evve, svd_labeled):
    for ev, keys in ((fivr5k, ["DSVR", "CSVR", "ISVR"]),
                     (ccweb, ["mAP", "mAP_star", "mAP_c", "mAP_c_star"]),
                     (evve, ["mAP"]), (svd_labeled, ["mAP"])):
        with pytest.warns(EvaluationWarning, match="no query could be evaluated"):
            out = ev.evaluate({})
        assert list(out) == keys and all(math.isnan(v) for v in out.values())
    with pytest.raises(TypeError):
        fivr5k.evaluate([("q", {})])


def test_nan_scores_rank_last_and_name_the_query(ref, fivr5k, svd_labeled):
    q, d, all_db = fivr_inputs(ref)
    sims_nan = as_dict(q, d, ref["fivr5k/sims"])
    sims_low = as_dict(q, d, ref["fivr5k/sims"])
    victim = str(q[1])
    rng = np.random.default_rng(0)
    for v in rng.choice([str(x) for x in d], 60, replace=False):
        sims_nan[victim][v] = float("nan")
        sims_low[victim][v] = -1e9  # below every real score; ties keep the input order
    sims_nan[victim][str(d[0])] = None  # not a number either
    sims_low[victim][str(d[0])] = -1e9
    with pytest.warns(EvaluationWarning, match=f"NaN.*{victim}"):
        out = fivr5k.evaluate(sims_nan, all_db=all_db)
    expected = quiet(fivr5k, sims_low, all_db=all_db)
    assert out == expected
    assert fivr5k.last_report is not None

    _, sims, all_db = svd_inputs(ref)
    query = next(iter(sims))
    target = next(t for t, lab in svd_labeled.ground_truth[query].items() if lab == 1)
    sims[query][target] = float("nan")
    with pytest.warns(EvaluationWarning, match=f"NaN.*{query}"):
        out = svd_labeled.evaluate(sims, all_db=all_db)
    assert svd_labeled.last_report.nan_scores == {query: 1}
    assert np.isfinite(out["mAP"]) and out["mAP"] <= float(ref["out/svd_labeled/mAP"])


def test_fivr_query_without_relevant_videos_counts_zero(fivr5k):
    query = fivr5k.get_queries()[0]
    others = [v for v in fivr5k.get_database()[:50]]
    gt = {v for ids in fivr5k.annotation[query].values() for v in ids}
    all_db = set(v for v in others if v not in gt)
    with pytest.warns(EvaluationWarning, match="AP was counted as 0"):
        out = fivr5k.evaluate({query: {v: 1.0 for v in others}}, all_db=all_db)
    assert out == {"DSVR": 0.0, "CSVR": 0.0, "ISVR": 0.0}
    assert (query, "DSVR") in fivr5k.last_report.no_positives


def test_svd_unlabeled_needs_the_distractor_list(tmp_path, svd_labeled):
    with pytest.raises(ValueError, match="unlabeled_ids"):
        SVD()
    with pytest.raises(FileNotFoundError, match="unlabeled-data-id"):
        SVD(version="unlabeled", unlabeled_ids=tmp_path / "nope")
    with pytest.raises(ValueError):
        SVD(version="something")
    ids = [f"distractor{i}.mp4" for i in range(50)]
    path = tmp_path / "unlabeled-data-id"
    path.write_text("\n".join(ids) + "\n")
    svd = SVD(unlabeled_ids=str(path))
    assert svd.unlabeled_keys == ids and SVD(unlabeled_ids=ids).unlabeled_keys == ids
    assert len(svd.get_database()) == 6355 + 50 and svd.get_database() == sorted(svd.get_database())

    rng = np.random.default_rng(1)
    sims = {}
    for query, targets in svd.ground_truth.items():
        row = {t: float(rng.random()) for t in targets}
        row.update({t: float(rng.random()) for t in ids})
        sims[query] = row
    out = svd.evaluate(sims)
    expected = []
    for query, targets in svd.ground_truth.items():
        y = list(targets.values()) + [0] * len(ids)
        s = [sims[query][t] for t in targets] + [sims[query][t] for t in ids]
        expected.append(brute_force_ap(y, s))
    assert abs(out["mAP"] - np.mean(expected)) <= 1e-12
    # the distractors lower the mAP relative to the labelled part alone
    assert out["mAP"] < quiet(svd_labeled, sims)["mAP"]

    # a distractor without a score is never retrieved: a negative that never shows up
    for row in sims.values():
        del row[ids[0]]
    with pytest.warns(EvaluationWarning, match="no score"):
        out2 = svd.evaluate(sims)
    assert set(svd.last_report.missing_scores.values()) == {1}
    assert out2["mAP"] >= out["mAP"]


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------

def brute_force_ap(y_true, scores):
    """AP = sum over distinct thresholds t (high to low) of (R_t - R_prev) * P_t."""
    y_true, scores = np.asarray(y_true) == 1, np.asarray(scores, dtype=float)
    n_pos = y_true.sum()
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        sel = scores >= t
        recall = y_true[sel].sum() / n_pos
        ap += (recall - prev_recall) * y_true[sel].sum() / sel.sum()
        prev_recall = recall
    return ap


def test_average_precision_like_sklearn():
    # the example of scikit-learn's average_precision_score documentation
    assert abs(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) - 0.8333333333333333) < 1e-15
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 50, 300):
        for levels in (3, 10, None):
            y = rng.integers(0, 2, n)
            y[0] = 1
            s = rng.random(n)
            if levels:
                s = np.round(s * levels) / levels  # many ties
            assert abs(average_precision(y, s) - brute_force_ap(y, s)) < 1e-12
    assert average_precision([0, 0], [0.3, 0.2]) == 0.0  # no positive


def test_ranked_list_and_trapezoid_ap():
    # relevant at positions 1 and 3 of 4, 3 relevant in total: (1/1 + 2/3) / 3
    assert ranked_list_average_precision([1, 0, 1, 0], n_relevant=3) == (1.0 + 2.0 / 3.0) / 3
    # a skipped item takes no position
    assert ranked_list_average_precision([0, 1, 1], counted=[0, 1, 1]) == 1.0
    # INRIA trapezoids: positives at ranks 0 and 2 of 2: (1 + 1)/2/2 + (1/2 + 2/3)/2/2
    assert trapezoid_average_precision([0, 2], 2) == (2.0 / 4) + (0.5 + 2.0 / 3) / 4
    assert trapezoid_average_precision([], 3) == 0.0 and EVVE.score_ap_from_ranks_1([0], 0) == 0.0


def test_descending_order_is_stable_with_nan_last():
    s = [0.5, np.nan, 0.9, 0.5, np.nan, 0.1, 0.9]
    assert descending_order(s).tolist() == [2, 6, 0, 3, 5, 1, 4]
    ids = ["a", "b", "c", "d", "e"]
    vals = [0.2, 0.7, 0.2, 0.7, 0.1]
    py = sorted(range(5), key=lambda i: vals[i], reverse=True)
    assert descending_order(vals).tolist() == py


def test_report_type(fivr5k):
    quiet(fivr5k, {})
    assert isinstance(fivr5k.last_report, EvaluationReport)
    assert "FIVR-5K: 0/50 queries evaluated" in fivr5k.last_report.summary()
    assert fivr5k.last_report.as_dict()["n_queries"] == 50
