"""Training config of the fg bin student (official DnS defaults; see dns_jax/training/config.py).

    python train.py --config configs/fg_bin_student.py --workdir DIR [--config.num_train_steps=N ...]
"""
from dns_jax.training.config import default_config


def get_config():
    return default_config("fg_bin_student")
