#!/usr/bin/env python
"""Rank the videos of a DnS index for queries (the same as `dns-jax retrieve`).

    python retrieve.py --index indexes/fivr5k --query-ids 5gj8d5zsjy0 --budget 0.1 --top 50 \\
        --fine dns_fg_att_student.pth --coarse dns_cg_student.pth --selector dns_selector_cg-fg_att.pth
"""
import sys

from dns_jax.cli import run_command


def main(argv=None) -> int:
    return run_command("retrieve", sys.argv[1:] if argv is None else argv, prog="retrieve.py")


if __name__ == "__main__":
    sys.exit(main())
