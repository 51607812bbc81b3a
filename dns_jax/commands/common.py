"""What every subcommand of `dns-jax` shares: one flag style, the network flags, one-line errors.

Flags are spelled with dashes (`--batch-size`, `--query-ids`); the underscore spellings of earlier
releases (`--shard_size`) and a few renamed flags (`--topk` -> `--top`, `--no-progress` ->
`--quiet`, `--noplots` -> `--no-plots`) are still accepted (`normalize_argv`).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Callable, Dict, List, Optional, Sequence

from dns_jax.fileio import JobInterrupted, atomic_write_text

RENAMED_FLAGS = {"--topk": "--top", "--no-progress": "--quiet", "--noplots": "--no-plots",
                 "--out": "--output", "--ids": "--ids-file"}

# Mistakes a user can make: every error of the project for bad input (FeatureError, PthError,
# ConversionError, CheckpointError, NetworkSpecError, ConfigFileError, ...) is a ValueError; missing
# or unreadable files are OSErrors; unknown ids KeyErrors. One line on stderr, exit code 2.
USER_ERRORS = (ValueError, KeyError, OSError)


def normalize_argv(argv: Sequence[str]) -> List[str]:
    """Old flag spellings -> the current ones (`--a_b` -> `--a-b`, renamed flags); `--config.KEY`
    overrides and values are left alone."""
    out = []
    for token in argv:
        if token.startswith("--") and not token.startswith("--config."):
            name, eq, value = token.partition("=")
            name = RENAMED_FLAGS.get(name, name)
            name = RENAMED_FLAGS.get(name.replace("_", "-"), name.replace("_", "-"))
            token = name + eq + value
        out.append(token)
    return out


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")


def add_ray_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """--ray [ADDRESS], --workers, --cpus (check them with `check_ray_arguments`)."""
    r = p.add_argument_group("distributed (Ray)")
    r.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"{what} on Ray: a local cluster without ADDRESS, else the cluster at HOST:PORT, "
                        "ray://HOST:PORT or auto")
    r.add_argument("--workers", type=int, default=None,
                   help="network actors (default: one per GPU of the cluster, else one per CPU slot)")
    r.add_argument("--cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")


def check_ray_arguments(args) -> None:
    """ValueError (one line) for --workers/--cpus without --ray, or below 1."""
    if args.ray is None and (args.workers is not None or args.cpus is not None):
        raise ValueError("--workers and --cpus need --ray")
    for flag in ("workers", "cpus"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")


def budget_value(text):
    """`--budget` (read as text, converted in the command's run so that a bad value is the usual
    one-line error): a whole number is a number of videos per query (`1000`), a decimal a fraction of
    the collection (`0.05`, `1.0` = every video), `N%` a percentage."""
    t = str(text).strip()
    try:
        value = int(t) if t.isdigit() else float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = None
    if value is None or (isinstance(value, float) and not 0.0 <= value <= 1.0):
        raise ValueError(f"budget must be a fraction in [0, 1] (0.05, 5%) or a whole number of "
                         f"videos per query (1000), got {text!r}")
    return value


def error_line(e: BaseException) -> str:
    """The message of an error on one line (KeyError's repr quotes are dropped)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return " ".join(str(msg).split()) or type(e).__name__


def guarded(prog: str, fn: Callable[[], int]) -> int:
    """Run `fn`; a user mistake prints `prog: error: ...` on one line and returns 2; a resumable job
    stopped by a signal (JobInterrupted) prints `prog: interrupted: ...` and returns 143."""
    try:
        return fn()
    except USER_ERRORS as e:
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except JobInterrupted as e:
        print(f"{prog}: interrupted: {e}", file=sys.stderr)
        return 143


# -- results ----------------------------------------------------------------------------------

def format_results(results: Dict[str, List[dict]], fmt: str) -> str:
    """{query: [{'id', 'score', 'reranked'}, ...]} as JSON or CSV (query_id, rank, video_id, score,
    reranked)."""
    if fmt == "json":
        return json.dumps(results, indent=1) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["query_id", "rank", "video_id", "score", "reranked"])
    for q, rows in results.items():
        for r, row in enumerate(rows, 1):
            w.writerow([q, r, row["id"], f"{row['score']:.8g}", int(row["reranked"])])
    return buf.getvalue()


def write_output(text: str, output: Optional[str]) -> None:
    """To stdout for None or '-', else atomically to the file."""
    if output in (None, "-"):
        sys.stdout.write(text)
        return
    atomic_write_text(output, text)
