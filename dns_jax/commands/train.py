"""`dns-jax train` (train.py): train a DnS student, the selector or S2VS (self-supervised) from a recipe."""
from __future__ import annotations

import argparse
import logging

from absl import flags as absl_flags
from absl import logging as absl_logging

from dns_jax.config_files import apply_overrides, load_config
from dns_jax.training import train, validate

DESCRIPTION = """Train with the recipe of a config file (configs/*.py, each with get_config(arg)):
every field can be overridden with --config.KEY=VALUE. Rerunning the same command resumes from the
latest checkpoint in --workdir.

examples:
  dns-jax train --config configs/fg_att_student.py --workdir runs/fg_att
  dns-jax train --config configs/cg_student.py:synthetic --workdir runs/cg --config.num_train_steps=1000
  python train.py --config configs/selector.py --workdir runs/sel --config.selector.fine_pairs=fine.npz
  dns-jax train --config configs/s2vs.py:local --workdir runs/s2vs --config.data.videos=DIR"""

OVERRIDES = "overrides"    # the parsed --config.KEY=VALUE pairs (filled in by the command line)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE[:ARG]",
                   help="config file (configs/fg_att_student.py, ...:synthetic) or a shipped recipe name")
    p.add_argument("--workdir", required=True, help="directory for checkpoints, metrics and pair files")


def run(args) -> int:
    config = apply_overrides(load_config(args.config), getattr(args, OVERRIDES, {}) or {})
    config = validate(config)                   # before anything is written to the workdir
    # progress lines (resumed from step N, stop requested, validation) on stderr; orbax logs every
    # file it writes at INFO: keep its warnings only
    absl_flags.FLAGS.mark_as_parsed()           # absl's log handler without absl's flag parsing
    handler = absl_logging.get_absl_handler()
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or "orbax" not in r.pathname)
    absl_logging.use_absl_handler()
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger().setLevel(logging.INFO)
    train(config, args.workdir)
    return 0
