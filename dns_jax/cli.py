"""The `dns-jax` command: one subcommand per user task, one flag style.

    dns-jax build --videos DIR --workdir WORK        # folder of videos -> searchable DnS system
    dns-jax query --workdir WORK VIDEO...            # rank the collection for query videos
    dns-jax add --workdir WORK VIDEO... / remove --workdir WORK ID...   # keep it up to date
    dns-jax serve --workdir WORK                     # search it from a web page / HTTP API
    dns-jax demo                                     # generated collection, build, mAP table
    dns-jax index / retrieve / evaluate / train      # feature files, official networks, benchmarks
    dns-jax extract / pca / dataset / pairs / collection / convert / native

`dns-jax COMMAND --help` explains each. The scripts train.py, index.py, retrieve.py and evaluate.py
at the repository root run the subcommand of their name. A user mistake (a missing file, a bad value,
the wrong network) prints one line and exits with status 2; an interrupted build exits with 143.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from dns_jax.commands.common import guarded, normalize_argv
from dns_jax.compile_cache import enable_compilation_cache
from dns_jax.config_files import ConfigFileError, split_overrides

# name -> (module under dns_jax.commands, one-line help). Only the chosen command's module is
# imported, so `dns-jax --help` answers at once and `dns-jax query` never loads the training stack.
COMMANDS = {
    "build": "folder of videos -> searchable DnS index (offline, no DnS weights needed)",
    "query": "rank the indexed videos of a build for query videos (files or indexed ids)",
    "add": "add video files to a built collection (extracted, indexed, appended atomically)",
    "remove": "take videos out of a built collection",
    "serve": "the retrieval service and its web page over a built collection (HTTP, 127.0.0.1 by default)",
    "demo": "the whole system on a generated collection; prints mAP per stage",
    "index": "build or extend a DnS index from feature files",
    "retrieve": "rank the videos of a DnS index for indexed or feature-file queries",
    "evaluate": "evaluate on FIVR / CC_WEB_VIDEO / EVVE / SVD with the official protocol; budget sweep",
    "train": "train a student or the selector (configs/*.py; --config.KEY=VALUE overrides)",
    "extract": "frame features of many videos into one resumable HDF5 file",
    "pca": "fit PCA whitening on region vectors (official {mean, V, d} layout)",
    "dataset": "convert a feature file into a tfds array_record dataset (grain-ready)",
    "pairs": "select and score training pairs with a teacher",
    "collection": "generate a near-duplicate video collection from real clips (no downloads)",
    "convert": "official DnS / ViSiL .pth -> orbax checkpoint directory (no PyTorch needed)",
    "native": "build and self-check the native FG-Bin CPU kernel",
}
COMMAND_PACKAGE = "dns_jax.commands"


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dns-jax", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def command_parser(name: str, prog: Optional[str] = None):
    """(argparse parser, command module) of one subcommand."""
    module = importlib.import_module(f"{COMMAND_PACKAGE}.{name}")
    p = argparse.ArgumentParser(prog=prog or f"dns-jax {name}", description=module.DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    return p, module


def run_command(name: str, argv: Sequence[str], prog: Optional[str] = None) -> int:
    """Parse `argv` for subcommand `name` and run it (the top-level scripts call this)."""
    prog = prog or f"dns-jax {name}"
    argv = normalize_argv(list(argv))
    try:
        argv, overrides = split_overrides(argv) if name == "train" else (argv, {})
    except ConfigFileError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    parser, module = command_parser(name, prog)
    args = parser.parse_args(argv)
    args.overrides = overrides
    enable_compilation_cache()
    return guarded(prog, lambda: module.run(args))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv)      # prints the help, or the error naming the bad command
        return 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
