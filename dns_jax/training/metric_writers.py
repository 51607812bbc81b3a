"""Training metrics through clu's `MetricWriter` interface (the standard JAX metric writer).

`create_writer(workdir, is_main)` returns a clu `AsyncMultiWriter` (writes happen in a background
thread, in order; `flush()` / `close()` wait for them) over:

  * clu's `LoggingWriter`: every scalar in the INFO log;
  * `JsonlWriter`: one `{"step": s, name: value, ...}` line per `write_scalars` in
    `WORKDIR/metrics.jsonl`, so runs are readable without TensorBoard;
  * TensorBoard event files in `WORKDIR/tensorboard/`: clu's own `SummaryWriter` when TensorFlow is
    importable, otherwise `TensorboardXWriter` (the same interface on `tensorboardX`, when that
    is installed; without either, metrics go to the log and metrics.jsonl only).

Processes other than 0 get the logging writer only (clu's multi-host convention).

clu's `metric_writers` package imports TensorFlow unconditionally for its `SummaryWriter`; when
TensorFlow is absent, `clu_metric_writers()` registers a placeholder for that one module (its
`SummaryWriter` raises ImportError when constructed) so the TensorFlow-free writers import.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import types
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

log = logging.getLogger("dns_jax.training")

_SUMMARY_MODULE = "clu.metric_writers.summary_writer"


def has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def clu_metric_writers():
    """`clu.metric_writers`, importable with or without TensorFlow."""
    if not has_tensorflow() and _SUMMARY_MODULE not in sys.modules:
        placeholder = types.ModuleType(_SUMMARY_MODULE)
        placeholder.__doc__ = "Placeholder registered by dns_jax.training.metric_writers: TensorFlow is not installed."

        class SummaryWriter:  # noqa: D401 - stands in for clu's TF SummaryWriter
            def __init__(self, *args, **kwargs):
                raise ImportError("clu's SummaryWriter needs TensorFlow, which is not installed; "
                                  "use dns_jax.training.metric_writers.TensorboardXWriter")

        placeholder.SummaryWriter = SummaryWriter
        sys.modules[_SUMMARY_MODULE] = placeholder
    from clu import metric_writers
    return metric_writers


_interface = clu_metric_writers().interface


def _scalars(scalars: Mapping[str, Any]) -> Dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in scalars.items()}


class _ScalarsOnly(_interface.MetricWriter):
    """Base for writers of scalars (and what else a subclass overrides); the other kinds are
    ignored with one log line each."""

    def __init__(self):
        self._skipped = set()

    def _skip(self, kind: str) -> None:
        if kind not in self._skipped:
            self._skipped.add(kind)
            log.info("%s does not write %s; skipped", type(self).__name__, kind)

    def write_summaries(self, step: int, values, metadata: Optional[Mapping[str, Any]] = None):
        self._skip("raw summaries")

    def write_images(self, step: int, images):
        self._skip("images")

    def write_videos(self, step: int, videos):
        self._skip("videos")

    def write_audios(self, step: int, audios, *, sample_rate: int):
        self._skip("audio")

    def write_texts(self, step: int, texts: Mapping[str, str]):
        self._skip("texts")

    def write_histograms(self, step: int, arrays, num_buckets=None):
        self._skip("histograms")

    def write_hparams(self, hparams: Mapping[str, Any]):
        self._skip("hyperparameters")


class JsonlWriter(_ScalarsOnly):
    """Scalars as JSON lines `{"step": s, name: value, ...}` appended to `path`."""

    def __init__(self, path: str):
        super().__init__()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._file = open(path, "a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        if scalars:
            self._file.write(json.dumps({"step": int(step), **_scalars(scalars)}) + "\n")

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorboardXWriter(_ScalarsOnly):
    """clu's MetricWriter on tensorboardX: TensorBoard event files in `logdir` without
    TensorFlow (scalars, texts, histograms, hyperparameters)."""

    def __init__(self, logdir: str):
        super().__init__()
        from tensorboardX import SummaryWriter
        self._writer = SummaryWriter(logdir)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        for k, v in _scalars(scalars).items():
            self._writer.add_scalar(k, v, int(step))

    def write_texts(self, step: int, texts: Mapping[str, str]):
        for k, v in texts.items():
            self._writer.add_text(k, v, int(step))

    def write_histograms(self, step: int, arrays, num_buckets=None):
        for k, v in arrays.items():
            bins = (num_buckets or {}).get(k)
            self._writer.add_histogram(k, np.asarray(v), int(step), max_bins=bins)

    def write_hparams(self, hparams: Mapping[str, Any]):
        self._writer.add_hparams(dict(hparams), {})

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


def tensorboard_writer(logdir: str):
    """clu's TF SummaryWriter, else TensorboardXWriter, else None (neither is installed)."""
    mw = clu_metric_writers()
    if has_tensorflow():
        return mw.SummaryWriter(logdir)
    if importlib.util.find_spec("tensorboardX") is not None:
        return TensorboardXWriter(logdir)
    log.info("neither TensorFlow nor tensorboardX is installed: metrics go to the log and "
             "metrics.jsonl only (pip install tensorboardX for TensorBoard event files)")
    return None


def create_writer(workdir: str, is_main: bool = True, tensorboard: bool = True,
                  asynchronous: bool = True):
    """The run's clu MetricWriter (see the module docstring); call `close()` at the end."""
    mw = clu_metric_writers()
    writers = [mw.LoggingWriter()]
    if is_main:
        writers.append(JsonlWriter(os.path.join(workdir, "metrics.jsonl")))
        tb = tensorboard_writer(os.path.join(workdir, "tensorboard")) if tensorboard else None
        if tb is not None:
            writers.append(tb)
    return mw.AsyncMultiWriter(writers) if asynchronous else mw.MultiWriter(writers)


def read_jsonl(workdir: str):
    """The metric lines a run wrote (for tests and quick looks)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean_scalars(metrics: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """Per-step metric dicts (host values) -> each metric's mean over the steps, as floats."""
    return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def publish_scalars(writer, step: int, scalars: Mapping[str, float], pbar=None) -> None:
    """Write `scalars` at `step` and show the loss on the progress bar (if any)."""
    writer.write_scalars(step, dict(scalars))
    if pbar is not None:
        pbar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
