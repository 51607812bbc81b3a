"""`dns-jax remove`: take videos out of a built collection."""
from __future__ import annotations

import argparse

from dns_jax.app.build import remove_videos
from dns_jax.commands.common import add_quiet

DESCRIPTION = ("Take videos (by id) out of the collection of a work directory made by `dns-jax build`: "
               "their features and index entries are removed; a video of the folder stays out on later "
               "builds until it is added again with `dns-jax add`.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, metavar="WORK", help="folder made by `dns-jax build`")
    add_quiet(p)
    p.add_argument("ids", nargs="+", metavar="ID", help="video ids (file names without the extension)")


def run(args) -> int:
    remove_videos(args.workdir, args.ids, progress=not args.quiet)
    return 0
