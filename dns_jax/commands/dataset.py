"""`dns-jax dataset`: a feature file -> a tfds array_record dataset readable without TensorFlow."""
from __future__ import annotations

import argparse
import sys

from dns_jax.commands.common import add_quiet
from dns_jax.datasets import convert_features

DESCRIPTION = """Convert a feature file into a tfds array_record dataset readable without TensorFlow.

FEATURES: an official HDF5 feature file (one dataset per video id, [T, 9, 512] float32; nested ids
such as CC_WEB_VIDEO's 'set/name' work), an .npz or a folder of <id>.npy files. The dataset is
written to OUT_DIR/NAME/1.0.0 (array_record files, dataset_info.json and the id index
dns_jax_index.json). Videos that cannot be stored (unreadable, NaN/inf, empty, another shape) are
reported and skipped; the rest are converted. Pass OUT_DIR (or the dataset folder) wherever a
feature file is accepted: train, index, evaluate."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", help="HDF5 / .npz file or folder of .npy files with region features")
    p.add_argument("out_dir", help="tfds data_dir; the dataset goes to OUT_DIR/NAME/1.0.0")
    p.add_argument("--name", default="dns_features",
                   help="dataset name (lower case, digits, '_'), e.g. fivr5k_features (default: %(default)s)")
    add_quiet(p)


def run(args) -> int:
    report = convert_features(args.features, args.out_dir, name=args.name, progress=not args.quiet,
                              log=lambda m: print(m, file=sys.stderr))
    print(report)
    return 0
