#!/usr/bin/env python
"""Build or extend a DnS index from HDF5 feature files.

Stores, per video, the coarse-grained vector, the fine-grained representation (FG-Att features, or
FG-Bin codes bit-packed to 64 bytes per region), the selector self-similarity and the id, in one
directory per collection. Re-running with the same directory appends new videos and resumes an
interrupted run (committed shards are kept, their ids skipped). Bad videos are reported and skipped.

Example:
  python index.py --index indexes/fivr5k --features fivr_features.hdf5 \\
      --fine dns_fg_att_student.pth --coarse dns_cg_student.pth --selector dns_selector_cg-fg_att.pth
"""
import argparse
import sys

from dns_jax.compile_cache import enable_compilation_cache
from dns_jax.index.cli import add_network_args, load_networks, read_id_list


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, metavar="DIR", help="index directory (created if missing)")
    p.add_argument("--features", required=True, nargs="+", metavar="FEATURES",
                   help="feature files or folders, one [T, 9, 512] array per video id: official HDF5, .npz, "
                        "a folder of <id>.npy, or a tfds dataset made by `python -m dns_jax.datasets.convert`")
    p.add_argument("--ids_file", metavar="TXT", help="index only these ids (one per line); default: every dataset")
    p.add_argument("--shard_size", type=int, default=512, help="videos per committed shard")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_network_args(p)
    args = p.parse_args(argv)
    enable_compilation_cache()

    from dns_jax.index import IndexFormatError, NetworkMismatchError, build_index
    ids = read_id_list(args.ids_file) if args.ids_file else None
    fine, coarse, selector = load_networks(args)
    try:
        report = build_index(args.index, args.features, fine, coarse, selector, ids=ids,
                             shard_size=args.shard_size, binary=args.binary, progress=not args.quiet,
                             log=lambda m: print(m, file=sys.stderr))
    except (IndexFormatError, NetworkMismatchError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.index}: {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
