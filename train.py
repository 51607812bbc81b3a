#!/usr/bin/env python
"""Train a DnS student or the selector from a recipe (the same as `dns-jax train`).

    python train.py --config configs/fg_att_student.py --workdir DIR
    python train.py --config configs/cg_student.py:synthetic --workdir DIR --config.num_train_steps=1000

Rerunning the same command resumes from the latest checkpoint in DIR. `--help` lists the flags.
"""
import sys

from dns_jax.cli import run_command


def main(argv=None) -> int:
    return run_command("train", sys.argv[1:] if argv is None else argv, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
