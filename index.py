#!/usr/bin/env python
"""Build or extend a DnS index from feature files (the same as `dns-jax index`).

    python index.py --index indexes/fivr5k --features fivr_features.hdf5 \\
        --fine dns_fg_att_student.pth --coarse dns_cg_student.pth --selector dns_selector_cg-fg_att.pth
"""
import sys

from dns_jax.cli import run_command


def main(argv=None) -> int:
    return run_command("index", sys.argv[1:] if argv is None else argv, prog="index.py")


if __name__ == "__main__":
    sys.exit(main())
