"""S2VS training throughput (clips/s) on this machine: the 'pixels' step (augmentation + frozen
extractor + network, all in one jitted step) against the 'feature_bank' step (stored views), and
what the bank costs to build per view.

Inputs are random (uint8 clips, unit-norm features): the cost of a step does not depend on the
content. Frame decoding and the input pipeline are left out (they overlap the step in training).
The extractor is the offline ResNet-50-1by2 backbone (resnet50_1by2_opennsfw) with L3-iMAC and a
PCA to `dims` (random whitening: the cost is the same).

    PYTHONPATH=. python benchmarks/bench_s2vs_train.py [--batch 4] [--window 4] [--dims 64] [--steps 3]
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def _time_steps(step, state, batch, rng, frozen, n):
    """(seconds of the first, compiling call, mean seconds of the next n): each step takes the
    state the previous one returned and its loss is read, as in training."""
    t = time.perf_counter()
    state, m = step(state, batch, rng, frozen)
    float(m["loss"])
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        state, m = step(state, batch, rng, frozen)
        float(m["loss"])
    return first, (time.perf_counter() - t) / n


def main():
    from dns_jax import augmentation, pretrained
    from dns_jax.features.extractor import load_extractor
    from dns_jax.training.s2vs import (
        default_s2vs_config,
        make_optimizer,
        make_s2vs_train_step,
        validate_s2vs_config,
    )
    from dns_jax.training.s2vs.config import augmentation_config, model_config
    from dns_jax.training.s2vs.step import make_bank_fn
    from dns_jax.training.step import init_state, make_mesh, shardings

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4, help="videos per pixels step")
    p.add_argument("--bank-batch", type=int, default=16, help="videos per feature-bank step")
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--dims", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
    p.add_argument("--modes", default="feature_bank,pixels,bank", help="what to time (comma-separated)")
    args = p.parse_args()

    cfg = default_s2vs_config("local")
    cfg.model.dims = cfg.extractor.dims = args.dims
    cfg.augmentation.window_size, cfg.augmentation.source_frames = args.window, 2 * args.window
    cfg.augmentation.strong.temporal.pause_frames = (0, max(args.window // 4 - 1, 0))
    rng = np.random.default_rng(0)
    mesh = make_mesh()
    replicated, _ = shardings(mesh)
    rows = []

    ex = load_extractor("resnet50_1by2_opennsfw", None, batch_size=cfg.extractor.batch_frames)
    variables = {"params": {**ex.variables["params"], "pca": {
        "mean": np.zeros(ex.model.region_dims, np.float32),
        "DVt": rng.normal(size=(ex.model.region_dims, args.dims)).astype(np.float32)}}}
    extractor = ex.model.clone(pca_dims=args.dims)
    overlays = augmentation.build_overlay_bank(seed=0)

    modes = args.modes.split(",")
    for mode, batch_size in (("feature_bank", args.bank_batch), ("pixels", args.batch)):
        if mode not in modes:
            continue
        cfg.mode, cfg.batch_size = mode, batch_size
        c = validate_s2vs_config(cfg)
        module = pretrained.build_module("s2vs", model_config(c))
        tx = make_optimizer(c)
        # placed as training places it, so that the state a step returns has the same sharding
        # and the second step does not compile again
        state = jax.device_put(init_state(module, tx, jax.random.PRNGKey(0)), replicated)
        if mode == "pixels":
            step = make_s2vs_train_step(module, tx, mesh, c, augmentation_config(c), extractor, overlays)
            s = c.augmentation.source_size
            batch = {"videos": rng.integers(0, 255, (batch_size, 2 * args.window, s, s, 3), dtype=np.uint8)}
            frozen = variables
        else:
            step = make_s2vs_train_step(module, tx, mesh, c, augmentation_config(c))
            x = rng.normal(size=(2, batch_size, args.window, 9, args.dims)).astype(np.float32)
            x /= np.linalg.norm(x, axis=-1, keepdims=True)
            batch = {"weak": x[0], "strong": x[1], "video": np.arange(batch_size, dtype=np.int32),
                     "host": np.full(batch_size, -1, np.int32), "lam": np.zeros(batch_size, np.float32)}
            frozen = {}
        first, per_step = _time_steps(step, state, batch, jax.random.PRNGKey(1), frozen, args.steps)
        rows.append((mode, batch_size, first, per_step, batch_size / per_step))

    print(f"jax {jax.__version__}, {jax.devices()[0].platform} x{jax.device_count()}; window {args.window} "
          f"frames of 224x224, {args.dims}-d features, 9 regions; offline ResNet-50-1by2 backbone")
    print("\n| mode | videos/step | first step (compile) s | step s | clips/s |")
    print("|---|---|---|---|---|")
    for mode, b, first, per, cps in rows:
        print(f"| {mode} | {b} | {first:.1f} | {per:.3f} | {cps:.1f} |")
    if "bank" not in modes:
        return
    # the bank: one augmentation batch of bank_batch videos -> weak + strong views
    c = validate_s2vs_config(cfg)
    fn = make_bank_fn(extractor, augmentation_config(c), overlays, c.extractor.batch_frames, variables)
    s = c.augmentation.source_size
    clips = rng.integers(0, 255, (c.feature_bank.batch_size, 2 * args.window, s, s, 3), dtype=np.uint8)
    t = time.perf_counter()
    jax.block_until_ready(fn(jax.random.PRNGKey(0), clips))
    bank_first = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(args.steps):
        jax.block_until_ready(fn(jax.random.PRNGKey(i + 1), clips))
    bank_per = (time.perf_counter() - t) / args.steps

    views = 2 * c.feature_bank.batch_size
    print(f"\nbank building: {c.feature_bank.batch_size} videos -> {views} views ({views * args.window} frames) "
          f"in {bank_per:.2f} s ({views / bank_per:.1f} views/s; first call with compile {bank_first:.1f} s)")


if __name__ == "__main__":
    main()
