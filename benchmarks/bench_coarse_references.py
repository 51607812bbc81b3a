"""What a better coarse stage would give DnS on held-out hard copies: the builds of
`bench_s2vs_teachers.py` scored with the CG student and with descriptors that need no training,
and DnS simulated with each as its coarse stage.

For every build under `--out` (run `bench_s2vs_teachers.py --out DIR` first; nothing is trained
here) and the held-out family members as queries, prints per coarse stage:

* its own mAP, uAP and recall of the copies in its top 5 / 10 % (what a budget can re-rank);
* "DnS, ideal mixing": the top 5 / 10 % by that stage re-ranked by the build's fine student and put
  above the rest, the rest in the stage's order. This is the ranking DnS reaches when its selector
  picks the coarse stage's top and the fine scores map perfectly onto the coarse scale (the real
  DnS of the build is printed next to it: its selector and quantile mapping lose a little more).

Coarse stages: the build's CG student, mean pooling of the whitened features, "region max" (each
of the 9 regions averaged over time, the best of the 9 x 9 region pairs' cosines: 9 vectors per
video, where the build's region-vector CG student starts) and "region max, S segments" (the same
for each of S equal stretches of the video, frame t of T in stretch floor(t S / T): 9 S vectors per
video, the best of (9 S)^2 pairs; "top 3": the mean of the 3 best pairs, as the build's CG student
scores them, coarse.top_pairs).

    PYTHONPATH=. python benchmarks/bench_coarse_references.py --out /tmp/bench_s2vs_teachers
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_s2vs_teachers import (  # noqa: E402
    TEACHERS,
    segment_regions,
    split_collection,
    weight_free_rows,
)

BUDGETS = (0.05, 0.1)
SEGMENTS = (2, 3)


def segment_rows(wd: str, ids, queries, segments=SEGMENTS):
    """"region max, S segments" of the build's whitened features: {method, scores, bytes_per_video}."""
    from dns_jax.app.workdir import Workdir
    from dns_jax.datasets.stores import open_features

    store = open_features(Workdir(wd).features)
    q = [ids.index(v) for v in queries]
    rows = []
    for k in segments:
        vectors = np.stack([segment_regions(store[v], k) for v in ids])
        vectors /= np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)   # [N, 9k, D]
        pairs = np.einsum("qad,nbd->qnab", vectors[q], vectors).reshape(len(q), len(ids), -1)
        rows.append({"method": f"region max, {k} segments", "scores": pairs.max(-1),
                     "bytes_per_video": vectors[0].size * 4})
        rows.append({"method": f"region max, {k} segments, top 3", "scores": np.sort(pairs, -1)[..., -3:].mean(-1),
                     "bytes_per_video": vectors[0].size * 4})
    return rows


def recall_at(scores: np.ndarray, ids, queries, gt, k: int) -> float:
    """Mean share of each query's copies among its `k` best-scored videos (the query excluded)."""
    out = []
    for i, q in enumerate(queries):
        s = np.array(scores[i], np.float64, copy=True)
        s[ids.index(q)] = -np.inf
        top = {ids[j] for j in np.argsort(-s, kind="stable")[:k]}
        out.append(len(top & set(gt[q])) / len(gt[q]))
    return float(np.mean(out))


def ideal_dns(coarse: np.ndarray, fine: np.ndarray, k: int) -> np.ndarray:
    """The top `k` by `coarse` per row, ordered by `fine` and put above the rest (in `coarse` order)."""
    rank = np.argsort(np.argsort(-coarse, axis=1, kind="stable"), axis=1)      # 0 = best
    mixed = -rank.astype(np.float64)
    fine_rank = np.argsort(np.argsort(-fine, axis=1, kind="stable"), axis=1)
    top = rank < k
    mixed[top] = 1e6 - fine_rank[top]
    return mixed


def main():
    from dns_jax.app.demo import ranking_metrics, score_stages
    from dns_jax.datasets.video_collection import load_collection

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/bench_s2vs_teachers", help="bench_s2vs_teachers.py's --out")
    args = p.parse_args()

    info = load_collection(os.path.join(args.out, "collection"))    # the one bench_s2vs_teachers.py made
    _, _, gts = split_collection(info, args.out)
    gt = gts["heldout"]
    queries = sorted(gt)
    results = {}
    for teacher in TEACHERS:
        wd = os.path.join(args.out, f"build_{teacher}")
        if not os.path.isdir(wd):
            print(f"(no build {wd}: run bench_s2vs_teachers.py --out {args.out} first)")
            continue
        ids, stages = score_stages(wd, queries, budgets=(0.1,))
        by = {st["method"]: st for st in stages}
        fine = next(st["scores"] for m, st in by.items() if m.startswith("fine student"))
        refs = {r["method"]: r for r in weight_free_rows(wd, ids, queries)}
        coarse_stages = {"CG student": by["coarse student (CG)"], "mean pooling": refs["mean pooling (no training)"],
                         "region max": refs["region max (no training)"],
                         **{r["method"]: r for r in segment_rows(wd, ids, queries)}}
        rows = []
        for name, st in coarse_stages.items():
            row = {"coarse": name, "bytes": st["bytes_per_video"], **ranking_metrics(st["scores"], ids, queries, gt)}
            for b in BUDGETS:
                k = int(round(b * len(ids)))
                row[f"recall@{b:g}"] = recall_at(st["scores"], ids, queries, gt, k)
                row[f"dns@{b:g}"] = ranking_metrics(ideal_dns(st["scores"], fine, k), ids, queries, gt)["mAP"]
            rows.append(row)
        results[teacher] = {"rows": rows, "fine": ranking_metrics(fine, ids, queries, gt)["mAP"],
                            "dns": ranking_metrics(by["DnS, budget 0.1"]["scores"], ids, queries, gt)["mAP"]}

    print(f"\nHeld-out hard copies ({len(queries)} queries, {len(info.ids)} videos): coarse stages and DnS with "
          "ideal mixing (the coarse top re-ranked by the build's fine student)")
    print("\n| teacher | coarse stage | bytes / video | mAP | uAP | recall 5 % | recall 10 % | DnS 5 % | DnS 10 % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for teacher, r in results.items():
        for row in r["rows"]:
            print(f"| {teacher} | {row['coarse']} | {int(row['bytes']):,} | {row['mAP']:.3f} | {row['uAP']:.3f} | "
                  f"{row['recall@0.05']:.3f} | {row['recall@0.1']:.3f} | {row['dns@0.05']:.3f} | "
                  f"{row['dns@0.1']:.3f} |")
        print(f"| {teacher} | (fine student alone / the build's DnS at 10 %) | | {r['fine']:.3f} / {r['dns']:.3f} "
              "| | | | | |")
    with open(os.path.join(args.out, "coarse_references.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
