"""DnS built from each teacher (ViSiL_f, no weights; S2VS trained on the collection) on real clips
with hard edits, evaluated on held-out families.

One run:
1. generates (offline) a collection of real clips (dns_jax.datasets.video_collection): 4 sources x
   HARD_EDITS copies -- picture-in-picture, overlays, low bitrate, crops, speed changes, in
   combinations -- plus procedural distractors;
2. splits it: the *training* part (families 0-1 and every other distractor) is built with
   `run_build` twice, same recipe and seed, teacher `visil_f` and teacher `s2vs` (trained on the
   training part); the features, PCA and whitening are computed once and shared;
3. adds the *held-out* part (families 2-3, the other distractors) to each build with
   `add_videos` (extracted and indexed with the trained networks; nothing is retrained);
4. every member of a family queries the whole index; prints, per teacher and method (teacher, CG
   student, fine student, DnS at 10/25/50 %), mAP and uAP on the held-out families and mAP on
   the training ones, ms per query, bytes per video, and the build's time; with two references that
   need no training on the same features (mean pooling, and "region max": the best region pair of
   the time-averaged regions, several vectors per video).

`--edits harder` adds one more edit to every copy (three or four in all), and `--photo-distractors N`
adds N distractors with real content (pans and zooms across the scikit-image wheel's photographs,
`pip install scikit-image`), half of the first 44 in the training part like the others: a harder
benchmark, on which the teachers and their students have more room to differ.

With `--protocol whole` nothing is held out: each teacher's build is trained on the whole collection
(as `dns-jax build` is used on a user's own videos: the S2VS teacher learns, without labels, from
every video it then indexes) and every member of the four families queries it.

    PYTHONPATH=. python benchmarks/bench_s2vs_teachers.py [--out /tmp/bench_s2vs_teachers] [--seed 0]
        [--protocol heldout|whole] [--edits hard|harder] [--photo-distractors 0]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import jax

HARD_EDITS = ("pip+lowq", "pip+speed", "overlay+crop", "overlay+lowq+color", "crop+speed+lowq", "pip+overlay",
              "border+overlay+speed", "crop+hflip+lowq")
# one more edit on each (three or four in all): the `--edits harder` set
HARDER_EDITS = ("pip+lowq+color", "pip+speed+lowq", "overlay+crop+lowq", "overlay+lowq+color+speed",
                "crop+speed+lowq+color", "pip+overlay+lowq", "border+overlay+speed+lowq", "crop+hflip+lowq+overlay")
EDIT_SETS = {"hard": HARD_EDITS, "harder": HARDER_EDITS}
TRAIN_FAMILIES = (0, 1)
TEACHERS = ("visil_f", "s2vs")
FEATURE_STAGES = ("features", "pca", "whiten")


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def split_collection(info, out: str, train_pool: int = 44, protocol: str = "heldout"):
    """Folders of links `train_videos/`, `heldout_videos/` and their family ground truths; with
    protocol 'whole', one part `all` (every video) and the ground truth of every family."""
    from dns_jax.training.s2vs.evaluate import family_ground_truth

    queries = sorted(info.ground_truth)
    if protocol == "whole":
        folder = _link_folder(info, os.path.join(out, "all_videos"), info.ids)
        gts = {"all": family_ground_truth(info.ground_truth)}
        return {"train": folder}, {"train": set(info.ids), "heldout": set()}, gts
    train_q = [q for i, q in enumerate(queries) if i in TRAIN_FAMILIES]
    # the even-numbered of the first `train_pool` distractors: more distractors only grow the held-out part
    train_d = {d for d in info.distractors if int(d[1:].split("_")[0]) < train_pool and int(d[1:].split("_")[0]) % 2 == 0}
    parts = {"train": set(train_q) | {v for q in train_q for v in info.ground_truth[q]} | train_d}
    parts["heldout"] = set(info.ids) - parts["train"]
    folders = {part: _link_folder(info, os.path.join(out, f"{part}_videos"), ids) for part, ids in parts.items()}
    gts = {"heldout": family_ground_truth({q: c for q, c in info.ground_truth.items() if q not in train_q}),
           "train": family_ground_truth({q: c for q, c in info.ground_truth.items() if q in train_q})}
    return folders, parts, gts


def _link_folder(info, folder: str, ids) -> str:
    """A folder of links to the collection's videos `ids` (named by id)."""
    os.makedirs(folder, exist_ok=True)
    for v in sorted(ids):
        link = os.path.join(folder, f"{v}.mp4")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(info.path(v)), link)
    return folder


