"""Training checkpoints: an orbax CheckpointManager over the workdir.

Each step holds `variables` (Flax variables) and `meta` (network name and constructor config) --
the two items `dns_jax.pretrained.load(name, WORKDIR)` reads -- plus `train_state` (step and
optimizer state) and `data` (the input iterator's position and the seed) for resuming. The best
validated network is kept apart in WORKDIR/best (variables + meta only), so both
`pretrained.load(name, WORKDIR)` (latest) and `pretrained.load(name, WORKDIR + '/best')` work.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from dns_jax import checkpoint as dns_checkpoint

ITEMS = ("variables", "meta", "train_state", "data")
BEST = "best"


class TrainingError(RuntimeError):
    """A training run that cannot start or continue (e.g. a workdir of another network)."""


def _ocp():
    import orbax.checkpoint as ocp
    return ocp


def network_meta(network: str, model_config: Dict[str, Any], **extra) -> Dict[str, Any]:
    return {"format": dns_checkpoint.FORMAT, "network": network, "config": dict(model_config), **extra}


def _abstract(tree, sharding=None):
    def one(x):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
    return jax.tree_util.tree_map(one, tree)


class TrainCheckpointer:
    """Save / restore the whole training state in `workdir`; keeps the last `keep` steps."""

    def __init__(self, workdir: str, keep: int = 3):
        ocp = _ocp()
        self.workdir = os.path.abspath(workdir)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.workdir, options=options, item_names=ITEMS)
        self._best = None

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def check_network(self, network: str, model_config: Dict[str, Any]) -> None:
        """Refuse to resume a workdir whose checkpoints belong to another network or config."""
        step = self.latest_step()
        if step is None:
            return
        meta = self.manager.restore(step, args=_ocp().args.Composite(meta=_ocp().args.JsonRestore()))["meta"]
        if not isinstance(meta, dict) or meta.get("network") != network:
            found = meta.get("network") if isinstance(meta, dict) else None
            raise TrainingError(f"{self.workdir} holds checkpoints of a {found!r} network (step {step}); "
                                f"this config trains {network!r}. Use another --workdir.")
        stored = {k: v for k, v in meta.get("config", {}).items()}
        wanted = {k: v for k, v in model_config.items()}
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if diff:
            raise TrainingError(f"{self.workdir} holds a {network} with other options "
                                f"({', '.join(f'{k}: {stored.get(k)!r} vs {wanted.get(k)!r}' for k in diff)}); "
                                "use another --workdir or the same model config.")

    def save(self, state, meta: Dict[str, Any], data: Dict[str, Any], force: bool = True) -> None:
        ocp = _ocp()
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(
            variables=ocp.args.StandardSave(state.variables()),
            meta=ocp.args.JsonSave(meta),
            train_state=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
            data=ocp.args.JsonSave(data))
        self.manager.save(step, args=args, force=force)

    def restore(self, state, replicated=None, step: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
        """(state restored into the structure of `state`, data position dict) of `step` / latest."""
        ocp = _ocp()
        step = self.latest_step() if step is None else step
        variables = _abstract(state.variables(), replicated)
        train_state = _abstract({"step": state.step, "opt_state": state.opt_state}, replicated)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(variables),
                train_state=ocp.args.StandardRestore(train_state),
                data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises various types for a structure mismatch
            raise TrainingError(f"{self.workdir} step {step} does not fit this network's training "
                                f"state: {e}") from e
        v = dict(out["variables"])
        params = v.pop("params")
        restored = state.replace(step=out["train_state"]["step"], params=params, model_state=v,
                                 opt_state=out["train_state"]["opt_state"])
        return restored, dict(out["data"])

    def save_best(self, state, meta: Dict[str, Any]) -> None:
        """Replace WORKDIR/best with the current network."""
        ocp = _ocp()
        if self._best is None:
            options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
            self._best = ocp.CheckpointManager(os.path.join(self.workdir, BEST), options=options,
                                               item_names=("variables", "meta"))
        step = int(jax.device_get(state.step))
        if step in self._best.all_steps():
            return
        self._best.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(state.variables()),
                                                      meta=ocp.args.JsonSave(meta)), force=True)

    def best_meta(self) -> Optional[Dict[str, Any]]:
        path = os.path.join(self.workdir, BEST)
        if not dns_checkpoint.is_checkpoint_dir(path):
            return None
        return dns_checkpoint.read_meta(path)[1]

    def wait(self):
        self.manager.wait_until_finished()
        if self._best is not None:
            self._best.wait_until_finished()

    def close(self):
        self.manager.close()
        if self._best is not None:
            self._best.close()


class PreemptionGuard:
    """Turns SIGTERM (and SIGINT) into a flag the training loop checks after each step, so the run
    saves a checkpoint and stops cleanly instead of dying mid-step."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def stop(self, step: int) -> bool:
        """Whether a stop was requested (said in the log): the loop then saves `step` and exits."""
        if self.requested:
            logging.getLogger("dns_jax.training").warning("stop requested: saving step %d and exiting", step)
        return self.requested

    def restore(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
