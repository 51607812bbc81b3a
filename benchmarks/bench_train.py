"""Training throughput: triplets (selector: pairs) per second of the jitted, sharded train step,
for every student and the selector, at the official sizes (512-d, 9 regions, 32 triplets / 64
pairs per batch), on 1 and 8 devices.

    python benchmarks/bench_train.py                       # CPU: 1 device and 8 fake CPU devices
    python benchmarks/bench_train.py --devices 1 --frames 64 --steps 10
    python benchmarks/bench_train.py --platform gpu --devices 0   # every local GPU

Each device count runs in its own process (the CPU device count is fixed when jax starts). The
input pipeline is timed separately (batches/s of the grain iterator over a synthetic collection,
with and without reader threads), since it overlaps with the step in training.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

NETWORKS = ("fg_att_student", "fg_bin_student", "cg_student", "selector")


def _batch(network, n, frames, regions, dims, seed=0):
    rng = np.random.default_rng(seed)
    k = 2 if network == "selector" else 3
    videos = rng.standard_normal((n, k, frames, regions, dims)).astype(np.float32)
    videos /= np.linalg.norm(videos, axis=-1, keepdims=True)
    lengths = rng.integers(frames // 2, frames + 1, (n, k))
    masks = (np.arange(frames)[None, None] < lengths[..., None]).astype(np.float32)
    batch = dict(videos=videos * masks[..., None, None], masks=masks, weights=np.ones(n, np.float32))
    if network == "selector":
        batch["coarse"] = rng.uniform(0, 1, n).astype(np.float32)
        batch["labels"] = (rng.uniform(size=n) > 0.5).astype(np.float32)
    else:
        batch["targets"] = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return batch


def measure(args) -> list:
    """Runs in the child process: time every network's step on all visible devices."""
    import jax
    from dns_jax.training import default_config
    from dns_jax.training.step import (global_batch, init_state, make_loss_fn, make_mesh,
                                       make_optimizer, make_train_step, shardings)
    from dns_jax import pretrained

    rows = []
    mesh = make_mesh()
    n_dev = jax.device_count()
    for network in args.networks:
        cfg = default_config(network)
        model = {k: v for k, v in cfg.model.to_dict().items() if not (k == "bits" and not v)}
        model["dims"] = args.dims
        if args.precision:
            model["precision"] = args.precision
        module = pretrained.build_module(network, model)
        tx = make_optimizer(cfg.learning_rate)
        state = jax.device_put(init_state(module, tx, jax.random.PRNGKey(0)), shardings(mesh)[0])
        step = make_train_step(make_loss_fn(network, module, cfg.r_parameter), tx, mesh)
        n = args.batch if args.batch > 0 else cfg.batch_size
        n = int(np.ceil(n / n_dev) * n_dev)
        batches = [global_batch(_batch(network, n, args.frames, args.regions, args.dims, s), mesh)
                   for s in range(2)]
        rng = jax.random.PRNGKey(1)
        t0 = time.perf_counter()
        state, m = step(state, batches[0], rng)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        for i in range(args.warmup):
            state, m = step(state, batches[i % 2], rng)
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, m = step(state, batches[i % 2], rng)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / args.steps
        rows.append(dict(network=network, devices=n_dev, platform=jax.devices()[0].platform,
                         device_kind=jax.devices()[0].device_kind, batch=n, frames=args.frames,
                         step_ms=1e3 * dt, per_second=n / dt, compile_s=compile_s))
    return rows


def loader_throughput(frames: int, batch: int, threads: int, batches: int = 30) -> float:
    """Batches/s of the student loader's grain iterator (augmentation + padding) over an in-memory
    collection, with `threads` grain reader threads (0: built on demand in this thread)."""
    from dns_jax.datasets import synthetic
    from dns_jax.training import pipeline
    from dns_jax.datasets.stores import MemoryFeatures
    from dns_jax.training.pairs import PairSet

    col = synthetic.make_collection(num_families=32, family_size=4, num_distractors=32,
                                    min_frames=frames // 2, max_frames=frames, regions=9, dims=512)
    ids = sorted(col.videos)
    rng = np.random.default_rng(0)
    pairs = {q: {"positives": {int(t): 0.5 for t in rng.choice(len(ids), 3)},
                 "negatives": {int(t): 0.1 for t in rng.choice(len(ids), 3)}} for q in range(len(ids))}
    sampler = pipeline.TripletSampler(PairSet(ids, pairs))
    loader = pipeline.BatchLoader(sampler, MemoryFeatures(col.videos), "student", batch, batch,
                                  (32, 64, 128, 256, 320), augmentation=True, num_threads=threads)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    it.close()
    return batches / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 8],
                   help="device counts (CPU: fake devices; 0 = all devices of the platform)")
    p.add_argument("--platform", default="cpu")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS))
    p.add_argument("--frames", type=int, default=32, help="padded frames per video")
    p.add_argument("--regions", type=int, default=9)
    p.add_argument("--dims", type=int, default=512)
    p.add_argument("--batch", type=int, default=0, help="triplets/pairs per batch (0: config default)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", default="", help="model precision override ('default' for TF32 on GPU)")
    p.add_argument("--loader-threads", type=int, default=2,
                   help="grain reader threads for the input-pipeline timing (also timed with 0)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        print("ROWS " + json.dumps(measure(args)))
        return

    rows = []
    for n in args.devices:
        env = dict(os.environ, JAX_PLATFORMS=args.platform)
        if args.platform == "cpu" and n > 0:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, os.path.abspath(__file__), "--child"] + sys.argv[1:]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"benchmark with {n} device(s) failed")
        rows += json.loads([l for l in proc.stdout.splitlines() if l.startswith("ROWS ")][-1][5:])

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ntrain step, {args.dims}-d, {args.regions} regions, {args.frames} padded frames "
          f"(host: {os.cpu_count()} cores, load average {load})")
    print(f"{'network':<16} {'platform':<10} {'devices':>7} {'batch':>5} {'step ms':>9} "
          f"{'triplets/s':>11} {'compile s':>9}")
    for r in rows:
        unit = r["per_second"]
        print(f"{r['network']:<16} {r['device_kind'][:10]:<10} {r['devices']:>7} {r['batch']:>5} "
              f"{r['step_ms']:>9.1f} {unit:>11.1f} {r['compile_s']:>9.1f}")
    print("(selector rows count pairs, not triplets)")
    print(f"\ninput pipeline (grain; 32 triplets, <= {args.frames} frames, augmentation on):")
    for threads in sorted({0, args.loader_threads}):
        bps = loader_throughput(args.frames, 32, threads)
        print(f"  {threads} reader threads: {bps:.1f} batches/s = {32 * bps:.0f} triplets/s")


if __name__ == "__main__":
    main()
