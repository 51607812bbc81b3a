#!/usr/bin/env python
"""Rank the videos of a DnS index for queries: coarse similarity to every video, selector scores,
the top --budget fraction (per query, by selector score) re-scored by the fine-grained student
(mapped to s/2 + 0.5 as in the official evaluation), ranked by the mixed score.

Queries are ids of indexed videos (--query_ids / --query_ids_file) or the videos of an HDF5
feature file (--query_features, optionally restricted to --query_ids).

Example:
  python retrieve.py --index indexes/fivr5k --query_ids 5gj8d5zsjy0 --budget 0.1 --topk 50 \\
      --fine dns_fg_att_student.pth --coarse dns_cg_student.pth --selector dns_selector_cg-fg_att.pth \\
      --output results.csv
"""
import argparse
import sys

from dns_jax.compile_cache import enable_compilation_cache
from dns_jax.index.cli import add_network_args, load_networks, read_id_list, write_results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, metavar="DIR", help="index directory built by index.py")
    q = p.add_argument_group("queries")
    q.add_argument("--query_ids", nargs="+", metavar="ID", help="query video ids")
    q.add_argument("--query_ids_file", metavar="TXT", help="file with one query id per line")
    q.add_argument("--query_features", metavar="FEATURES",
                   help="feature file or folder holding the queries: HDF5, .npz, .npy folder or a tfds dataset "
                        "made by `python -m dns_jax.datasets.convert` (default: queries come from the index)")
    p.add_argument("--budget", type=float, default=0.1,
                   help="fraction of the database re-ranked by the fine student per query (0..1)")
    p.add_argument("--topk", type=int, default=100, help="results per query (0 = all)")
    p.add_argument("--output", default="-", metavar="FILE", help="output file (.json or .csv); '-' = stdout")
    p.add_argument("--format", choices=("json", "csv"), default=None, help="default: from --output's extension, else json")
    p.add_argument("--coarse_dtype", choices=("float32", "float16"), default="float32",
                   help="coarse database in memory (float16 halves the bytes; scores round to ~1e-3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_network_args(p)
    args = p.parse_args(argv)
    enable_compilation_cache()
    fmt = args.format or ("csv" if args.output.lower().endswith(".csv") else "json")
    if not 0.0 <= args.budget <= 1.0:
        p.error("--budget must be between 0 and 1")
    ids = list(args.query_ids or [])
    if args.query_ids_file:
        ids += read_id_list(args.query_ids_file)
    if not ids and not args.query_features:
        p.error("give --query_ids, --query_ids_file or --query_features")

    from dns_jax.index import Index, IndexFormatError, NetworkMismatchError, read_video
    from dns_jax.training.features import open_features
    from dns_jax.retrieval import DnS
    from dns_jax.validation import FeatureError
    try:
        index = Index.open(args.index)
        if len(index) == 0:
            raise FeatureError(f"the index at {args.index!r} is empty")
        fine, coarse, selector = load_networks(args)
        index.check_networks(fine, coarse, selector)
        dns = DnS(fine, coarse, selector, binary=args.binary)
        if args.query_features:
            store = open_features(args.query_features)
            qids = ids or list(store.ids())
            videos, kept = [], []
            for v in qids:
                try:
                    videos.append(read_video(store, v, fine.module.dims))
                    kept.append(v)
                except FeatureError as e:
                    print(f"skipped query {v}: {e}", file=sys.stderr)
            if not kept:
                raise FeatureError("no usable query video")
            queries = dns.index(videos, kept)
        else:
            queries = index.representations(ids)
        bar = None
        if not args.quiet:
            from tqdm import tqdm
            bar = tqdm(total=len(queries), desc="queries", unit="query", file=sys.stderr)
        res = dns.search(queries, index, budget=args.budget, topk=args.topk or None,
                         coarse_dtype=args.coarse_dtype, progress=bar.update if bar else None)
        if bar:
            bar.close()
    except (KeyError, FeatureError, IndexFormatError, NetworkMismatchError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    out = {}
    for qi, qid in enumerate(res.query_ids):
        out[qid] = [{"id": index.ids[j], "score": float(s), "reranked": bool(r)}
                    for j, s, r in zip(res.ranking[qi], res.scores[qi], res.reranked[qi])]
    write_results(out, args.output, fmt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
