"""Shared pieces of the index.py / retrieve.py command lines."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Dict, List


FINE_NETWORKS = ("fg_att_student", "fg_bin_student", "fg_student", "visil", "visil_symmetric", "visil_f")


def add_network_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("networks (official .pth files, orbax checkpoint directories)")
    g.add_argument("--fine", required=True, metavar="PATH",
                   help="fine-grained student weights, e.g. dns_fg_att_student.pth or dns_fg_bin_student.pth")
    g.add_argument("--fine_network", choices=FINE_NETWORKS, default=None,
                   help="which fine network --fine holds (default: guessed from its file name)")
    g.add_argument("--coarse", required=True, metavar="PATH", help="coarse-grained student weights (dns_cg_student.pth)")
    g.add_argument("--selector", required=True, metavar="PATH",
                   help="selector network weights (dns_selector_cg-fg_att.pth / dns_selector_cg-fg_bin.pth)")
    g.add_argument("--binary", choices=("packed", "float"), default="packed",
                   help="FG-Bin representation: bit-packed codes (64 bytes per region) or float +-1")


def load_networks(args):
    from dns_jax import pretrained
    name = args.fine_network or pretrained.guess_network_name(args.fine)
    if name not in FINE_NETWORKS:
        raise SystemExit(f"error: cannot tell which fine network {args.fine!r} holds; pass --fine_network "
                         f"({', '.join(FINE_NETWORKS)})")
    fine = pretrained.load(name, args.fine)
    coarse = pretrained.load("cg_student", args.coarse)
    selector = pretrained.load("selector", args.selector)
    return fine, coarse, selector


def read_id_list(path: str) -> List[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def write_results(results: Dict[str, List[dict]], output: str, fmt: str):
    if fmt == "json":
        text = json.dumps(results, indent=1)
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["query_id", "rank", "video_id", "score", "reranked"])
        for q, rows in results.items():
            for r, row in enumerate(rows, 1):
                w.writerow([q, r, row["id"], f"{row['score']:.8g}", int(row["reranked"])])
        text = buf.getvalue()
    if output in (None, "-"):
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    tmp = f"{output}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, output)
