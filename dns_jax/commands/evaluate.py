"""`dns-jax evaluate` (evaluate.py): DnS on a benchmark as the official evaluation_dns.py does."""
from __future__ import annotations

import argparse

from dns_jax.commands.common import add_quiet
from dns_jax.evaluation.run import BENCHMARKS, BUDGETS, run_evaluation

DESCRIPTION = """Print one row per method (teacher, fine students, coarse student, DnS at budgets
0..100%) with the official mAP of every task, the time per query and the storage per video (FIVR
and VCDB add S2VS's micro-AP columns in a second table), and
write to --output-dir: sweep.csv, sweep.json, sweep_time.png, sweep_storage.png, and the per-query
similarity rows (rows/*.npz) that make a rerun resume where it stopped. See docs/evaluation.md.

examples:
  dns-jax evaluate --benchmark fivr5k --features fivr5k.hdf5 --output-dir eval/fivr5k \\
      --fine dns_fg_att_student.pth --selector dns_selector_cg-fg_att.pth --coarse dns_cg_student.pth
  # both fine students (one selector each) and a teacher as reference point:
  dns-jax evaluate --benchmark fivr5k --features tfds_data/fivr5k_features --output-dir eval/fivr5k \\
      --fine dns_fg_att_student.pth --selector dns_selector_cg-fg_att.pth \\
      --fine dns_fg_bin_student.pth --selector dns_selector_cg-fg_bin.pth \\
      --coarse dns_cg_student.pth --teacher visil:visil.pth"""


def _budgets(text: str):
    try:
        values = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"budgets must be numbers in [0, 1] separated by commas, got {text!r}")
    if not values or not all(0.0 <= b <= 1.0 for b in values):
        raise argparse.ArgumentTypeError(f"budgets must be numbers in [0, 1], got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True,
                   help=f"one of {', '.join(BENCHMARKS)}, or a FIVR-format annotation file (.json/.json.gz)")
    p.add_argument("--features", required=True,
                   help="region features: official HDF5 (one [T, 9, 512] dataset per video), a tfds dataset "
                        "folder from `dns-jax dataset`, an .npz or a folder of .npy files")
    p.add_argument("--fine", required=True, action="append", metavar="SPEC",
                   help="fine-grained student (.pth, checkpoint dir or NAME:PATH); repeat for several, "
                        "each with its --selector")
    p.add_argument("--selector", required=True, action="append", metavar="SPEC",
                   help="selector of each --fine, in the same order")
    p.add_argument("--coarse", required=True, metavar="SPEC", help="coarse-grained student")
    p.add_argument("--teacher", help="optional reference point: 'visil_f' (no weights), NAME:PATH or a checkpoint dir")
    p.add_argument("--teacher-features", help="the teacher's own features when they differ from --features")
    p.add_argument("--output-dir", required=True, help="where rows, sweep.csv/json and the plots go")
    p.add_argument("--budgets", type=_budgets, default=list(BUDGETS),
                   help="DnS budgets, comma-separated fractions (default: " + ",".join(f"{b:g}" for b in BUDGETS) + ")")
    p.add_argument("--svd-unlabeled", help="SVD distractor id list (one id per line); without it SVD is "
                   "evaluated on its labelled part")
    p.add_argument("--vcdb-annotation", metavar="JSON",
                   help="VCDB annotation (needed by --benchmark vcdb / vcdb_dist): S2VS's vcdb.pickle converted "
                        "with tools/convert_eval_annotations.py --vcdb; see docs/evaluation.md")
    p.add_argument("--query-batch", type=int, default=16,
                   help="queries per pass over the database; their rows are saved when the pass ends (0: all)")
    p.add_argument("--db-chunk", type=int, default=256, help="database videos read and indexed at a time")
    p.add_argument("--no-plots", action="store_true", help="skip sweep_time.png and sweep_storage.png")
    p.add_argument("--overwrite", action="store_true", help="discard the rows of an earlier run in --output-dir")
    add_quiet(p)


def run(args) -> int:
    run_evaluation(args.benchmark, args.features, args.fine, args.coarse, args.selector, args.output_dir,
                   teacher=args.teacher, teacher_features=args.teacher_features, budgets=args.budgets,
                   svd_unlabeled=args.svd_unlabeled, query_batch=args.query_batch, db_chunk=args.db_chunk,
                   plots=not args.no_plots, overwrite=args.overwrite, progress=not args.quiet,
                   vcdb_annotation=args.vcdb_annotation)
    return 0
