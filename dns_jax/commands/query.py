"""`dns-jax query`: rank the videos of a built work directory for query videos."""
from __future__ import annotations

import argparse

from dns_jax.app.query import run_query
from dns_jax.commands.common import add_quiet, budget_value
from dns_jax.index.search import STAGES

DESCRIPTION = (
    "Score every indexed video for each query and print the top results with their best-matching "
    "time segments. Queries are video files (features are extracted as at build time) or ids of "
    "indexed videos (file names without the extension).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, metavar="WORK", help="folder made by `dns-jax build`")
    p.add_argument("--stage", choices=STAGES, default="dns",
                   help="coarse student only, fine student for all, or DnS (default)")
    p.add_argument("--budget", type=budget_value, default=0.05,
                   help="DnS: re-scored by the fine student per query: a fraction of the collection (0.05, 5%%; "
                        "1.0 = all) or a number of videos (1000); default 0.05")
    p.add_argument("--output", metavar="JSON", help="write {query_id: {video_id: score}} here")
    p.add_argument("--top", type=int, default=10, help="results printed per query (default 10)")
    add_quiet(p)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files or indexed video ids")


def run(args) -> int:
    log = (lambda *a, **k: None) if args.quiet else print
    results = run_query(args.workdir, args.videos, args.stage, args.budget, args.output, args.top, log=log)
    return 0 if results else 1
