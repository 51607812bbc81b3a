"""`dns-jax index` (index.py): build or extend a DnS index from feature files."""
from __future__ import annotations

import argparse
import sys

from dns_jax.commands.common import add_quiet, add_ray_arguments, check_ray_arguments
from dns_jax.commands.networks import add_network_args, load_index_networks, split_coarse
from dns_jax.distributed import check_address, index_ray
from dns_jax.fileio import read_id_list
from dns_jax.index import build_index
from dns_jax.index.build import update_coarse_search

DESCRIPTION = """Store, per video, the coarse-grained vector, the fine-grained representation
(FG-Att features, or FG-Bin codes bit-packed to 64 bytes per region), the selector self-similarity
and the id, in one directory per collection. Re-running with the same directory appends new videos
and resumes an interrupted run (committed shards are kept, their ids skipped). Bad videos are
reported and skipped.

With --ray the same index is built on a Ray cluster (pip install 'dns-jax[ray]'): Ray tasks read
the features, one actor per GPU (or CPU slot) runs the networks and stages a shard per batch, and
one commit step lists them in the index. --ray alone starts a local cluster; --ray HOST:PORT (or
ray://HOST:PORT, auto) joins a running one, whose workers must see the feature files and the index
directory at the same paths. A rerun resumes where a killed run (worker or driver) stopped.

--coarse faiss-ivfpq (given beside the coarse student: --coarse dns_cg_student.pth --coarse
faiss-ivfpq; pip install 'dns-jax[faiss]') adds a compressed coarse stage: a faiss OPQ + IVF-PQ
index of the CG vectors (64 bytes per video instead of 4 KB), trained on the collection and kept
up to date by every later run (a rerun without the flag keeps it; --coarse exact removes it).
Queries then take a pool of candidates from it, score them exactly from the stored CG vectors, and
run the selector and the fine student on the pool only (docs/scaling.md has its recall). A
collection of fewer than 64 videos is searched exactly until it has grown.

--coarse shortlist (a CG student of region vectors over temporal segments, the build's default)
stores nothing more: queries rank every video by its region vectors averaged over the segments (9
vectors, 81 products a pair instead of 729 with 3 segments), score the first max(1000, 4 x the
budget or --top) exactly, and run the selector and the fine student on them (docs/retrieval.md).

example:
  dns-jax index --index indexes/fivr5k --features fivr_features.hdf5 \\
      --fine dns_fg_att_student.pth --coarse dns_cg_student.pth --selector dns_selector_cg-fg_att.pth
  dns-jax index ... --coarse dns_cg_student.pth --coarse faiss-ivfpq     # compressed coarse stage
  dns-jax index ... --coarse cg_checkpoint --coarse shortlist             # two-stage region vectors
  dns-jax index ... --ray                 # a local Ray cluster on this machine
  dns-jax index ... --ray head:6379 --workers 8"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, metavar="DIR", help="index directory (created if missing)")
    p.add_argument("--features", required=True, nargs="+", metavar="FEATURES",
                   help="feature files or folders, one [T, 9, 512] array per video id: official HDF5, .npz, "
                        "a folder of <id>.npy, or a tfds dataset made by `dns-jax dataset`")
    p.add_argument("--ids-file", metavar="TXT", help="index only these ids (one per line); default: every video")
    p.add_argument("--shard-size", type=int, default=None,
                   help="videos per committed shard (default 512; with --ray, per staged shard: 128)")
    add_ray_arguments(p, "build")
    add_quiet(p)
    add_network_args(p)


def run(args) -> int:
    _, coarse_search = split_coarse(args.coarse)
    ids = read_id_list(args.ids_file) if args.ids_file else None
    if args.shard_size is not None and args.shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {args.shard_size}")
    check_ray_arguments(args)
    if args.ray is not None:
        check_address(args.ray)             # before loading the networks: a missing extra is one line
    fine, coarse, selector = load_index_networks(args)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.ray is not None:
        report = index_ray(args.index, args.features, fine, coarse, selector, ids=ids,
                           shard_size=args.shard_size or 128, binary=args.binary, address=args.ray or None,
                           workers=args.workers, num_cpus=args.cpus, progress=not args.quiet, log=log)
        update_coarse_search(args.index, coarse_search, log=log)
    else:
        report = build_index(args.index, args.features, fine, coarse, selector, ids=ids,
                             shard_size=args.shard_size or 512, binary=args.binary, progress=not args.quiet, log=log,
                             coarse_search=coarse_search)
    print(f"{args.index}: {report}", file=sys.stderr)
    return 0