def build(teacher: str, out: str, folders, parts, args, log):
    """Build the training part with `teacher` (features shared with the first build), then add the
    held-out part; returns (workdir, seconds per phase)."""
    from dns_jax.app.build import BuildOptions, add_videos, run_build
    from dns_jax.app.workdir import Workdir

    wd = os.path.join(out, f"build_{teacher}")
    shared = os.path.join(out, "build_features")
    times = {}
    opts = dict(videos=folders["train"], recipe=args.recipe, seed=args.seed, progress=args.progress)
    if not Workdir(shared).done("whiten"):
        t0 = time.time()
        run_build(BuildOptions(workdir=shared, teacher="visil_f", **opts), stages=FEATURE_STAGES)
        times["shared features"] = time.time() - t0
    if not os.path.exists(wd):
        shutil.copytree(shared, wd, ignore=shutil.ignore_patterns(".lock"))
    recorded = Workdir(wd).settings().get("teacher")
    t0 = time.time()
    # auto_retrain off: the held-out videos added later must never be trained on
    run_build(BuildOptions(workdir=wd, teacher=teacher, reset="teacher" if recorded != teacher else None,
                           auto_retrain=False, **opts))
    times["train"] = time.time() - t0
    heldout = sorted(parts["heldout"])
    have = set(Workdir(wd).read_state().get("sources", {}))
    todo = [v for v in heldout if v not in have]
    t0 = time.time()
    if todo:
        add_videos(wd, [os.path.join(folders["heldout"], f"{v}.mp4") for v in todo], todo, progress=args.progress)
    times["add held-out"] = time.time() - t0
    log(f"[bench] {teacher}: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return wd, times


SELECTOR_RECIPE = """from dns_jax.config_files import load_config


def get_config(arg=None):
    c = load_config({recipe!r})
    c.selector.target = {target!r}
    return c
"""


def retrain_selector(wd: str, teacher: str, target: str, folders, args, log) -> str:
    """A copy of build `wd` whose selector is trained again with labels `target` (and indexed)."""
    from dns_jax.app.build import BuildOptions, add_videos, run_build

    out = f"{wd}_selector-{target}"
    if not os.path.exists(out):
        shutil.copytree(wd, out, ignore=shutil.ignore_patterns(".lock"))
    recipe = os.path.join(args.out, f"recipe_selector_{target}.py")
    with open(recipe, "w") as fh:
        fh.write(SELECTOR_RECIPE.format(recipe=args.recipe, target=target))
    from dns_jax.app.workdir import Workdir
    reset = "selector" if Workdir(out).settings().get("selector.target") != target else None
    t0 = time.time()
    run_build(BuildOptions(workdir=out, videos=folders["train"], teacher=teacher, recipe=recipe, seed=args.seed,
                           progress=args.progress, reset=reset, auto_retrain=False))
    have = set(Workdir(out).read_state().get("sources", {}))
    todo = sorted(set(Workdir(wd).read_state().get("sources", {})) - have)
    if todo:
        add_videos(out, [os.path.join(folders["heldout"], f"{v}.mp4") for v in todo], todo, progress=args.progress)
    log(f"[bench] {teacher}: selector ({target}) and index again in {time.time() - t0:.0f} s")
    return out


def segment_regions(x, segments: int = 1):
    """[T, R, D] region features -> [segments * R, D]: each region's mean over each of `segments`
    equal stretches of the video (frame t of T in stretch floor(t * segments / T); a stretch with no
    frame, in a video shorter than `segments`, takes the whole video's mean)."""
    import numpy as np

    x = np.asarray(x, np.float32)
    part = np.minimum(np.arange(len(x)) * segments // len(x), segments - 1)
    return np.concatenate([x[part == i].mean(0) if np.any(part == i) else x.mean(0) for i in range(segments)])


def weight_free_rows(wd: str, ids, queries):
    """Two descriptors of the build's whitened features that need no training, as references for
    the CG student (one vector per video): mean pooling (the CG student's starting point) and
    "region max", each of the 9 regions averaged over time and the best of the 9 x 9 region pairs'
    cosines (several vectors per video, so no dot product: picture-in-picture and overlaid copies
    match on the regions they keep)."""
    import numpy as np

    from dns_jax.app.workdir import Workdir
    from dns_jax.datasets.stores import open_features

    store = open_features(Workdir(wd).features)
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    regions = unit(np.stack([segment_regions(store[v]) for v in ids]))                  # [N, 9, D]
    mean = unit(regions.sum(1))                                                          # [N, D]
    q = [ids.index(v) for v in queries]
    rows = []
    for method, vectors, score in (
            ("mean pooling (no training)", mean, lambda: mean[q] @ mean.T),
            ("region max (no training)", regions,
             lambda: np.einsum("qad,nbd->qnab", regions[q], regions).max((2, 3)))):
        t0 = time.time()
        sims = score()
        rows.append({"method": method, "scores": sims, "ms_per_query": 1000 * (time.time() - t0) / len(q),
                     "bytes_per_video": vectors[0].size * 4})       # float32, as an index stores coarse vectors
    return rows


def edit_of(info, video: str) -> str:
    """The edits of a collection video joined by '+' ('source' for a query clip)."""
    edits = info.videos[video]["recipe"].get("edits") or []
    return "+".join(name for name, _ in edits) or "source"


def precision_by_edit(scores, ids, queries, gt, info):
    """{edit: mean precision at its rank}: each query's AP is the mean over its relevant videos of the
    precision at their ranks (ties ranked as listed, as `ranking_metrics`); grouping those terms by
    the relevant video's edits shows which edits a method loses (their mean over all terms is the
    mean AP when every query has as many relevant videos)."""
    import numpy as np

    terms = {}
    for i, q in enumerate(queries):
        if q not in gt:
            continue
        keep = [j for j, v in enumerate(ids) if v != q]
        order = np.argsort(-np.asarray(scores[i], np.float64)[keep], kind="stable")
        ranked = [ids[keep[j]] for j in order]
        hits = 0
        for rank, v in enumerate(ranked, 1):
            if v in gt[q]:
                hits += 1
                terms.setdefault(edit_of(info, v), []).append(hits / rank)
    return {e: float(np.mean(t)) for e, t in sorted(terms.items())}


def stage_seconds(wd: str):
    from dns_jax.app.workdir import Workdir
    done = Workdir(wd).read_state()["done"]
    return {k: v.get("seconds") for k, v in done.items() if isinstance(v, dict)}


def main():
    from dns_jax.app.demo import ranking_metrics, score_stages
    from dns_jax.datasets.video_collection import make_collection

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/bench_s2vs_teachers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distractors", type=int, default=44,
                   help="distractors in all: every other of the first 44 is in the training part, the rest held out")
    p.add_argument("--recipe", default="build:demo")
    p.add_argument("--teachers", default=",".join(TEACHERS))
    p.add_argument("--selector-targets", default="",
                   help="comma-separated selector labels (gap, inversion) to train again on each build and compare")
    p.add_argument("--protocol", choices=("heldout", "whole"), default="heldout",
                   help="heldout: train on two families and half the first distractors, add the rest untrained "
                        "and query the added families; whole: train on every video and query every family")
    p.add_argument("--edits", choices=sorted(EDIT_SETS), default="hard",
                   help="hard: two or three edits on every copy; harder: one more on each")
    p.add_argument("--photo-distractors", type=int, default=0,
                   help="distractors panning across real photographs (needs scikit-image), besides --distractors")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    edits = EDIT_SETS[args.edits]
    log = print
    os.makedirs(args.out, exist_ok=True)

    t0 = time.time()
    info = make_collection(os.path.join(args.out, "collection"), seed=args.seed, num_sources=4, edits=edits,
                           extra_edits=0, num_distractors=args.distractors,
                           photo_distractors=args.photo_distractors)
    t_collection = time.time() - t0
    folders, parts, gts = split_collection(info, args.out, protocol=args.protocol)
    log(f"[bench] collection: {len(info.ids)} videos ({t_collection:.0f} s); training part {len(parts['train'])}, "
        f"held-out part {len(parts['heldout'])}")
    columns = {"heldout": "held-out", "train": "training families", "all": "all families"}
    first_split = next(iter(gts))

    results = {}
    shared_seconds = 0.0
    for teacher in args.teachers.split(","):
        wd, times = build(teacher, args.out, folders, parts, args, log)
        shared_seconds += times.pop("shared features", 0.0)
        queries = sorted(set().union(*gts.values()))
        ids, stages = score_stages(wd, queries)
        if teacher == args.teachers.split(",")[0]:
            stages = weight_free_rows(wd, ids, queries) + stages
        rows = []
        for st in stages:
            row = {k: v for k, v in st.items() if k != "scores"}
            for split, gt in gts.items():
                row[split] = ranking_metrics(st["scores"], ids, queries, gt)
            rows.append(row)
        for st, row in zip(stages, rows):
            row["by_edit"] = precision_by_edit(st["scores"], ids, queries, gts[first_split], info)
        for target in filter(None, args.selector_targets.split(",")):
            other = retrain_selector(wd, teacher, target, folders, args, log)
            ids2, stages2 = score_stages(other, queries)
            order = [ids2.index(v) for v in ids]            # a re-built index lists the videos in another order
            for st in stages2:
                if st["method"].startswith("DnS"):
                    row = {k: v for k, v in st.items() if k != "scores"}
                    row["method"] += f" (selector: {target})"
                    for split, gt in gts.items():
                        row[split] = ranking_metrics(st["scores"][:, order], ids, queries, gt)
                    rows.append(row)
        storage = {"index": _size(os.path.join(wd, "index")), "models": _size(os.path.join(wd, "models"))}
        results[teacher] = {"rows": rows, "times": times, "stages": stage_seconds(wd), "storage": storage}

    print(f"\nDnS from each teacher ({args.protocol}): {len(info.ids)} videos ("
          + " and ".join(f"{len(gt)} {columns[k]} members" for k, gt in gts.items()) + " as queries); edits "
          f"{', '.join(edits)}; {args.photo_distractors} photo distractors; recipe {args.recipe}, seed {args.seed}; "
          f"jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, load {os.getloadavg()[0]:.1f}")
    print(f"shared features, PCA, whitening of the training part: {shared_seconds:.0f} s")
    first = next(iter(gts))
    head = [f"mAP {columns[first]}", f"uAP {columns[first]}"] + [f"mAP {columns[k]}" for k in list(gts)[1:]]
    print("\n| teacher | method | " + " | ".join(head) + " | ms / query | bytes / video |")
    print("|---|---|" + "---|" * len(head) + "---|---|")
    for teacher, r in results.items():
        for row in r["rows"]:
            b = row["bytes_per_video"]
            who = "(none)" if row["method"].endswith("(no training)") else teacher
            cells = ([f"{row[first]['mAP']:.3f}", f"{row[first]['uAP']:.3f}"]
                     + [f"{row[k]['mAP']:.3f}" for k in list(gts)[1:]])
            print(f"| {who} | {row['method']} | " + " | ".join(cells) +
                  f" | {row['ms_per_query']:.2f} | {'' if b is None else f'{b:,.0f}'} |")
    picked = ("teacher", "coarse student", "fine student", "DnS, budget 0.1")
    print(f"\nMean precision at the rank of each relevant video, by its edits ({columns[first]} queries; "
          "the terms of their AP):")
    cols = [(t, row) for t, r in results.items() for row in r["rows"]
            if row["method"].startswith(picked) and "by_edit" in row]
    print("\n| edits | " + " | ".join(f"{t}: {row['method'].split(' (')[0]}" for t, row in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for edit in cols[0][1]["by_edit"]:
        print(f"| {edit} | " + " | ".join(f"{row['by_edit'][edit]:.3f}" for _, row in cols) + " |")
    print("\n| teacher | build s (training part) | add held-out s | stages s | index MB | models MB |")
    print("|---|---|---|---|---|---|")
    for teacher, r in results.items():
        st = ", ".join(f"{k} {v}" for k, v in r["stages"].items() if k not in FEATURE_STAGES)
        print(f"| {teacher} | {r['times']['train']:.0f} | {r['times']['add held-out']:.0f} | {st} | "
              f"{r['storage']['index'] / 1e6:.2f} | {r['storage']['models'] / 1e6:.2f} |")
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({"results": results, "protocol": args.protocol, "edits": edits,
                   "photo_distractors": args.photo_distractors, "seed": args.seed,
                   "recipe": args.recipe, "shared_seconds": shared_seconds, "videos": len(info.ids)}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
