"""Training config of the selector (official DnS defaults; see dns_jax/training/config.py).

    python train.py --config configs/selector.py --workdir DIR [--config.num_train_steps=N ...]
"""
from dns_jax.training.config import default_config


def get_config():
    return default_config("selector")
