"""Throughput of the jitted frame-feature extractor (frames/s) at a few batch sizes.

    python benchmarks/bench_features.py [--batch-sizes 1,8,32] [--frames 32] [--backbones resnet50,resnet50_1by2]
                                        [--size 224x224] [--precision default] [--video clip.mp4]

Weights are random (speed does not depend on their values), so nothing is downloaded. Each row:
one `Extractor` call on `--frames` uint8 frames after a warm-up call (compile time reported
separately); the time includes host->device copies and reading the features back. `--video`
also times `load_video` (decode + resize + crop) on a file.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dns_jax.features.backbone import resnet50  # noqa: E402
from dns_jax.features.extractor import Extractor, FeatureExtractor  # noqa: E402
from dns_jax.features.offline import resnet50_1by2  # noqa: E402

BACKBONES = {"resnet50": (resnet50, "imagenet"), "resnet50_1by2": (resnet50_1by2, "caffe_bgr")}


def build(name: str, batch_size: int, pca_dims: int, precision, hw):
    make, normalizer = BACKBONES[name]
    model = FeatureExtractor(backbone=make(precision=precision), normalizer=normalizer,
                             pca_dims=pca_dims or None)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, *hw, 3), jnp.uint8))
    return Extractor(model, variables, batch_size=batch_size, name=name)


def time_call(fn, *args, reps: int):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--frames", type=int, default=32, help="frames per timed call")
    ap.add_argument("--backbones", default="resnet50,resnet50_1by2")
    ap.add_argument("--size", default="224x224", help="frame HxW")
    ap.add_argument("--pca-dims", type=int, default=512, help="0: no PCA")
    ap.add_argument("--precision", default="default", choices=["default", "high", "highest"])
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (best is reported)")
    ap.add_argument("--video", default=None, help="also time load_video on this file")
    args = ap.parse_args(argv)
    hw = tuple(int(s) for s in args.size.split("x"))
    precision = None if args.precision == "default" else args.precision
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, *hw, 3), dtype=np.uint8)

    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}, {os.cpu_count()} CPUs; "
          f"{args.frames} frames of {hw[0]}x{hw[1]}, PCA {args.pca_dims or 'off'}, precision {args.precision}")
    print(f"| {'backbone':<14} | {'batch':>5} | {'compile s':>9} | {'frames/s':>9} | {'ms/frame':>8} |")
    print(f"|{'-' * 16}|{'-' * 7}|{'-' * 11}|{'-' * 11}|{'-' * 10}|")
    for name in args.backbones.split(","):
        for b in (int(s) for s in args.batch_sizes.split(",")):
            ex = build(name, b, args.pca_dims, precision, hw)
            t = time.perf_counter()
            ex(frames[:b])
            compile_s = time.perf_counter() - t
            best = time_call(ex, frames, reps=args.reps)
            print(f"| {name:<14} | {b:>5} | {compile_s:>9.2f} | {args.frames / best:>9.1f} | "
                  f"{1000 * best / args.frames:>8.2f} |", flush=True)

    if args.video:
        from dns_jax.features.video import load_video
        load_video(args.video)  # warm the import and the file cache
        t = time.perf_counter()
        v = load_video(args.video)
        dt = time.perf_counter() - t
        print(f"\nload_video({os.path.basename(args.video)}): {len(v)} frames at 1 fps in {dt:.2f} s "
              f"({len(v) / dt:.1f} sampled frames/s)")


if __name__ == "__main__":
    main()
