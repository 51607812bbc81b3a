"""Write reference_cases.json: small constructed cases with the numbers of the public reference
metrics (facebookresearch/vsc2022 `vsc/metrics.py`, alipay/VCSL `vcsl/metric.py`).

The reference code is not a dependency of dns-jax: run this once in a throwaway environment
that has numpy, pandas, scikit-learn and matplotlib, pointing at checkouts of both repositories:

    python -m venv /tmp/vscref && /tmp/vscref/bin/pip install numpy pandas scikit-learn matplotlib
    /tmp/vscref/bin/python tests/data/vsc/make_fixture.py VSC2022_CHECKOUT VCSL_CHECKOUT

The cases themselves are made here (by hand, plus seeded random ones); only the expected numbers
come from the reference code.
"""
import importlib.util
import json
import os
import sys

import numpy as np


def _match(q, r, qs, qe, rs, re, score=1.0):
    return [q, r, float(qs), float(qe), float(rs), float(re), float(score)]


def segment_cases():
    m = _match
    cases = {
        "exact": ([m("Q1", "R1", 2, 12, 5, 15)], [m("Q1", "R1", 2, 12, 5, 15, 0.9)]),
        "shifted": ([m("Q1", "R1", 2, 12, 5, 15)], [m("Q1", "R1", 4, 14, 6, 16, 0.9)]),
        "two_gt_one_found": ([m("Q1", "R1", 0, 10, 0, 10), m("Q1", "R1", 20, 30, 40, 50)],
                             [m("Q1", "R1", 0, 10, 0, 10, 0.8), m("Q1", "R1", 60, 70, 5, 9, 0.5)]),
        "overlapping_predictions": ([m("Q1", "R1", 10, 20, 30, 40)],
                                    [m("Q1", "R1", 8, 18, 28, 38, 0.9), m("Q1", "R1", 12, 22, 32, 42, 0.7),
                                     m("Q1", "R1", 10, 20, 30, 40, 0.6)]),
        "pair_absent_from_gt": ([m("Q1", "R1", 0, 6, 3, 9)],
                                [m("Q9", "R1", 0, 6, 3, 9, 0.95), m("Q1", "R1", 0, 6, 3, 9, 0.5),
                                 m("Q1", "R7", 0, 30, 0, 30, 0.4)]),
        "ties_across_pairs": ([m("Q1", "R1", 0, 5, 0, 5), m("Q2", "R2", 5, 10, 0, 5)],
                              [m("Q1", "R1", 0, 5, 0, 5, 0.7), m("Q3", "R3", 0, 5, 0, 5, 0.7),
                               m("Q2", "R2", 5, 9, 1, 5, 0.6)]),
        "query_axis_only_overlap": ([m("Q1", "R1", 0, 10, 0, 10)],
                                    [m("Q1", "R1", 0, 10, 20, 30, 0.9), m("Q1", "R1", 2, 8, 2, 8, 0.3)]),
        "crossed_boxes": ([m("Q1", "R1", 0, 10, 0, 10), m("Q1", "R1", 20, 30, 20, 30)],
                          [m("Q1", "R1", 0, 10, 20, 30, 1.0), m("Q1", "R1", 20, 30, 0, 10, 1.0)]),
        "gt_with_score_and_fractions": ([m("Q1", "R1", 1.5, 7.25, 10.0, 15.75, 0.1)],
                                        [m("Q1", "R1", 1.0, 7.0, 10.5, 16.5, 0.33)]),
    }
    rng = np.random.default_rng(2024)
    gts, preds = [], []
    for k in range(6):
        q, r = f"Q{k % 3}", f"R{k}"
        for _ in range(int(rng.integers(1, 3))):
            qs, rs = rng.uniform(0, 50, 2).round(2)
            ln = round(float(rng.uniform(2, 15)), 2)
            gts.append(m(q, r, qs, qs + ln, rs, rs + ln * rng.choice([0.8, 1.0, 1.25])))
            for _ in range(int(rng.integers(0, 3))):
                jq, jr = rng.normal(0, 2, 2).round(2)
                preds.append(m(q, r, qs + jq, qs + ln + jq, rs + jr, rs + ln + jr,
                               rng.integers(0, 10) / 10))
    for k in range(4):  # pairs absent from the ground truth
        qs, rs = rng.uniform(0, 50, 2).round(2)
        preds.append(m(f"Q{k}", f"N{k}", qs, qs + 5, rs, rs + 5, rng.integers(0, 10) / 10))
    cases["random"] = (gts, preds)
    return cases


