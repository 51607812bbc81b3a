"""Which teacher for `dns-jax build`: ViSiL_f (no weights) or an S2VS network trained on the
collection itself (dns_jax/app/s2vs_teacher.py)?

Generates the demo collection of real clips (dns_jax.datasets.video_collection defaults: 4 sources x
5 near-duplicate copies with hard edits -- picture-in-picture, speed changes, borders, crops, flips,
each combined with one of colour, low bitrate, trim, ... -- and 10 distractors, 34 videos of 4-8 s),
trains the S2VS teacher on it with configs/s2vs.py:teacher (offline backbone, PCA fitted on the
collection), and scores every query against every video with ViSiL_f, the S2VS network at a random
initialisation, at the recipe's start (`init='visil_f'`: ViSiL_f on 4x4 frame blocks) and after
training. Prints time, storage and retrieval quality:

  mAP      per-query average precision of the copies (the demo's queries), and over families
           (every member of a family as a query)
  uAP      all (query, video) pairs ranked together: does one threshold separate copies?
  margin   copies' mean similarity minus the best other video's, per query

    PYTHONPATH=. python benchmarks/bench_s2vs_dns.py [--out /tmp/bench_s2vs_dns] [--steps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    from dns_jax import pretrained
    from dns_jax.app.s2vs_teacher import teacher_config, train_s2vs_teacher
    from dns_jax.datasets.video_collection import make_collection
    from dns_jax.models.chamfer_start import chamfer_start
    from dns_jax.training.s2vs.evaluate import (
        collection_map,
        family_ground_truth,
        read_features,
    )
    from dns_jax.training.teacher import teacher_scorer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/bench_s2vs_dns")
    p.add_argument("--dims", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--views", type=int, default=None, help="view-bank rounds (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    t0 = time.time()
    info = make_collection(os.path.join(args.out, "collection"), seed=args.seed)
    t_collection = time.time() - t0
    videos = sorted((v, str(info.path(v))) for v in info.ids)
    recipe = {"model": {"dims": args.dims}, "extractor": {"dims": args.dims}, "progress_bar": False}
    if args.steps:
        recipe["num_train_steps"] = args.steps
        recipe["warmup_steps"] = max(args.steps // 10, 0)
    if args.views:
        recipe["feature_bank"] = {"views": args.views}
    workdir = os.path.join(args.out, "s2vs_teacher")
    stages = []
    t0 = time.time()
    train_s2vs_teacher(videos, None, workdir, recipe=recipe, seed=args.seed, progress=False,
                       log=lambda m: (stages.append((round(time.time() - t0, 1), m)), print(m)))
    t_teacher = time.time() - t0
    cfg = teacher_config(recipe, args.seed)

    feats = read_features(os.path.join(workdir, "features.hdf5"))
    gts = {"queries": info.ground_truth, "families": family_ground_truth(info.ground_truth)}
    init = pretrained.init_network("s2vs", jax.random.fold_in(jax.random.PRNGKey(args.seed), 0),
                                   **cfg.model.to_dict())
    trained = pretrained.load("s2vs", workdir)
    visil_f = teacher_scorer("visil_f", dims=args.dims)
    nets = {"ViSiL_f": (visil_f.name, visil_f.module, visil_f.variables),
            "S2VS random init": ("s2vs", init.module, init.variables)}
    if cfg.init == "visil_f":               # the recipe's start: ViSiL_f on 4x4 frame blocks
        nets["S2VS chamfer start"] = ("s2vs", init.module, chamfer_start(init.variables, cfg.init_noise))
    nets["S2VS teacher"] = ("s2vs", trained.module, trained.variables)
    rows = {}
    for label, (name, module, variables) in nets.items():
        t = time.time()
        res = {k: collection_map(name, module, variables, feats, gt) for k, gt in gts.items()}
        rows[label] = {"seconds": time.time() - t, **res}

    storage = {f: _size(os.path.join(workdir, f)) for f in ("frames.hdf5", "view_bank.hdf5", "pca.npz", "features.hdf5")}
    step_dirs = [d for d in os.listdir(workdir) if d.isdigit()]
    storage["checkpoint"] = _size(os.path.join(workdir, max(step_dirs, key=int))) if step_dirs else 0
    print(f"\ncollection: {len(info.ids)} videos ({t_collection:.0f} s to generate); recipe configs/s2vs.py:teacher "
          f"({cfg.num_train_steps} steps, batch {cfg.batch_size}, {cfg.feature_bank.views} views, "
          f"window {cfg.augmentation.window_size}, {args.dims}-d); jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"S2VS teacher: {t_teacher:.0f} s in all; stages:")
    for t, m in stages:
        print(f"  {t:7.1f} s  {m}")
    print("storage: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in storage.items()))
    print("\n| teacher | mAP (queries) | uAP (queries) | margin | mAP (families) | uAP (families) | scoring s |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        q, f = r["queries"], r["families"]
        print(f"| {label} | {q['mAP']:.3f} | {q['uAP']:.3f} | {q['margin']:.3f} | {f['mAP']:.3f} | {f['uAP']:.3f} "
              f"| {r['seconds']:.1f} |")
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump({"rows": rows, "storage": storage, "teacher_seconds": t_teacher, "stages": stages,
                   "recipe": cfg.to_dict()}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
