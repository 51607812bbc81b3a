"""Scalar metrics: TensorBoard event files (tensorboardX, when installed) and a JSONL log.

`WORKDIR/metrics.jsonl` always gets one `{"step": s, name: value, ...}` line per write, so runs
are readable without TensorBoard; `WORKDIR/tensorboard/` gets the same scalars as TensorBoard
events when `tensorboardX` is importable (`pip install tensorboardX`). Only process 0 writes.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Mapping

import numpy as np

log = logging.getLogger("dns_jax.training")


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.info("tensorboardX is not installed: metrics go to metrics.jsonl only")
            else:
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    @property
    def has_tensorboard(self) -> bool:
        return self._tb is not None

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled or not scalars:
            return
        values: Dict[str, float] = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step))

    def flush(self):
        if self._tb is not None:
            self._tb.flush()

    def close(self):
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(workdir: str):
    """The metric lines a run wrote (for tests and quick looks)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
