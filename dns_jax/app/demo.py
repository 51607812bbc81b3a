"""`dns-jax demo`: the whole system on a collection generated from real clips, as one command.

1. generate near-duplicate copies of real clips (crop, flip, speed, borders, picture-in-picture,
   colour, re-encoding) plus distractors (dns_jax.datasets.video_collection);
2. `dns-jax build` on it: features with the offline backbone, PCA, ViSiL_f teacher, FG-Att and CG
   students, selector, index; with `--teacher s2vs` or `both` also (or instead) with the S2VS
   network trained on the collection as the teacher (the features shared);
3. every source clip queries the collection; prints mAP, uAP, time per query and storage per video
   of the teacher, the coarse student, the fine student and DnS at a few budgets, per teacher.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from dns_jax.app.build import SELF_SUPERVISED_TEACHER, BuildOptions, run_build, stage_to_rebuild
from dns_jax.app.query import Searcher
from dns_jax.datasets.stores import open_features
from dns_jax.datasets.video_collection import make_collection
from dns_jax.evaluation.metrics import average_precision, ranked_list_average_precision
from dns_jax.fileio import atomic_write_json
from dns_jax.pretrained import load_teacher
from dns_jax.retrieval import coarse_scores, top_pairs, vector_blocks
from dns_jax.training.scoring import PairScorer

BUDGETS = (0.1, 0.25, 0.5)
RECIPE = "build:demo"       # configs/build.py: fewer steps, a CG student sized for a few dozen videos


def _ranked(scores: np.ndarray, ids: List[str], query: str, relevant) -> tuple:
    """(relevance, scores) of one query's row over every video but the query itself."""
    keep = [i for i, v in enumerate(ids) if v != query]
    return np.asarray([ids[i] in relevant for i in keep]), np.asarray(scores[keep], np.float64)


def ranking_metrics(scores: np.ndarray, ids: List[str], queries: List[str],
                    ground_truth: Dict[str, List[str]]) -> Dict[str, float]:
    """mAP (per query, ties ranked as listed) and uAP (every (query, video) pair ranked together:
    does one threshold separate the copies?) of a (queries, videos) score matrix."""
    aps, rel_all, score_all = [], [], []
    for i, q in enumerate(queries):
        if q not in ground_truth:
            continue
        rel, sc = _ranked(scores[i], ids, q, set(ground_truth[q]))
        order = np.argsort(-sc, kind="stable")
        aps.append(ranked_list_average_precision(rel[order], n_relevant=len(ground_truth[q])))
        rel_all.append(rel)
        score_all.append(sc)
    if not aps:
        raise ValueError("none of the ground truth's queries is indexed")
    micro = average_precision(np.concatenate(rel_all).astype(int), np.concatenate(score_all))
    return {"mAP": float(np.mean(aps)), "uAP": float(micro), "queries": len(aps)}


def _warm_timed(fn):
    """(result, seconds) of a second call of `fn`: the first one compiles (XLA) and warms caches,
    so the time is what a long-running service pays per query batch."""
    fn()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def teacher_of(s: Searcher) -> Tuple[str, str]:
    """(teacher spec, label) of a built work directory: `s2vs` (trained by the build) is the
    network in its models/s2vs_teacher."""
    spec = s.settings.get("teacher", "visil_f")
    if spec == SELF_SUPERVISED_TEACHER:
        return f"s2vs:{s.wd.model('s2vs_teacher')}", "S2VS trained on the collection"
    if spec == "visil_f":
        return spec, "ViSiL_f, no weights"
    return spec, spec


def score_stages(workdir: str, queries: List[str], budgets=BUDGETS) -> Tuple[List[str], List[Dict]]:
    """(video ids, [{method, scores (queries x videos), ms_per_query, bytes_per_video}]) of every
    stage of a built workdir: teacher, CG student, fine student, DnS at `budgets`."""
    s = Searcher(workdir)
    ids = list(s.index.ids)
    missing = [q for q in queries if q not in s.index]
    if missing:
        raise ValueError(f"queries not indexed in {workdir}: {', '.join(missing[:5])}")
    feats = {q: s.features(q)[1] for q in queries}
    reps = s.dns.index([feats[q] for q in queries], queries)
    bytes_per = s.index.bytes_per_video()
    out = []

    def add(method, scores, seconds, storage):
        out.append({"method": method, "scores": np.asarray(scores), "ms_per_query": 1000 * seconds / len(queries),
                    "bytes_per_video": storage})

    # teacher on the same features: the reference the students learn from
    spec, label = teacher_of(s)
    dims = s.settings.get("dims", 512)
    name, teacher = load_teacher(spec, dims=dims)
    store = open_features(s.wd.features)
    scorer = PairScorer(name, teacher.module, teacher.variables, batch_size=64)
    pairs = [(q, v) for q in queries for v in ids]
    sims, seconds = _warm_timed(lambda: scorer.score(store, pairs).reshape(len(queries), len(ids)))
    add(f"teacher ({label})", sims, seconds, float(np.mean([store.length(v) for v in ids])) * 9 * dims * 4)

    coarse, seconds = _warm_timed(lambda: coarse_scores(reps.coarse, s.index.coarse, vector_blocks(s.coarse),
                                                        top=top_pairs(s.coarse)))
    add("coarse student (CG)", coarse, seconds, bytes_per.get("coarse"))

    fine_reps = s.index.fine_reps(range(len(ids)))
    fine, seconds = _warm_timed(lambda: s.dns.scorer.similarities([reps.fine_rep(i) for i in range(len(queries))],
                                                                  fine_reps))
    add(f"fine student ({s.fine.name})", fine, seconds, bytes_per.get("fine"))

    storage = sum(v for v in bytes_per.values() if v) if bytes_per else None
    for b in budgets:
        mixed, seconds = _warm_timed(lambda: s.dns_scores(reps, b))
        add(f"DnS, budget {b:g}", mixed, seconds, storage)
    return ids, out


