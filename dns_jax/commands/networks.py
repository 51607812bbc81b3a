"""The network flags of the commands that work on an index (`index`, `retrieve`)."""
from __future__ import annotations

import argparse

from dns_jax import pretrained
from dns_jax.models import registry

FINE_CHOICES = registry.FINE + registry.names("visil")


def add_network_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("networks (official .pth files, orbax checkpoint directories, NAME:PATH)")
    g.add_argument("--fine", required=True, metavar="SPEC",
                   help="fine-grained student, e.g. dns_fg_att_student.pth or dns_fg_bin_student.pth")
    g.add_argument("--fine-network", choices=FINE_CHOICES, default=None,
                   help="which fine network --fine holds (default: from its file name or checkpoint)")
    g.add_argument("--coarse", required=True, metavar="SPEC", help="coarse-grained student (dns_cg_student.pth)")
    g.add_argument("--selector", required=True, metavar="SPEC",
                   help="selector network (dns_selector_cg-fg_att.pth / dns_selector_cg-fg_bin.pth)")
    g.add_argument("--binary", choices=("packed", "float"), default="packed",
                   help="FG-Bin representation: bit-packed codes (64 bytes per region) or float +-1")


def load_index_networks(args):
    """(fine, coarse, selector) named by `add_network_args` flags."""
    fine_spec = f"{args.fine_network}:{args.fine}" if args.fine_network else args.fine
    fine = pretrained.load_spec(fine_spec, FINE_CHOICES, role="--fine")
    coarse = pretrained.load_spec(args.coarse, ("cg_student",), role="--coarse")
    selector = pretrained.load_spec(args.selector, ("selector",), role="--selector")
    return fine, coarse, selector


