"""The network flags of the commands that work on an index (`index`, `retrieve`)."""
from __future__ import annotations

import argparse
from typing import Optional, Tuple

from dns_jax import pretrained
from dns_jax.index.compressed import COARSE_SEARCH
from dns_jax.models import registry

FINE_CHOICES = registry.FINE + registry.names("visil")


def add_network_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("networks (official .pth files, orbax checkpoint directories, NAME:PATH)")
    g.add_argument("--fine", required=True, metavar="SPEC",
                   help="fine-grained student, e.g. dns_fg_att_student.pth or dns_fg_bin_student.pth")
    g.add_argument("--fine-network", choices=FINE_CHOICES, default=None,
                   help="which fine network --fine holds (default: from its file name or checkpoint)")
    g.add_argument("--coarse", required=True, action="append", metavar="SPEC",
                   help="coarse-grained student (dns_cg_student.pth); repeat it with 'exact' (default), "
                        "'shortlist' (region-vector students) or 'faiss-ivfpq' for the coarse search stage: "
                        "--coarse dns_cg_student.pth --coarse faiss-ivfpq (see dns-jax index --help)")
    g.add_argument("--selector", required=True, metavar="SPEC",
                   help="selector network (dns_selector_cg-fg_att.pth / dns_selector_cg-fg_bin.pth)")
    g.add_argument("--binary", choices=("packed", "float"), default="packed",
                   help="FG-Bin representation: bit-packed codes (64 bytes per region) or float +-1")


def split_coarse(values, need_network: bool = True) -> Tuple[Optional[str], Optional[str]]:
    """(coarse student spec, coarse search kind) from the values of a repeated --coarse: 'exact',
    'shortlist' and 'faiss-ivfpq' name the search stage, anything else the network's weights (at most one)."""
    if isinstance(values, str) or values is None:
        values = [values] if values else []
    kinds = [v for v in values if v in COARSE_SEARCH]
    specs = [v for v in values if v not in COARSE_SEARCH]
    if len(kinds) > 1 and len(set(kinds)) > 1:
        raise ValueError(f"--coarse: give one search stage ({' or '.join(COARSE_SEARCH)}), got {', '.join(kinds)}")
    if len(specs) > 1:
        raise ValueError(f"--coarse: give one coarse student, got {', '.join(specs)}")
    if need_network and not specs:
        raise ValueError(f"--coarse: give the coarse student's weights too (e.g. --coarse dns_cg_student.pth "
                         f"--coarse {kinds[0] if kinds else 'faiss-ivfpq'})")
    return (specs[0] if specs else None), (kinds[0] if kinds else None)


def load_index_networks(args):
    """(fine, coarse, selector) named by `add_network_args` flags."""
    fine_spec = f"{args.fine_network}:{args.fine}" if args.fine_network else args.fine
    fine = pretrained.load_spec(fine_spec, FINE_CHOICES, role="--fine")
    coarse = pretrained.load_spec(split_coarse(args.coarse)[0], ("cg_student",), role="--coarse")
    selector = pretrained.load_spec(args.selector, ("selector",), role="--selector")
    return fine, coarse, selector


