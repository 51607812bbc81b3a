"""How much the PCA whitening fitted on a collection costs its own near-duplicates.

`dns-jax build` fits PCA whitening on the collection's region vectors and scales every kept
component by 1 / sqrt(eigenvalue). In a small collection a family of near-duplicates is a large
share of the vectors, so the directions it shares get large eigenvalues and are divided down: the
whitening suppresses what makes the copies alike (docs/s2vs.md, "The training families"). This
script scores a built work directory's raw features with ViSiL_f (region Chamfer, then frame
Chamfer; no weights) under whitening variants fitted on the same vectors:

    lambda_k + shrink * mean(lambda)      (shrink 0: the build's whitening; large: PCA projection only)

and prints the mAP with every member of every family as a query (the collection's
ground_truth.json). A measurement to choose a default with, not a default yet.

    python benchmarks/bench_whitening.py --workdir dns-jax-demo    # after `dns-jax demo --workdir dns-jax-demo`
"""
from __future__ import annotations

import argparse
import json
import os
import time

import h5py
import numpy as np

from dns_jax.datasets.stores import hdf5_dataset_paths
from dns_jax.features.pca import fit_pca_hdf5


def visil_f(a: np.ndarray, b: np.ndarray) -> float:
    """ViSiL_f of L2-normalised region features a [Ta, R, D], b [Tb, R, D]."""
    s = np.einsum("ird,jsd->ijrs", a, b)
    return float(s.max(3).mean(2).max(1).mean())


def family_map(feats, families) -> float:
    """mAP over every family member as a query (the query itself left out)."""
    ids = sorted(feats)
    members = [v for v in ids if v in families]
    aps = []
    for q in members:
        rel = {v for v in members if families[v] == families[q] and v != q}
        ranked = sorted(((visil_f(feats[q], feats[v]), v) for v in ids if v != q), reverse=True)
        hits, ap = 0, 0.0
        for r, (_, v) in enumerate(ranked, 1):
            if v in rel:
                hits += 1
                ap += hits / r
        aps.append(ap / len(rel))
    return float(np.mean(aps))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="a `dns-jax demo` work directory (build/ and collection/)")
    p.add_argument("--dims", default="512,256,64")
    p.add_argument("--shrink", default="0,0.1,1,10,1e6")
    args = p.parse_args()
    raw_path = os.path.join(args.workdir, "build", "features", "raw.hdf5")
    with open(os.path.join(args.workdir, "collection", "ground_truth.json")) as f:
        gt = json.load(f)
    families = {v: q for q, rel in gt.items() for v in [q] + list(rel)}
    pca = fit_pca_hdf5(raw_path)
    mean, V, d = (np.asarray(pca[k], np.float64) for k in ("mean", "V", "d"))
    order = np.argsort(-d, kind="stable")
    V, d = V[:, order], d[order]
    with h5py.File(raw_path, "r") as h5:
        raw = {os.path.splitext(n.split("/")[-1])[0]: h5[n][:].astype(np.float64) for n in hdf5_dataset_paths(h5)}
    print(f"{len(raw)} videos, {sum(v in raw for v in families)} family members, raw dims {mean.shape[0]}; "
          f"load {os.getloadavg()[0]:.1f}\n")
    print("| dims | shrink | ViSiL_f family mAP | s |")
    print("|---:|---:|---:|---:|")
    for dims in (int(x) for x in args.dims.split(",")):
        for shrink in (float(x) for x in args.shrink.split(",")):
            t0 = time.perf_counter()
            w = V[:, :dims] / np.sqrt(d[:dims] + shrink * d[:dims].mean() + 1e-7)
            feats = {}
            for v, x in raw.items():
                y = (x - mean) @ w
                feats[v] = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
            print(f"| {dims} | {shrink:g} | {family_map(feats, families):.3f} | {time.perf_counter() - t0:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
