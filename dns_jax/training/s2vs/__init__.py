"""Self-supervised training of the S2VS network (configs/s2vs.py; docs/s2vs.md).

    from dns_jax.training.s2vs import default_s2vs_config, train_s2vs
    config = default_s2vs_config('local')           # or load configs/s2vs.py
    config.data.videos = '/videos'
    train_s2vs(config, '/tmp/s2vs')                 # then dns_jax.pretrained.load('s2vs', '/tmp/s2vs')

`dns-jax train --config configs/s2vs.py --workdir DIR` runs the same (dns_jax.training.train).
"""
from dns_jax.training.s2vs.bank import BankError, ViewBank, build_view_bank
from dns_jax.training.s2vs.config import NETWORK, default_s2vs_config, validate_s2vs_config
from dns_jax.training.s2vs.data import S2VSDataError
from dns_jax.training.s2vs.frames import FrameStore, FrameStoreError, build_frame_store
from dns_jax.training.s2vs.losses import ssl_loss
from dns_jax.training.s2vs.step import lr_schedule, make_optimizer, make_s2vs_train_step, source_targets
from dns_jax.training.s2vs.trainer import S2VSResult, train_s2vs

__all__ = ["BankError", "FrameStore", "FrameStoreError", "NETWORK", "S2VSDataError", "S2VSResult", "ViewBank",
           "build_frame_store", "build_view_bank", "default_s2vs_config", "lr_schedule", "make_optimizer",
           "make_s2vs_train_step", "source_targets", "ssl_loss", "train_s2vs", "validate_s2vs_config"]
