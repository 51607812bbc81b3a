"""Connecting to Ray and moving networks to its workers.

`cluster(address)` connects to a running Ray cluster (`host:port`, `ray://host:port`, `auto`) or,
without an address, starts a local one on this machine (`num_cpus` CPUs), and shuts down what it
started on exit. An address that does not answer is a `ClusterError` (an OSError, one line) after a
short TCP probe, instead of Ray's long retry loop. Ray is an optional dependency
(`pip install 'dns-jax[ray]'`); without it every entry point raises ClusterError saying so.

Networks travel as `PortableNetwork` (name, config, numpy weights, wrapper class) and are rebuilt in
the worker (`.load()`), so a worker's network has the same fingerprint as the driver's and its
shards are adopted into the same index. A local cluster's workers get this checkout of dns_jax on
their PYTHONPATH; on a remote cluster dns_jax must be installed on every node.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from typing import Any, Dict, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

import dns_jax
from dns_jax import pretrained
from dns_jax.features.extractor import Extractor

PROBE_SECONDS = 5.0


class ClusterError(OSError):
    """Ray is missing, or the cluster cannot be reached or used."""


def require_ray():
    """The `ray` module (ClusterError naming the extra to install if it is missing)."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data: the batch pipelines)
    except ImportError as e:
        raise ClusterError(f"this needs Ray with Ray Data ({e}); install it with: pip install 'dns-jax[ray]'") from None
    return ray


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """ClusterError unless something listens at a `host:port` / `ray://host:port` address."""
    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {e.strerror or e}") from None


def check_address(address: Optional[str]) -> None:
    """ClusterError now, before any work, if Ray is missing or `address` does not answer (None or
    '': a local cluster, started later)."""
    require_ray()
    if address:
        probe(address)


def _package_root() -> str:
    """The checkout or site-packages directory that holds dns_jax."""
    return os.path.dirname(os.path.dirname(os.path.abspath(dns_jax.__file__)))


@contextlib.contextmanager
def cluster(address: Optional[str] = None, num_cpus: Optional[int] = None, quiet: bool = True) -> Iterator[Any]:
    """Ray, connected: to `address`, or to a new local cluster of `num_cpus` CPUs (default: all);
    if Ray is already initialised in this process it is used as it is. Yields the `ray` module."""
    ray = require_ray()
    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        yield ray
        return
    env = {"PYTHONPATH": os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)}
    kwargs: Dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                  runtime_env={"env_vars": env})
    if address:
        probe(address)
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot start or join the Ray cluster{f' at {address!r}' if address else ''}: "
                           f"{' '.join(str(e).split())}") from None
    try:
        data = ray.data.DataContext.get_current()
        data.enable_progress_bars = False
        yield ray
    finally:
        ray.shutdown()


def cluster_resources(ray) -> Dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def worker_resources(ray, workers: Optional[int], worker_cpus: Optional[float] = None,
                     reader_cpus: float = 0.25, batches: Optional[int] = None) -> Dict[str, Any]:
    """How many network actors to run and what each reserves: one per GPU where the cluster has
    GPUs, else one per CPU slot, leaving `reader_cpus` x 2 for the reading / decoding tasks; never
    more than `batches` (an actor with no batch to run would only start and load its network)."""
    res = cluster_resources(ray)
    gpus, cpus = int(res.get("GPU", 0)), res.get("CPU", 1.0)
    n = workers or gpus or max(1, int(cpus - 2 * reader_cpus))
    n = min(n, max(1, batches)) if batches is not None else n
    if gpus:
        return {"workers": n, "num_gpus": 1, "num_cpus": worker_cpus or 1.0, "reader_cpus": reader_cpus}
    each = worker_cpus or max(0.25, min(1.0, (cpus - 2 * reader_cpus) / n))
    if n * each + reader_cpus > cpus + 1e-9:
        raise ClusterError(f"{n} workers of {each:g} CPU each and a reader of {reader_cpus:g} do not fit the "
                           f"cluster's {cpus:g} CPUs")
    return {"workers": n, "num_gpus": 0, "num_cpus": each, "reader_cpus": reader_cpus}


def exit_once(marker: str) -> None:
    """Test hook of the pipelines (`_faults`): end this process abruptly the first time it is
    called with this marker file (which remembers it), as a killed worker or driver would."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)


# -- networks for the workers ------------------------------------------------------------------

@dataclasses.dataclass
class PortableNetwork:
    """A loaded network as plain data (picklable): rebuilt with `load()` in a worker process."""

    wrapper: type
    name: str
    config: Dict[str, Any]
    variables: Any

    @classmethod
    def of(cls, model) -> "PortableNetwork":
        return cls(type(model), model.name, dict(model.config), jax.tree_util.tree_map(np.asarray, model.variables))

    def load(self):
        module = pretrained.build_module(self.name, self.config)
        return self.wrapper(self.name, dict(self.config), module, jax.tree_util.tree_map(jnp.asarray, self.variables))


@dataclasses.dataclass
class PortableExtractor:
    """A features.Extractor as plain data, or any picklable callable (kept as it is)."""

    module: Any = None
    variables: Any = None
    batch_size: int = 16
    name: str = ""
    callable: Any = None

    @classmethod
    def of(cls, extractor) -> "PortableExtractor":
        if isinstance(extractor, Extractor):
            return cls(extractor.model, jax.tree_util.tree_map(np.asarray, extractor.variables),
                       extractor.batch_size, extractor.name)
        return cls(callable=extractor)

    def load(self):
        if self.callable is not None:
            return self.callable
        return Extractor(self.module, self.variables, batch_size=self.batch_size, name=self.name)
