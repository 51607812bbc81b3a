"""`dns-jax query`: rank the videos of a built work directory for query videos."""
from __future__ import annotations

import argparse

from dns_jax.app.query import answer_queries
from dns_jax.commands.common import add_quiet, budget_value
from dns_jax.index.search import STAGES

DESCRIPTION = (
    "Score every indexed video for each query and print the top results with their best-matching "
    "time segments. Queries are video files (features are extracted as at build time) or ids of "
    "indexed videos (file names without the extension; a name met again gets an id NAME#2). A query "
    "that fails is reported on stderr and the others are still answered and written; the exit status "
    "is then 1. A bad option is refused before anything is read or written (exit status 2).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, metavar="WORK", help="folder made by `dns-jax build`")
    p.add_argument("--stage", choices=STAGES, default="dns",
                   help="coarse student only, fine student for all, or DnS (default)")
    p.add_argument("--budget", default="0.05",
                   help="DnS: re-scored by the fine student per query: a fraction of the collection (0.05, 5%%; "
                        "1.0 = all) or a number of videos (1000); default 0.05")
    p.add_argument("--output", metavar="JSON", help="write {query_id: {video_id: score}} here")
    p.add_argument("--top", type=int, default=10, help="results printed per query (0: all; default 10)")
    p.add_argument("--segments", action="store_true",
                   help="find the copied segments of every top result (dns_jax.localization) and write them "
                        "to --output: {query: {scores: {...}, segments: {video: [{query_start, query_end, "
                        "target_start, target_end, score}]}}}")
    p.add_argument("--format", choices=("json", "vsc"), default="json", dest="output_format",
                   help="--output as JSON (default) or as the VSC22 matching CSV (query_id, ref_id, query_start, "
                        "query_end, ref_start, ref_end, score) of the top results' segments")
    add_quiet(p)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or indexed video ids")


def run(args) -> int:
    """Exit status 0 when every query was answered, 1 when some failed (each is reported on
    stderr and the others' scores are still written), 2 for a bad option (nothing is touched)."""
    args.budget = budget_value(args.budget)
    log = (lambda *a, **k: None) if args.quiet else print
    outcome = answer_queries(args.workdir, args.videos, args.stage, args.budget, args.output, args.top, log=log,
                             segments=args.segments, output_format=args.output_format)
    return 1 if outcome.failed else 0
