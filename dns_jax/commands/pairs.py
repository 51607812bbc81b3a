"""`dns-jax pairs`: training pairs of an unlabelled collection scored by a teacher."""
from __future__ import annotations

import argparse

from dns_jax.datasets.stores import open_features
from dns_jax.fileio import read_id_list
from dns_jax.training.pairs import write_pairs
from dns_jax.training.teacher import __doc__ as TEACHER_DOC
from dns_jax.training.teacher import select_pairs, teacher_scorer

DESCRIPTION = TEACHER_DOC


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="feature file (HDF5 / .npz / folder of .npy / tfds dataset)")
    p.add_argument("--teacher", default="visil_f", help="'visil_f' (default), NAME:PATH or a checkpoint directory")
    p.add_argument("--output", required=True, help="pair file to write (.npz, .json or .json.gz)")
    p.add_argument("--ids-file", help="optional text file of video ids to use (one per line)")
    p.add_argument("--num-candidates", type=int, default=64, help="teacher-scored nearest videos per query")
    p.add_argument("--num-positives", type=int, default=8, help="positives per query")
    p.add_argument("--positive-threshold", type=float, default=-1.0, help="minimum teacher similarity of a positive")
    p.add_argument("--num-negatives", type=int, default=16, help="random negatives per query")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per teacher call")
    p.add_argument("--seed", type=int, default=0, help="seed of the random negatives")


def run(args) -> int:
    store = open_features(args.features)
    ids = read_id_list(args.ids_file) if args.ids_file else None
    _, dims = store.shape()
    scorer = teacher_scorer(args.teacher, dims=dims, batch_size=args.batch_size)
    ps = select_pairs(store, scorer, ids, args.num_candidates, args.num_positives, args.positive_threshold,
                      args.num_negatives, args.seed)
    write_pairs(ps, args.output)
    print(f"wrote {ps.num_pairs()} pairs of {len(ps.pairs)} queries to {args.output}")
    return 0
