"""Training of the DnS students (knowledge distillation) and the selector.

    from dns_jax.training import default_config, train_and_evaluate
    config = default_config('fg_att_student')      # or load configs/fg_att_student.py
    config.num_train_steps = 100
    train_and_evaluate(config, '/tmp/workdir')     # then dns_jax.pretrained.load('fg_att_student', '/tmp/workdir')

The command line entry point is `train.py` at the repository root.
"""
from dns_jax.training.config import ConfigError, default_config, override, validate_config
from dns_jax.training.pairs import PairFileError, PairSet, read_pairs, write_pairs
from dns_jax.training.resume import TrainingError
from dns_jax.training.trainer import TrainResult, train_and_evaluate

__all__ = ["ConfigError", "PairFileError", "PairSet", "TrainResult", "TrainingError", "default_config",
           "override", "read_pairs", "train_and_evaluate", "validate_config", "write_pairs"]
