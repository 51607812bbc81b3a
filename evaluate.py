"""Evaluate DnS on a benchmark as the official evaluation_dns.py does, and write the budget sweep.

    python evaluate.py --benchmark fivr5k --features fivr5k.hdf5 --output_dir eval/fivr5k \\
        --fine dns_fg_att_student.pth --selector dns_selector_cg-fg_att.pth --coarse dns_cg_student.pth
    # both fine students (one selector each) and a teacher as reference point:
    python evaluate.py --benchmark fivr5k --features tfds_data/fivr5k_features --output_dir eval/fivr5k \\
        --fine dns_fg_att_student.pth --selector dns_selector_cg-fg_att.pth \\
        --fine dns_fg_bin_student.pth --selector dns_selector_cg-fg_bin.pth \\
        --coarse dns_cg_student.pth --teacher visil:visil.pth

Prints one row per method (teacher, fine students, coarse student, DnS at budgets 0..100%) with the
official mAP of every task, the time per query and the storage per video, and writes to
--output_dir: sweep.csv, sweep.json, sweep_time.png, sweep_storage.png, and the per-query similarity
rows (rows/*.npz) that make a rerun resume where it stopped. Queries or database videos missing
from the features are reported and counted as the official code does (left out). See
docs/evaluation.md.
"""
import sys

from absl import app, flags, logging

from dns_jax.evaluation.run import BENCHMARKS, BUDGETS

_BENCHMARK = flags.DEFINE_string(
    "benchmark", None, f"one of {', '.join(BENCHMARKS)}, or a FIVR-format annotation file (.json/.json.gz) "
    "for a custom benchmark")
_FEATURES = flags.DEFINE_string(
    "features", None, "region features: official HDF5 file (one [T, 9, 512] dataset per video), a tfds "
    "dataset folder from `python -m dns_jax.datasets.convert`, an .npz or a folder of .npy files")
_FINE = flags.DEFINE_multi_string(
    "fine", None, "fine-grained student: official .pth, orbax checkpoint dir or training workdir (or "
    "NAME:PATH); repeat for several (e.g. FG-Att and FG-Bin), each with its --selector")
_SELECTOR = flags.DEFINE_multi_string("selector", None, "selector network of each --fine, in the same order")
_COARSE = flags.DEFINE_string("coarse", None, "coarse-grained student (.pth, checkpoint dir, or NAME:PATH)")
_TEACHER = flags.DEFINE_string(
    "teacher", None, "optional teacher as a reference point: 'visil_f' (weightless), NAME:PATH "
    "(e.g. visil:visil.pth) or a checkpoint dir")
_TEACHER_FEATURES = flags.DEFINE_string(
    "teacher_features", None, "the teacher's own features when they differ from --features (e.g. the "
    "3840-d ViSiL features); default: --features")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "where rows, sweep.csv/json and the plots go")
_BUDGETS = flags.DEFINE_list("budgets", [f"{b:g}" for b in BUDGETS],
                             "DnS budgets: fractions of the database re-ranked by the fine student")
_SVD_UNLABELED = flags.DEFINE_string("svd_unlabeled", None, "SVD distractor id list (one id per line); "
                                     "without it SVD is evaluated on its labelled part")
_QUERY_BATCH = flags.DEFINE_integer("query_batch", 16, "queries per pass over the database; their rows are "
                                    "saved when the pass ends (0: all in one pass)")
_DB_CHUNK = flags.DEFINE_integer("db_chunk", 256, "database videos read and indexed at a time")
_PLOTS = flags.DEFINE_bool("plots", True, "write sweep_time.png and sweep_storage.png")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "discard the rows of an earlier run in --output_dir")
_QUIET = flags.DEFINE_bool("quiet", False, "no progress bars")
flags.mark_flags_as_required(["benchmark", "features", "fine", "selector", "coarse", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dns_jax.compile_cache import enable_compilation_cache
    enable_compilation_cache()
    logging.set_verbosity(logging.WARNING)   # orbax logs every file it reads at INFO
    from dns_jax.evaluation.run import run_evaluation
    try:
        budgets = [float(b) for b in _BUDGETS.value]
    except ValueError:
        raise app.UsageError(f"--budgets must be numbers in [0, 1], got {_BUDGETS.value}")
    try:
        run_evaluation(_BENCHMARK.value, _FEATURES.value, _FINE.value, _COARSE.value, _SELECTOR.value,
                       _OUTPUT_DIR.value, teacher=_TEACHER.value, teacher_features=_TEACHER_FEATURES.value,
                       budgets=budgets,
                       svd_unlabeled=_SVD_UNLABELED.value, query_batch=_QUERY_BATCH.value,
                       db_chunk=_DB_CHUNK.value, plots=_PLOTS.value, overwrite=_OVERWRITE.value,
                       progress=not _QUIET.value)
    except (ValueError, OSError) as e:   # FeatureError, CheckpointError, bad files: a message, not a trace
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cli(argv) -> int:
    """Parse `argv` (flags only) and run; for tests and scripts that call evaluate.py in-process."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["evaluate.py"] + list(argv))
    return main(["evaluate.py"])


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
