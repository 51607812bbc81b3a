"""`dns-jax retrieve` (retrieve.py): rank the videos of a DnS index for queries."""
from __future__ import annotations

import argparse
import sys

from dns_jax.commands.common import add_quiet, budget_value, format_results, write_output
from dns_jax.commands.networks import add_network_args, load_index_networks, split_coarse
from dns_jax.datasets.stores import open_features
from dns_jax.fileio import read_id_list
from dns_jax.index import Index, read_video
from dns_jax.index.search import STAGES, check_search_options, search_index
from dns_jax.retrieval import DnS
from dns_jax.validation import FeatureError

DESCRIPTION = """Coarse similarity to every video, selector scores, the top --budget fraction (per
query, by selector score) re-scored by the fine-grained student (mapped to s/2 + 0.5 as in the
official evaluation), ranked by the mixed score (--stage dns, the default); or the coarse or the
fine student alone. Queries are ids of indexed videos (--query-ids / --query-ids-file) or the
videos of a feature file (--query-features, optionally restricted to --query-ids).

example:
  dns-jax retrieve --index indexes/fivr5k --query-ids 5gj8d5zsjy0 --budget 0.1 --top 50 \\
      --fine dns_fg_att_student.pth --coarse dns_cg_student.pth --selector dns_selector_cg-fg_att.pth \\
      --output results.csv"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, metavar="DIR", help="index directory built by `dns-jax index`")
    q = p.add_argument_group("queries")
    q.add_argument("--query-ids", nargs="+", metavar="ID", help="query video ids")
    q.add_argument("--query-ids-file", metavar="TXT", help="file with one query id per line")
    q.add_argument("--query-features", metavar="FEATURES",
                   help="feature file or folder holding the queries (default: queries come from the index)")
    p.add_argument("--stage", choices=STAGES, default="dns", help="default: dns")
    p.add_argument("--budget", default="0.1",
                   help="re-ranked by the fine student per query: a fraction of the database (0.1, 5%%; 1.0 = "
                        "all) or a number of videos (1000); default 0.1")
    p.add_argument("--top", type=int, default=100, help="results per query (0 = all; default 100)")
    p.add_argument("--output", default="-", metavar="FILE", help="output file (.json or .csv); '-' = stdout")
    p.add_argument("--format", choices=("json", "csv"), default=None, help="default: from --output's extension, else json")
    p.add_argument("--pool", type=int, default=None, metavar="N",
                   help="an index with a faiss or shortlist coarse stage (dns-jax index --coarse faiss-ivfpq / "
                        "shortlist): candidates per query taken from it and ranked (default: max(1000, 4 x the "
                        "larger of the budget and --top)); --coarse exact searches every video instead")
    p.add_argument("--coarse-dtype", choices=("float32", "float16"), default="float32",
                   help="coarse database in memory (float16 halves the bytes; scores round to ~1e-3)")
    add_quiet(p)
    add_network_args(p)


def _queries(args, dns: DnS, index: Index, ids):
    if not args.query_features:
        return index.representations(ids)
    store = open_features(args.query_features)
    videos, kept = [], []
    for v in ids or list(store.ids()):
        try:
            videos.append(read_video(store, v, dns.fine_model.module.dims))
            kept.append(v)
        except FeatureError as e:
            print(f"skipped query {v}: {e}", file=sys.stderr)
    if not kept:
        raise FeatureError("no usable query video")
    return dns.index(videos, kept)


def run(args) -> int:
    args.budget = budget_value(args.budget)
    fmt = args.format or ("csv" if args.output.lower().endswith(".csv") else "json")
    check_search_options(args.stage, args.budget, args.top)
    _, coarse_search = split_coarse(args.coarse)
    if args.pool is not None and args.pool < 1:
        raise ValueError(f"--pool must be >= 1, got {args.pool}")
    ids = list(args.query_ids or [])
    if args.query_ids_file:
        ids += read_id_list(args.query_ids_file)
    if not ids and not args.query_features:
        raise ValueError("give --query-ids, --query-ids-file or --query-features")
    index = Index.open(args.index)
    if len(index) == 0:
        raise FeatureError(f"the index at {args.index!r} is empty")
    fine, coarse, selector = load_index_networks(args)
    index.check_networks(fine, coarse, selector)
    dns = DnS(fine, coarse, selector, binary=args.binary)
    queries = _queries(args, dns, index, ids)
    bar = None
    if not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(queries), desc="queries", unit="query", file=sys.stderr)
    res = search_index(dns, index, queries, args.stage, args.budget, topk=args.top or None,
                       coarse_dtype=args.coarse_dtype, progress=bar.update if bar else None,
                       coarse_search=coarse_search, pool=args.pool)
    if bar:
        bar.close()
    out = {qid: [{"id": index.ids[j], "score": float(s), "reranked": bool(r)}
                 for j, s, r in zip(res.ranking[qi], res.scores[qi], res.reranked[qi])]
           for qi, qid in enumerate(res.query_ids)}
    write_output(format_results(out, fmt), args.output)
    return 0
