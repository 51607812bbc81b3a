"""The shortlist coarse search (`--coarse shortlist`) against the exact one: what it costs and what it loses.

A region-vector CG student over S temporal segments (the build's default: 3 x 9 unit vectors of 512
dims, a pair scored by the mean of its 3 best of 729 vector-pair cosines) makes the exact coarse
stage S^2 = 9 times the products of one set of region vectors. The shortlist ranks every video by
its 9 region vectors averaged over the segments (81 products a pair) and scores only the first
`pool` exactly (`retrieval.ShortlistCoarseDatabase`; index/search.py).

Two sections:

* **speed** (random unit vectors, float16 as `--coarse-dtype float16` keeps them): ms per query of
  the exact top-100 and of the shortlist's candidates (pool 1000, the default pool of a top-100
  search), one query and batches of 64, with the device memory of each;
* **quality** (`--workdir`, a built work directory, and `--ground-truth`, its collection's
  `ground_truth.json` {source: [copies]}): every family member in the index queries it through
  `search_index`, exactly and with the shortlist at several pools; mAP of the 'coarse' and 'dns'
  stages and the share of the exact top 10 / top-k that the shortlist's pool holds.

    PYTHONPATH=. python benchmarks/bench_coarse_shortlist.py --sizes 10000,100000
    PYTHONPATH=. python benchmarks/bench_coarse_shortlist.py --skip speed \\
        --workdir /tmp/bench_s2vs_teachers/build_visil_f \\
        --ground-truth /tmp/bench_s2vs_teachers/collection/ground_truth.json
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_retrieval import interleaved_min  # noqa: E402

from dns_jax import retrieval  # noqa: E402

SEGMENTS, REGIONS, DIMS, TOP = 3, 9, 512, 3


def speed_rows(sizes, pool: int, rounds: int) -> None:
    print(f"\n## Speed: {SEGMENTS} x {REGIONS} x {DIMS}-d float16, top {TOP}; top-100 exactly against the "
          f"shortlist's pool of {pool}, ms per query; load {os.getloadavg()[0]:.1f}")
    print("| videos | queries / batch | exact top-100 ms | shortlist ms | exact / shortlist | exact GB | "
          "shortlist GB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for n in sizes:
        v = rng.standard_normal((n, SEGMENTS * REGIONS, DIMS), dtype=np.float32)
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        v = v.reshape(n, -1)
        exact = retrieval.CoarseDatabase(v, dtype="float16", blocks=SEGMENTS * REGIONS, top=TOP)
        short = retrieval.ShortlistCoarseDatabase(exact, SEGMENTS, vectors=v)
        del v
        gc.collect()
        for nq in (1, 64):
            q = np.asarray(exact.vectors[:nq], np.float32)
            exact.topk(q, 100, batch=nq)
            short.candidates(q, pool)                                  # compile both first
            best = interleaved_min({"exact": functools.partial(exact.topk, q, 100, batch=nq),
                                    "shortlist": functools.partial(short.candidates, q, pool)}, rounds)
            gb = n * exact.dims * 2 / 1e9
            print(f"| {n:,} | {nq} | {best['exact'] / nq * 1e3:.1f} | {best['shortlist'] / nq * 1e3:.1f} | "
                  f"{best['exact'] / best['shortlist']:.1f} | {gb:.2f} | {gb * (1 + 1 / SEGMENTS):.2f} |", flush=True)
        exact = short = None
        gc.collect()


def _average_precision(ranked, relevant) -> float:
    hits, total = 0, 0.0
    for rank, v in enumerate(ranked, 1):
        if v in relevant:
            hits += 1
            total += hits / rank
    return total / max(len(relevant), 1)


def quality_rows(workdir: str, ground_truth: str, pools, budget: float) -> None:
    from dns_jax.app.query import Searcher
    from dns_jax.index.search import search_index

    searcher = Searcher(workdir)
    index = searcher.index
    with open(ground_truth) as f:
        gt = json.load(f)
    family = {v: q for q, copies in gt.items() for v in [q] + list(copies)}
    queries = [v for v in index.ids if v in family]
    reps = index.representations(queries)
    n = len(index)
    print(f"\n## Quality: {workdir}, {n} videos, {len(queries)} family members as queries, DnS budget {budget:g}")
    print("| coarse search | pool | pool / videos | mAP coarse | mAP DnS | exact top 10 in pool | copies in pool | "
          "s / query |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    exact_top = None
    for kind, pool in [("exact", None)] + [("shortlist", p) for p in pools]:
        row = {}
        for stage in ("coarse", "dns"):
            t0 = time.perf_counter()
            res = search_index(searcher.dns, index, reps, stage, budget, topk=None, coarse_search=kind, pool=pool,
                               fine_mapping=searcher.fine_mapping())
            row[stage + "_s"] = (time.perf_counter() - t0) / len(queries)
            aps, tops, copies, found = [], [], 0, 0
            for qi, q in enumerate(queries):
                ranked = [index.ids[j] for j in res.ranking[qi] if index.ids[j] != q]
                relevant = {v for v in queries if family[v] == family[q] and v != q}
                aps.append(_average_precision(ranked, relevant))
                tops.append(ranked[:10])
                copies += len(relevant)
                found += len(relevant & set(ranked))
            row[stage] = float(np.mean(aps))
            if stage == "coarse":
                if kind == "exact":
                    exact_top = tops
                row["top10"] = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(exact_top, tops)])
                row["copies"] = found / copies
        size = n if pool is None else min(pool, n)
        print(f"| {kind} | {size} | {size / n:.0%} | {row['coarse']:.3f} | {row['dns']:.3f} | {row['top10']:.3f} | "
              f"{row['copies']:.3f} | {row['coarse_s'] + row['dns_s']:.3f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="database sizes of the speed section")
    p.add_argument("--pool", type=int, default=1000, help="the shortlist's pool in the speed section")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", help="a built work directory (quality section)")
    p.add_argument("--ground-truth", help="its collection's ground_truth.json")
    p.add_argument("--pools", default="0.05,0.1,0.2,0.4",
                   help="quality section: pools as fractions of the index (or whole numbers of videos)")
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--skip", default="", help="comma list of sections to skip: speed,quality")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "speed" not in skip:
        speed_rows([int(x) for x in args.sizes.split(",")], args.pool, args.rounds)
    if "quality" not in skip:
        if not (args.workdir and args.ground_truth):
            p.error("the quality section needs --workdir and --ground-truth (or --skip quality)")
        from dns_jax.index.store import Index
        n = len(Index.open(os.path.join(args.workdir, "index")))
        pools = [max(1, int(round(float(x) * n))) if float(x) < 1 else int(x) for x in args.pools.split(",")]
        quality_rows(args.workdir, args.ground_truth, pools, args.budget)


if __name__ == "__main__":
    main()
