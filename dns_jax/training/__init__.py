"""Training of the DnS students (knowledge distillation) and the selector, and self-supervised
training of the S2VS network.

    from dns_jax.training import default_config, train_and_evaluate
    config = default_config('fg_att_student')      # or load configs/fg_att_student.py
    config.num_train_steps = 100
    train_and_evaluate(config, '/tmp/workdir')     # then dns_jax.pretrained.load('fg_att_student', '/tmp/workdir')

`train(config, workdir)` runs either, by `config.network` ('s2vs': dns_jax.training.s2vs). The
command line entry point is `train.py` at the repository root (`dns-jax train`).
"""
from dns_jax.training.config import ConfigError, default_config, override, validate_config
from dns_jax.training.pairs import PairFileError, PairSet, read_pairs, write_pairs
from dns_jax.training.resume import TrainingError
from dns_jax.training.s2vs import S2VSResult, train_s2vs, validate_s2vs_config
from dns_jax.training.s2vs.config import NETWORK as S2VS_NETWORK
from dns_jax.training.trainer import TrainResult, train_and_evaluate


def validate(config):
    """The checked, complete config of any recipe: S2VS self-supervision or distillation."""
    if "network" in config and config["network"] == S2VS_NETWORK:
        return validate_s2vs_config(config)
    return validate_config(config)


def train(config, workdir: str):
    """Run the recipe in `config` in `workdir` (resuming what is there) -> TrainResult or S2VSResult."""
    if "network" in config and config["network"] == S2VS_NETWORK:
        return train_s2vs(config, workdir)
    return train_and_evaluate(config, workdir)


__all__ = ["ConfigError", "PairFileError", "PairSet", "S2VSResult", "TrainResult", "TrainingError", "default_config",
           "override", "read_pairs", "train", "train_and_evaluate", "train_s2vs", "validate", "validate_config",
           "write_pairs"]
