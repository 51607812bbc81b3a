"""`dns-jax native`: build (or find) the native CPU kernels and check them against numpy."""
from __future__ import annotations

import argparse

from dns_jax.native.__main__ import main as native_check

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args) -> int:
    return native_check()
