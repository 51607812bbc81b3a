"""VSC22 matching / descriptor metrics and VCSL segment P/R/F1 (dns_jax.evaluation.vsc):
hand-computed cases, edge cases, CSV, and the public reference implementations' numbers on
constructed cases (tests/data/vsc/reference_cases.json, see make_fixture.py there)."""
import io
import json
import math
import os

import numpy as np
import pytest

from dns_jax.evaluation.vsc import (COLUMNS, Match, intersection_length, matches_from_segments, pair_micro_ap,
                                    pairs_from_matches, read_matches, segment_ap, union_length,
                                    vcsl_precision_recall, vcsl_segment_prf, write_matches)

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "vsc", "reference_cases.json")


def m(qs, qe, rs, re, score=1.0, q="Q1", r="R1"):
    return Match(q, r, qs, qe, rs, re, score)


def as_match(row):
    q, r, qs, qe, rs, re, s = row
    return Match(q, r, qs, qe, rs, re, s)


# -- intervals ---------------------------------------------------------------------------------

def test_union_and_intersection_lengths():
    assert union_length([(0, 2), (1, 3), (5, 6), (6, 6.5)]) == pytest.approx(4.5)
    assert union_length([]) == 0.0
    assert union_length([(3, 1)]) == 0.0                      # reversed interval counts nothing
    assert intersection_length([(2, 5), (7, 8)], [(1, 3), (4, 7)]) == pytest.approx(2.0)
    assert intersection_length([(2, 5), (7, 8)], [(-1, 0), (3.5, 12)]) == pytest.approx(2.5)


# -- segment AP, by hand ----------------------------------------------------------------------

def test_segment_ap_exact_and_shifted():
    gt = [m(2, 12, 5, 15)]
    assert segment_ap(gt, [m(2, 12, 5, 15, 0.9)]).ap == pytest.approx(1.0)
    # query 8 of 10 s shared, reference 9 of 10: P = R = sqrt(0.8 * 0.9)
    assert segment_ap(gt, [m(4, 14, 6, 16, 0.9)]).ap == pytest.approx(0.8 * 0.9)


def test_segment_ap_no_predictions_is_zero():
    res = segment_ap([m(0, 5, 0, 5)], [])
    assert res.ap == 0.0 and res.recalls.size == 0


def test_segment_ap_overlapping_predictions_of_one_pair():
    gt = [m(10, 20, 30, 40)]
    preds = [m(8, 18, 28, 38, 0.9), m(12, 22, 32, 42, 0.7), m(10, 20, 30, 40, 0.6)]
    # after the first: I = 8 of T = 10 on both axes, recall 0.8 -> 0.8 * 0.8
    # after the second: unions (8, 22) -> I = 10 of T = 14, recall 1 -> + (10/14) * 0.2
    # the third covers nothing new: recall stays 1
    res = segment_ap(gt, preds)
    assert res.ap == pytest.approx(0.64 + 0.2 * 10 / 14)
    np.testing.assert_allclose(res.recalls, [0.8, 1.0])


def test_segment_ap_pair_absent_from_ground_truth_only_costs_precision():
    gt = [m(0, 6, 3, 9)]
    preds = [m(0, 6, 3, 9, 0.95, q="Q9"), m(0, 6, 3, 9, 0.5), m(0, 30, 0, 30, 0.4, r="R7")]
    # Q9-R1 adds 6 s of predicted length on each axis and nothing matched; then the exact
    # match brings recall to 1 at precision 6 / 12
    assert segment_ap(gt, preds).ap == pytest.approx(0.5)


def test_segment_ap_counts_only_ground_truth_overlapped_as_a_box():
    gt = [m(0, 10, 0, 10)]
    # shares the query interval but not the box: the ground truth is not considered yet
    first = segment_ap(gt, [m(0, 10, 20, 30, 0.9)])
    assert first.ap == 0.0
    # a second prediction that overlaps the box brings in the whole query-axis overlap of both:
    # I_q = 10 / T_q = 10, I_r = 6 / T_r = 16, recall sqrt(1 * 0.6)
    res = segment_ap(gt, [m(0, 10, 20, 30, 0.9), m(2, 8, 2, 8, 0.3)])
    assert res.ap == pytest.approx(math.sqrt(1.0 * 6 / 16) * math.sqrt(1.0 * 0.6))


