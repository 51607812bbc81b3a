"""`dns-jax pca`: fit PCA whitening on a collection's region vectors."""
from __future__ import annotations

import argparse

import numpy as np

from dns_jax.features.pca import fit_pca_hdf5, parse_shrink
from dns_jax.fileio import atomic_savez

DESCRIPTION = ("Fit PCA whitening on a collection's region vectors (an HDF5 made by `dns-jax extract` "
               "without --pca), saved in the official {mean, V, d} layout that `extract --pca` reads.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="HDF5 of [T, R, D] region vectors (extract without --pca)")
    p.add_argument("--output", required=True, help=".npz to write {mean, V, d}")
    p.add_argument("--max-vectors", type=int, default=None, help="stop after this many region vectors")
    p.add_argument("--shrink", type=float, default=0.0,
                   help="also store this eigenvalue shrink: whitening then divides by sqrt(d + SHRINK x mean of "
                        "the kept d), which keeps a small collection's whitening from suppressing its own "
                        "near-duplicates (dns-jax build uses dims / frames of the fit); 0 (default): the "
                        "official whitening")


def run(args) -> int:
    parse_shrink(args.shrink, "--shrink")
    pca = fit_pca_hdf5(args.features, args.max_vectors, progress=True)
    extra = {"shrink": np.float64(args.shrink)} if args.shrink else {}
    atomic_savez(args.output, **pca, **extra)
    total = float(pca["d"].sum())
    kept = {k: float(pca["d"][:k].sum()) / total for k in (256, 512, 1024) if k < len(pca["d"])}
    print(f"wrote {args.output}: D={len(pca['d'])}; variance kept by the top components: "
          + ", ".join(f"{k}: {v:.1%}" for k, v in kept.items()))
    return 0
