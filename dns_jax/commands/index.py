"""`dns-jax index` (index.py): build or extend a DnS index from feature files."""
from __future__ import annotations

import argparse
import sys

from dns_jax.commands.common import add_quiet
from dns_jax.commands.networks import add_network_args, load_index_networks
from dns_jax.fileio import read_id_list
from dns_jax.index import build_index

DESCRIPTION = """Store, per video, the coarse-grained vector, the fine-grained representation
(FG-Att features, or FG-Bin codes bit-packed to 64 bytes per region), the selector self-similarity
and the id, in one directory per collection. Re-running with the same directory appends new videos
and resumes an interrupted run (committed shards are kept, their ids skipped). Bad videos are
reported and skipped.

example:
  dns-jax index --index indexes/fivr5k --features fivr_features.hdf5 \\
      --fine dns_fg_att_student.pth --coarse dns_cg_student.pth --selector dns_selector_cg-fg_att.pth"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, metavar="DIR", help="index directory (created if missing)")
    p.add_argument("--features", required=True, nargs="+", metavar="FEATURES",
                   help="feature files or folders, one [T, 9, 512] array per video id: official HDF5, .npz, "
                        "a folder of <id>.npy, or a tfds dataset made by `dns-jax dataset`")
    p.add_argument("--ids-file", metavar="TXT", help="index only these ids (one per line); default: every video")
    p.add_argument("--shard-size", type=int, default=512, help="videos per committed shard (default 512)")
    add_quiet(p)
    add_network_args(p)


def run(args) -> int:
    ids = read_id_list(args.ids_file) if args.ids_file else None
    fine, coarse, selector = load_index_networks(args)
    report = build_index(args.index, args.features, fine, coarse, selector, ids=ids, shard_size=args.shard_size,
                         binary=args.binary, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    print(f"{args.index}: {report}", file=sys.stderr)
    return 0