def test_segment_ap_crossed_boxes_score_zero():
    # each prediction shares both intervals with some ground truth, but as boxes they overlap none
    gt = [m(0, 10, 0, 10), m(20, 30, 20, 30)]
    assert segment_ap(gt, [m(0, 10, 20, 30), m(20, 30, 0, 10)]).ap == 0.0


def test_segment_ap_ties_enter_together():
    gt = [m(0, 5, 0, 5)]
    tied = [m(0, 5, 0, 5, 0.7), m(0, 5, 0, 5, 0.7, q="Q3")]
    # both at once: precision 1/2 when recall reaches 1, whatever their order
    assert segment_ap(gt, tied).ap == pytest.approx(0.5)
    assert segment_ap(gt, tied[::-1]).ap == pytest.approx(0.5)


def test_segment_ap_rejects_bad_input():
    with pytest.raises(ValueError, match="ground-truth"):
        segment_ap([], [m(0, 1, 0, 1)])
    with pytest.raises(ValueError, match="non-finite"):
        segment_ap([m(0, 5, 0, 5)], [m(0, 5, 0, 5, float("nan"))])


# -- pair micro-AP ------------------------------------------------------------------------------

def test_pair_micro_ap_by_hand():
    gt = [("Q1", "R1"), ("Q2", "R2")]
    # hit, miss, hit: precision 1 then 2/3 at the two recall steps of 1/2
    assert pair_micro_ap(gt, [("Q1", "R1", 0.9), ("Q3", "R1", 0.8), ("Q2", "R2", 0.7)]) == \
        pytest.approx(0.5 + 0.5 * 2 / 3)
    # a ground-truth pair never predicted caps recall at 1/2
    assert pair_micro_ap(gt, {("Q1", "R1"): 0.3}) == pytest.approx(0.5)
    assert pair_micro_ap(gt, []) == 0.0


def test_pair_micro_ap_rejects_duplicates_and_nan():
    with pytest.raises(ValueError, match="duplicate"):
        pair_micro_ap([("Q", "R")], [("Q", "R", 0.1), ("Q", "R", 0.2)])
    with pytest.raises(ValueError, match="finite"):
        pair_micro_ap([("Q", "R")], [("Q", "R", float("nan"))])
    with pytest.raises(ValueError, match="at least one"):
        pair_micro_ap([], [("Q", "R", 0.5)])


def test_pairs_from_matches_keeps_the_best_score():
    got = pairs_from_matches([m(0, 1, 0, 1, 0.2), m(3, 4, 3, 4, 0.8), m(0, 1, 0, 1, 0.5, r="R2")])
    assert got == {("Q1", "R1"): 0.8, ("Q1", "R2"): 0.5}


# -- VCSL --------------------------------------------------------------------------------------

def test_vcsl_one_pair_by_hand():
    p, r = vcsl_precision_recall([[2, 12, 1, 11]], [[0, 10, 0, 10]])
    assert p == pytest.approx(0.8 * 0.9) and r == pytest.approx(0.8 * 0.9)
    # two predictions over one ground truth: precision sums per prediction, recall per truth
    p, r = vcsl_precision_recall([[0, 6, 0, 6], [4, 10, 4, 10]], [[0, 10, 0, 10]])
    assert p == pytest.approx(1.0) and r == pytest.approx(1.0)


def test_vcsl_undefined_cases_and_micro_average():
    assert vcsl_precision_recall([], [[0, 1, 0, 1]]) == (None, 0.0)
    assert vcsl_precision_recall([[0, 1, 0, 1]], []) == (0.0, None)
    assert vcsl_precision_recall([], []) == (None, None)
    gt = [m(0, 10, 0, 10), m(0, 4, 0, 4, r="R3")]
    preds = [m(2, 12, 1, 11), m(0, 5, 0, 5, r="NEG")]
    out = vcsl_segment_prf(gt, preds, pairs=[("Q1", "R9")])
    # precision over R1 (0.72) and NEG (0); recall over R1 (0.72) and R3 (0, missed)
    assert out["precision"] == pytest.approx(0.36) and out["recall"] == pytest.approx(0.36)
    assert out["f1"] == pytest.approx(0.36) and out["pairs"] == 4
    nothing = vcsl_segment_prf(gt, [])
    assert math.isnan(nothing["precision"]) and nothing["recall"] == 0.0 and math.isnan(nothing["f1"])


