"""Tile-level timing of the comparator's conv2 and conv3: direct (XLA's convolution) against
Winograd F(2x2,3x3) and F(4x4,3x3), at the shapes a 60-row, 512-column CNN tile (+ 8-frame halo)
gives them on CPU, over a canvas's worth of tiles (lax.map, as comparator_canvas runs them).

    python benchmarks/bench_winograd.py [--tiles 8] [--runs 30] [--rows 60] [--cols 528]
"""
import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dns_jax.retrieval import winograd as wg


def direct(x, k, b, precision=None):
    return lax.conv_general_dilated(x[None], k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=precision)[0] + b


def pool(y):
    return lax.reduce_window(y, -jnp.inf, lax.max, (2, 2, 1), (2, 2, 1), "VALID")


def variants(k2, b2, k3, b3):
    u = {m: (wg.transform_kernel(k2, m), wg.transform_kernel(k3, m)) for m in wg.TILES}
    out = {
        "conv2+pool direct": (2, lambda x: pool(jax.nn.relu(direct(x, k2, b2)))),
        "conv3 direct": (3, lambda x: jax.nn.relu(direct(x, k3, b3))),
    }
    for m in wg.TILES:
        out[f"conv2+pool F({m},3) fused"] = (2, lambda x, m=m: wg.conv3x3_relu_pool(x, u[m][0], b2, m))
        out[f"conv2+pool F({m},3)"] = (2, lambda x, m=m: pool(jax.nn.relu(wg.conv3x3(x, u[m][0], b2, m))))
        out[f"conv3 F({m},3)"] = (3, lambda x, m=m: jax.nn.relu(wg.conv3x3(x, u[m][1], b3, m)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiles", type=int, default=8)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--rows", type=int, default=60, help="tile rows (full resolution, with halo)")
    p.add_argument("--cols", type=int, default=528, help="tile columns (full resolution, with halo)")
    p.add_argument("--only", default="", help="comma list of substrings of variant names")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    h2, w2 = a.rows // 2, a.cols // 2          # conv2 output (half resolution)
    h3, w3 = h2 // 2, w2 // 2                  # conv3 output (quarter resolution)
    k2 = jnp.asarray(rng.standard_normal((3, 3, 32, 64)) / 17, jnp.float32)
    k3 = jnp.asarray(rng.standard_normal((3, 3, 64, 128)) / 24, jnp.float32)
    b2 = jnp.asarray(rng.standard_normal(64) * 0.1, jnp.float32)
    b3 = jnp.asarray(rng.standard_normal(128) * 0.1, jnp.float32)
    xs = {2: jnp.asarray(np.abs(rng.standard_normal((a.tiles, h2 + 2, w2 + 2, 32))), jnp.float32),
          3: jnp.asarray(np.abs(rng.standard_normal((a.tiles, h3 + 2, w3 + 2, 64))), jnp.float32)}
    vs = {k: v for k, v in variants(k2, b2, k3, b3).items()
          if not a.only or any(s in k for s in a.only.split(","))}
    fns = {k: jax.jit(lambda x, f=f: lax.map(f, x)) for k, (_, f) in vs.items()}
    refs = {}
    for k, (layer, _) in vs.items():
        o = fns[k](xs[layer]).block_until_ready()
        refs.setdefault(layer, o)
        err = float(jnp.abs(o - refs[layer]).max())
        print(f"{k:28s} out {tuple(o.shape[1:])} max |diff| vs direct {err:.2e}")
    times = {k: [] for k in vs}
    for _ in range(a.runs):
        for k, (layer, _) in vs.items():
            t = time.perf_counter()
            fns[k](xs[layer]).block_until_ready()
            times[k].append(time.perf_counter() - t)
    macs = {2: h2 * w2 * 9 * 32 * 64, 3: h3 * w3 * 9 * 64 * 128}
    print(f"\n{a.tiles} tiles of {a.rows} x {a.cols} cells, {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':28s} {'median ms/tile':>14s} {'min':>7s} {'direct G MAC/s eq.':>18s}")
    for k, (layer, _) in vs.items():
        med = np.median(times[k]) / a.tiles
        print(f"{k:28s} {med * 1e3:14.3f} {min(times[k]) / a.tiles * 1e3:7.3f} {macs[layer] / med / 1e9:18.1f}")


if __name__ == "__main__":
    main()
