"""`dns-jax serve`: the retrieval service and its page (dns_jax/service)."""
from __future__ import annotations

import argparse

from dns_jax.service import cli as service_cli

DESCRIPTION = service_cli.__doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    service_cli.add_arguments(p)


def run(args) -> int:
    return service_cli.serve(args)