def evaluate(workdir: str, ground_truth: Dict[str, List[str]], budgets=BUDGETS) -> List[Dict]:
    """Rows (method, mAP, uAP, ms per query, bytes per video) for every stage of a built workdir."""
    s_ids = set(Searcher(workdir).index.ids)
    queries = [q for q in ground_truth if q in s_ids]
    ids, stages = score_stages(workdir, queries, budgets)
    return [dict({k: v for k, v in st.items() if k != "scores"}, **ranking_metrics(st["scores"], ids, queries,
                                                                                   ground_truth))
            for st in stages]


def format_table(rows: List[Dict]) -> str:
    """A markdown table of `evaluate` rows (with a teacher column when the rows name teachers)."""
    teachers = any("teacher" in r for r in rows)
    head = "| teacher " if teachers else ""
    lines = [f"{head}| method | mAP | uAP | ms / query | bytes / video |", "|---" * (5 + teachers) + "|"]
    for r in rows:
        b = r["bytes_per_video"]
        ms = r["ms_per_query"]
        first = f"| {r.get('teacher', '')} " if teachers else ""
        lines.append(f"{first}| {r['method']} | {r['mAP']:.3f} | {r['uAP']:.3f} | {ms:.{1 if ms >= 1 else 3}f} | "
                     f"{'' if b is None else f'{b:,.0f}'} |")
    return "\n".join(lines)


TEACHERS = ("visil_f", "s2vs")
S2VS_HINT = ("the S2VS teacher (trained on the collection itself, about 6 more minutes on 2 CPU cores): "
             "`dns-jax demo --teacher both` adds its rows; measured on hard edits in docs/s2vs.md")


def build_dir(workdir: str, teacher: str) -> str:
    """The build of `teacher`: WORK/build for ViSiL_f (as before), WORK/build_<teacher> otherwise."""
    return os.path.join(workdir, "build" if teacher == "visil_f" else f"build_{teacher}")


def build_teachers(videos: str, workdir: str, teachers=("visil_f",), recipe: str = RECIPE, seed: int = 0,
                   progress: bool = True, **options) -> Dict[str, str]:
    """Build `videos` once per teacher with the same recipe and seed ({teacher: work directory}).
    A later teacher starts from a copy of the first build, so the features, PCA and whitening are
    computed once and every teacher scores the same features. A build made with other settings (an
    older recipe, other steps) is built again from the first stage they affect."""
    out = {}
    for teacher in teachers:
        if teacher not in TEACHERS:
            raise ValueError(f"teacher {teacher!r}: expected one of {', '.join(TEACHERS)}")
        wd = build_dir(workdir, teacher)
        if out and not os.path.exists(wd):
            shutil.copytree(next(iter(out.values())), wd, ignore=shutil.ignore_patterns(".lock"))
        opts = BuildOptions(videos=videos, workdir=wd, teacher=teacher, recipe=recipe, seed=seed,
                            progress=progress, **options)
        reset = stage_to_rebuild(opts)
        if reset and progress:
            print(f"[demo] {wd} was built with other settings: building it again from the {reset} stage")
        run_build(dataclasses.replace(opts, reset=reset))
        out[teacher] = wd
    return out


def run_demo(workdir: str, steps: Optional[int] = None, seed: int = 0, progress: bool = True,
             teachers=("visil_f",), collection: Optional[Dict] = None, recipe: str = RECIPE,
             **options) -> List[Dict]:
    """Generate the collection (make_collection's defaults, or `collection` keywords), build it with
    the demo recipe once per teacher (`steps` per network: the recipe's unless given; `options`:
    more BuildOptions fields), print and return the table of every teacher and method."""
    log = print if progress else (lambda *_: None)
    t0 = time.time()
    root = os.path.join(workdir, "collection")
    log(f"[demo] generating the video collection in {root}")
    make_collection(root, seed=seed, **(collection or {}))
    with open(os.path.join(root, "ground_truth.json")) as f:
        ground_truth = json.load(f)
    builds = build_teachers(os.path.join(root, "videos"), workdir, teachers, recipe=recipe, seed=seed,
                            progress=progress, fine_steps=steps, coarse_steps=steps, selector_steps=steps,
                            **options)
    rows = []
    for teacher, wd in builds.items():
        rows.extend(dict(r, teacher=teacher) if len(builds) > 1 else r for r in evaluate(wd, ground_truth))
    n_videos = len(os.listdir(os.path.join(root, "videos")))
    print(f"\nDnS on a generated collection: {len(ground_truth)} query clips, "
          f"{sum(len(v) for v in ground_truth.values())} near-duplicate copies, {n_videos} videos in all "
          f"({time.time() - t0:.0f} s end to end)")
    print(format_table(rows))
    if "s2vs" not in builds:
        print(S2VS_HINT)
    atomic_write_json(os.path.join(workdir, "demo_results.json"), rows, indent=1)
    return rows
