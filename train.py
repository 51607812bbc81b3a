"""Train a DnS student or the selector.

    python train.py --config configs/fg_att_student.py --workdir DIR
    python train.py --config configs/cg_student.py --workdir DIR --config.num_train_steps=1000 \
        --config.dataset=features --config.features=dns100k.hdf5 --config.pairs=pairs.pk

Rerunning the same command resumes from the latest checkpoint in DIR.
"""
import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from dns_jax.training import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and pair files")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dns_jax.compile_cache import enable_compilation_cache
    enable_compilation_cache()
    logging.set_verbosity(logging.INFO)
    # orbax logs every file it writes at INFO; keep its warnings only
    logging.get_absl_handler().addFilter(
        lambda r: r.levelno >= std_logging.WARNING or "orbax" not in r.pathname)
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
