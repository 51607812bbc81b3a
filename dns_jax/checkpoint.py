"""Orbax checkpoints of converted or trained networks.

Layout (an orbax `CheckpointManager` directory, so converted weights and training workdirs look the
same): `DIR/<step>/variables` (the Flax variables) and `DIR/<step>/meta` (JSON: network name and
constructor config). Training may store more items (optimizer state, data iterator) beside them;
`load_network` reads only these two, from the latest step. Orbax writes each step to a temporary
directory and renames it when complete, so a killed job never leaves a half-written checkpoint.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

FORMAT = "dns_jax/1"


class CheckpointError(ValueError):
    """A directory that is not a readable dns-jax checkpoint."""


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import
    return ocp


def _manager(directory: str, create: bool):
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(create=create, max_to_keep=None)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("variables", "meta"))


def is_checkpoint_dir(path: str) -> bool:
    """True if `path` is a directory holding at least one dns-jax checkpoint step."""
    if not os.path.isdir(path):
        return False
    return any(name.isdigit() and os.path.isdir(os.path.join(path, name, "meta")) for name in os.listdir(path))


def save_network(directory: str, name: str, config: Dict[str, Any], variables, step: int = 0,
                 force: bool = False) -> str:
    """Save `variables` of network `name` (constructor `config`) as step `step` of `directory`."""
    ocp = _ocp()
    variables = jax.tree_util.tree_map(np.asarray, variables)
    step_dir = os.path.join(os.path.abspath(directory), str(step))
    if os.path.exists(step_dir):
        if not force:
            raise CheckpointError(f"{step_dir} already exists; pass force=True (--force) to overwrite it")
        shutil.rmtree(step_dir)
    mngr = _manager(directory, create=True)
    meta = {"format": FORMAT, "network": name, "config": dict(config)}
    mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                           meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()
    mngr.close()
    return step_dir


def read_meta(directory: str, step: Optional[int] = None) -> Tuple[int, Dict[str, Any]]:
    """(step, meta) of the given or latest step of a checkpoint directory."""
    ocp = _ocp()
    if not is_checkpoint_dir(directory):
        raise CheckpointError(f"{directory!r} is not a dns-jax checkpoint directory "
                              "(expected numbered step folders with 'variables' and 'meta')")
    mngr = _manager(directory, create=False)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{directory!r} holds no complete checkpoint step")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    mngr.close()
    if not isinstance(meta, dict) or "network" not in meta:
        raise CheckpointError(f"{directory!r} step {step}: 'meta' does not name a network")
    return step, meta


def restore_variables(directory: str, step: int, abstract_variables):
    """Restore the 'variables' item of `step` into the structure of `abstract_variables`."""
    ocp = _ocp()
    mngr = _manager(directory, create=False)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract_variables)))["variables"]
    except Exception as e:  # orbax raises various types for structure/shape mismatches
        raise CheckpointError(f"{directory!r} step {step}: the stored variables do not fit the network "
                              f"its meta names: {e}") from e
    finally:
        mngr.close()
    return restored
