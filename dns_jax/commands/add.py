"""`dns-jax add`: add video files to a built collection."""
from __future__ import annotations

import argparse

from dns_jax.app.build import add_videos
from dns_jax.commands.common import add_quiet

DESCRIPTION = ("Add video files to the collection of a work directory made by `dns-jax build`: their "
               "features are extracted with the collection's extractor and PCA, indexed with its trained "
               "networks and appended to the index atomically. Ids are the file names without the "
               "extension unless --id is given. Rerunning after an interruption finishes the job.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, metavar="WORK", help="folder made by `dns-jax build`")
    p.add_argument("--id", action="append", dest="ids", metavar="ID",
                   help="the id of each video, in order (default: its file name without the extension)")
    add_quiet(p)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")


def run(args) -> int:
    add_videos(args.workdir, args.videos, args.ids, progress=not args.quiet)
    return 0
