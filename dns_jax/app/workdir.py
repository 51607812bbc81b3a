"""The `dns-jax build` work directory: where each stage puts its output, and which stages are done.

    WORK/state.json              settings of the build and the stages completed (atomic JSON)
    WORK/features/raw.hdf5       backbone region features (T, 9, 1920 or 3840) per video id
    WORK/features/pca.npz        PCA whitening fitted on the collection ({mean, V, d})
    WORK/features/features.hdf5  whitened, L2-normalised (T, 9, dims) features: the DnS input
    WORK/pairs/*.json.gz         teacher / student similarities of the training pairs
    WORK/coarse_init/            the CG student's training inputs: spread targets, initial checkpoint
    WORK/models/<network>/       orbax training workdirs (dns_jax.pretrained.load(name, dir))
    WORK/index/                  the DnS index (dns_jax.index)
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from dns_jax.fileio import atomic_write_json

STATE = "state.json"


class WorkdirError(ValueError):
    """A work directory that is missing stages or was built with other settings."""


class Workdir:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def raw_features(self) -> str:
        return self.path("features", "raw.hdf5")

    @property
    def pca(self) -> str:
        return self.path("features", "pca.npz")

    @property
    def features(self) -> str:
        return self.path("features", "features.hdf5")

    @property
    def index(self) -> str:
        return self.path("index")

    def model(self, name: str) -> str:
        return self.path("models", name)

    def pairs(self, name: str) -> str:
        return self.path("pairs", f"{name}.json.gz")

    # -- state ------------------------------------------------------------------------------
    def read_state(self) -> Dict[str, Any]:
        p = self.path(STATE)
        if not os.path.exists(p):
            return {"settings": {}, "done": {}}
        with open(p) as f:
            return json.load(f)

    def write_state(self, state: Dict[str, Any]) -> None:
        os.makedirs(self.root, exist_ok=True)
        atomic_write_json(self.path(STATE), state, durable=True, indent=1, sort_keys=True)

    def done(self, stage: str) -> bool:
        return stage in self.read_state()["done"]

    def mark_done(self, stage: str, info: Any = True) -> None:
        state = self.read_state()
        state["done"][stage] = info
        self.write_state(state)

    def require(self, stage: str) -> Any:
        state = self.read_state()
        if stage not in state["done"]:
            raise WorkdirError(f"{self.root}: stage {stage!r} has not been built; run "
                               f"`dns-jax build --videos DIR --workdir {self.root}` first")
        return state["done"][stage]

    def check_settings(self, settings: Dict[str, Any]) -> None:
        """Record the build settings, or refuse to resume with different ones."""
        state = self.read_state()
        old = state.get("settings") or {}
        if old and old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
            raise WorkdirError(f"{self.root} was built with other settings {diff} (old, new); "
                               "use another --workdir or the same options")
        state["settings"] = settings
        self.write_state(state)