# -- CSV --------------------------------------------------------------------------------------

def test_csv_round_trip_and_column_order(tmp_path):
    matches = [m(0.5, 3.25, 10, 12.75, 0.875), m(1, 2, 3, 4, -0.5, q="Qx", r="Ry")]
    path = tmp_path / "p.csv"
    write_matches(matches, path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_matches(path) == matches
    shuffled = "score,ref_id,query_id,ref_start,ref_end,query_start,query_end\n0.5,R1,Q1,3,4,1,2\n"
    assert read_matches(io.StringIO(shuffled)) == [m(1, 2, 3, 4, 0.5)]
    gt = "query_id,ref_id,query_start,query_end,ref_start,ref_end\nQ1,R1,1,2,3,4\n"
    assert read_matches(io.StringIO(gt), ground_truth=True) == [m(1, 2, 3, 4, 1.0)]


def test_matches_from_localization_segments():
    from dns_jax.localization import Segment
    segs = [Segment(1.0, 4.5, 10.0, 13.5, 0.8), Segment(6.0, 7.0, 2.0, 3.0, 0.4, reversed=True)]
    assert matches_from_segments("Qa", "Rb", segs) == [m(1.0, 4.5, 10.0, 13.5, 0.8, q="Qa", r="Rb"),
                                                       m(6.0, 7.0, 2.0, 3.0, 0.4, q="Qa", r="Rb")]


def test_csv_errors_name_the_problem():
    with pytest.raises(ValueError, match="lacks the column"):
        read_matches(io.StringIO("query_id,ref_id,score\nQ,R,1\n"))
    with pytest.raises(ValueError, match="line 2: score must be finite"):
        read_matches(io.StringIO(",".join(COLUMNS) + "\nQ,R,0,1,0,1,nan\n"))
    with pytest.raises(ValueError, match="line 3: not a number"):
        read_matches(io.StringIO(",".join(COLUMNS) + "\nQ,R,0,1,0,1,1\nQ,R,0,x,0,1,1\n"))


# -- the reference implementations' numbers -----------------------------------------------------

@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE) as f:
        return json.load(f)


def test_segment_ap_matches_the_vsc2022_reference(reference):
    assert len(reference["segment_ap"]) >= 10
    for case in reference["segment_ap"]:
        got = segment_ap([as_match(g) for g in case["ground_truth"]],
                         [as_match(p) for p in case["predictions"]]).ap
        assert got == pytest.approx(case["expected"], abs=1e-9), case["name"]


def test_pair_ap_matches_the_vsc2022_reference(reference):
    for case in reference["pair_ap"]:
        got = pair_micro_ap([tuple(p) for p in case["ground_truth"]], case["predictions"])
        assert got == pytest.approx(case["expected"], abs=1e-9), case["name"]


def test_vcsl_matches_the_vcsl_reference(reference):
    for case in reference["vcsl"]:
        gt = [Match("Q", k, *b) for k, bs in case["ground_truth"].items() for b in bs]
        preds = [Match("Q", k, *b) for k, bs in case["predictions"].items() for b in bs]
        for k, (p_ref, r_ref) in case["per_pair"].items():
            p, r = vcsl_precision_recall(case["predictions"].get(k, []), case["ground_truth"].get(k, []))
            # the reference marks an undefined value as 1 (and excludes it from the averages)
            assert (1.0 if p is None else p) == pytest.approx(p_ref, abs=1e-5), (case["name"], k)
            assert (1.0 if r is None else r) == pytest.approx(r_ref, abs=1e-5), (case["name"], k)
        got = vcsl_segment_prf(gt, preds, pairs=[("Q", k) for k in case["per_pair"]])
        assert got["precision"] == pytest.approx(case["expected"]["precision"], abs=1e-5), case["name"]
        assert got["recall"] == pytest.approx(case["expected"]["recall"], abs=1e-5), case["name"]
