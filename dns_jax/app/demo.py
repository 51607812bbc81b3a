"""`dns-jax demo`: the whole system on a collection generated from real clips, as one command.

1. generate near-duplicate copies of real clips (crop, flip, speed, borders, picture-in-picture,
   colour, re-encoding) plus distractors (dns_jax.datasets.video_collection);
2. `dns-jax build` on it: features with the offline backbone, PCA, ViSiL_f teacher, FG-Att and CG
   students, selector, index;
3. every source clip queries the collection; prints mAP, time per query and storage per video of
   the teacher, the coarse student, the fine student and DnS at a few budgets.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

import numpy as np

from dns_jax.app.build import BuildOptions, run_build
from dns_jax.app.query import Searcher
from dns_jax.datasets.stores import open_features
from dns_jax.datasets.video_collection import make_collection
from dns_jax.evaluation.metrics import ranked_list_average_precision
from dns_jax.fileio import atomic_write_json
from dns_jax.pretrained import load_teacher
from dns_jax.training.scoring import PairScorer

BUDGETS = (0.1, 0.25, 0.5)
RECIPE = "build:demo"       # configs/build.py: fewer steps, a CG student sized for a few dozen videos


def _map(scores: Dict[str, Dict[str, float]], ground_truth: Dict[str, List[str]]) -> float:
    aps = []
    for q, rel in ground_truth.items():
        ranked = [v for v, _ in sorted(scores[q].items(), key=lambda kv: -kv[1]) if v != q]
        aps.append(ranked_list_average_precision([v in rel for v in ranked], n_relevant=len(rel)))
    return float(np.mean(aps))


def _warm_timed(fn):
    """(result, seconds) of a second call of `fn`: the first one compiles (XLA) and warms caches,
    so the time is what a long-running service pays per query batch."""
    fn()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def evaluate(workdir: str, ground_truth: Dict[str, List[str]], budgets=BUDGETS) -> List[Dict]:
    """Rows (method, mAP, ms per query, bytes per video) for every stage of a built workdir."""

    s = Searcher(workdir)
    ids = s.index.ids
    queries = [q for q in ground_truth if q in s.index]
    gt = {q: ground_truth[q] for q in queries}
    feats = {q: s.features(q)[1] for q in queries}
    reps = s.dns.index([feats[q] for q in queries], queries)
    bytes_per = s.index.bytes_per_video()
    rows = []

    def add(method, scores, seconds, storage):
        rows.append({"method": method, "mAP": _map(scores, gt), "ms_per_query": 1000 * seconds / len(queries),
                     "bytes_per_video": storage})

    # teacher (ViSiL_f on the same features, no weights): the reference the students learn from
    name, teacher = load_teacher(s.settings.get("teacher", "visil_f"), dims=s.settings.get("dims", 512))
    store = open_features(s.wd.features)
    scorer = PairScorer(name, teacher.module, teacher.variables, batch_size=64)
    pairs = [(q, v) for q in queries for v in ids]
    sims, seconds = _warm_timed(lambda: scorer.score(store, pairs).reshape(len(queries), len(ids)))
    add(f"teacher ({name}, no weights)", {q: dict(zip(ids, sims[i].tolist())) for i, q in enumerate(queries)},
        seconds, float(np.mean([store.length(v) for v in ids])) * 9 * 512 * 4)

    coarse, seconds = _warm_timed(lambda: reps.coarse @ s.index.coarse.T)
    add("coarse student (CG)", {q: dict(zip(ids, coarse[i].tolist())) for i, q in enumerate(queries)},
        seconds, bytes_per.get("coarse"))

    fine_reps = s.index.fine_reps(range(len(ids)))
    fine, seconds = _warm_timed(lambda: s.dns.scorer.similarities([reps.fine_rep(i) for i in range(len(queries))],
                                                                  fine_reps))
    add(f"fine student ({s.fine.name})", {q: dict(zip(ids, fine[i].tolist())) for i, q in enumerate(queries)},
        seconds, bytes_per.get("fine"))

    for b in budgets:
        mixed, seconds = _warm_timed(lambda: s.dns_scores(reps, b))
        scores = {q: dict(zip(ids, mixed[i].tolist())) for i, q in enumerate(queries)}
        storage = sum(v for v in bytes_per.values() if v) if bytes_per else None
        add(f"DnS, budget {b:g}", scores, seconds, storage)
    return rows


def format_table(rows: List[Dict]) -> str:
    lines = ["| method | mAP | ms / query | bytes / video |", "|---|---|---|---|"]
    for r in rows:
        b = r["bytes_per_video"]
        ms = r["ms_per_query"]
        lines.append(f"| {r['method']} | {r['mAP']:.3f} | {ms:.{1 if ms >= 1 else 3}f} | "
                     f"{'' if b is None else f'{b:,.0f}'} |")
    return "\n".join(lines)


def run_demo(workdir: str, steps: Optional[int] = None, seed: int = 0, progress: bool = True) -> List[Dict]:
    """Generate the collection, build it with the demo recipe (`steps` per network: the recipe's
    unless given), print and return the table of every method."""
    log = print if progress else (lambda *_: None)
    t0 = time.time()
    collection = os.path.join(workdir, "collection")
    log(f"[demo] generating the video collection in {collection}")
    make_collection(collection, seed=seed)
    with open(os.path.join(collection, "ground_truth.json")) as f:
        ground_truth = json.load(f)
    build = os.path.join(workdir, "build")
    run_build(BuildOptions(videos=os.path.join(collection, "videos"), workdir=build, fine_steps=steps,
                           coarse_steps=steps, selector_steps=steps, seed=seed, progress=progress,
                           recipe=RECIPE))
    rows = evaluate(build, ground_truth)
    n_videos = len(os.listdir(os.path.join(collection, "videos")))
    print(f"\nDnS on a generated collection: {len(ground_truth)} query clips, "
          f"{sum(len(v) for v in ground_truth.values())} near-duplicate copies, {n_videos} videos in all "
          f"({time.time() - t0:.0f} s end to end)")
    print(format_table(rows))
    atomic_write_json(os.path.join(workdir, "demo_results.json"), rows, indent=1)
    return rows