def pair_cases():
    return {
        "ordered": ([["Q1", "R1"], ["Q2", "R2"]], [["Q1", "R1", 0.9], ["Q3", "R1", 0.8], ["Q2", "R2", 0.7]]),
        "ties": ([["Q1", "R1"], ["Q2", "R2"], ["Q3", "R3"]],
                 [["Q1", "R1", 0.5], ["Q9", "R9", 0.5], ["Q2", "R2", 0.5], ["Q8", "R8", 0.9]]),
        "missed_gt": ([["Q1", "R1"], ["Q2", "R2"], ["Q3", "R3"], ["Q4", "R4"]],
                      [["Q1", "R1", 0.2], ["Q2", "R2", 0.1], ["Q5", "R5", 0.3]]),
    }


def vcsl_cases():
    return {
        "one_pair": ({"a": [[0, 10, 0, 10]]}, {"a": [[2, 12, 1, 11]]}),
        "overlapping_preds": ({"a": [[0, 10, 0, 10], [20, 30, 40, 50]]},
                              {"a": [[0, 6, 0, 6], [4, 10, 4, 10], [22, 28, 41, 49], [60, 70, 0, 5]]}),
        "with_negatives": ({"a": [[0, 10, 0, 10]], "b": [[5, 9, 5, 9]], "c": [[0, 4, 0, 4]]},
                           {"a": [[1, 9, 0, 10]], "c": [], "b": [[5, 9, 6, 8]], "n1": [[0, 5, 0, 5]],
                            "n2": []}),
    }


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(vsc_root, vcsl_root):
    sys.path.insert(0, vsc_root)
    from vsc.metrics import CandidatePair, Match, average_precision, match_metric  # noqa: E402
    vcsl = _load(os.path.join(vcsl_root, "vcsl", "metric.py"), "vcsl_metric")

    def to_match(x):
        q, r, qs, qe, rs, re, s = x
        return Match(query_id=q, ref_id=r, score=s, query_start=qs, query_end=qe, ref_start=rs, ref_end=re)

    out = {"segment_ap": [], "pair_ap": [], "vcsl": []}
    for name, (gt, preds) in segment_cases().items():
        gt_m = [to_match(g)._replace(score=1.0) for g in gt]
        ap = match_metric(gt_m, [to_match(p) for p in preds]).ap
        out["segment_ap"].append({"name": name, "ground_truth": gt, "predictions": preds, "expected": ap})
    out["segment_ap"].append({"name": "no_predictions", "ground_truth": segment_cases()["exact"][0],
                              "predictions": [],
                              "expected": match_metric([to_match(g) for g in segment_cases()["exact"][0]], []).ap})
    for name, (gt, preds) in pair_cases().items():
        ap = average_precision([CandidatePair(q, r, 1.0) for q, r in gt],
                               [CandidatePair(q, r, s) for q, r, s in preds]).ap
        out["pair_ap"].append({"name": name, "ground_truth": gt, "predictions": preds, "expected": ap})
    for name, (gt, preds) in vcsl_cases().items():
        # VCSL boxes are (x1, y1, x2, y2) = (query_start, ref_start, query_end, ref_end)
        conv = lambda bs: np.array([[b[0], b[2], b[1], b[3]] for b in bs], np.float64).reshape(-1, 4)
        per_pair = {k: vcsl.precision_recall(conv(preds.get(k, [])), conv(gt.get(k, [])))
                    for k in sorted(set(gt) | set(preds))}
        r, p, _, _ = vcsl.evaluate_micro(per_pair)
        out["vcsl"].append({"name": name, "ground_truth": gt, "predictions": preds,
                            "per_pair": {k: [float(v["precision"]), float(v["recall"])] for k, v in per_pair.items()},
                            "expected": {"precision": p, "recall": r}})
    out["made_with"] = ("tests/data/vsc/make_fixture.py: expected numbers from facebookresearch/vsc2022 "
                        "vsc.metrics (match_metric, average_precision) and alipay/VCSL vcsl/metric.py "
                        "(precision_recall, evaluate_micro), run in a throwaway environment")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_cases.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
