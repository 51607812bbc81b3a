#!/usr/bin/env python
"""Evaluate DnS on a benchmark with the official protocol (the same as `dns-jax evaluate`).

    python evaluate.py --benchmark fivr5k --features fivr5k.hdf5 --output-dir eval/fivr5k \\
        --fine dns_fg_att_student.pth --selector dns_selector_cg-fg_att.pth --coarse dns_cg_student.pth
"""
import sys

from dns_jax.cli import run_command


def main(argv=None) -> int:
    return run_command("evaluate", sys.argv[1:] if argv is None else argv, prog="evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
