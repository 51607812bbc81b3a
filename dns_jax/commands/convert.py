"""`dns-jax convert` (also `python -m dns_jax.convert`): an official .pth -> an orbax checkpoint."""
from __future__ import annotations

import argparse

import jax
import numpy as np

from dns_jax import checkpoint, pretrained
from dns_jax.models import registry

DESCRIPTION = ("Convert an official DnS / ViSiL PyTorch checkpoint (.pth) into an orbax checkpoint "
               "directory, without PyTorch. The network is recognised from the file name or given with "
               "--network; its options (e.g. NetVLAD size) are read from the weight shapes.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pth", help="official .pth file (e.g. dns_fg_att_student.pth, visil.pth)")
    p.add_argument("out_dir", help="output directory for the orbax checkpoint")
    p.add_argument("--network", choices=sorted(registry.NETWORKS), help="network name; default: from the file name")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")


def run(args) -> int:
    spec = f"{args.network}:{args.pth}" if args.network else args.pth
    model = pretrained.load_spec(spec, role="convert")
    path = checkpoint.save_network(args.out_dir, model.name, model.config, model.variables, force=args.force)
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(model.variables))
    print(f"converted {args.pth} -> {path} ({model.name}, {n:,} weights, config {model.config})")
    return 0
