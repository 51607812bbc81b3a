"""The `dns-jax build` work directory: where each stage puts its output, which stages are done, the
settings they were built with, and the video files the collection holds.

    WORK/state.json              settings, stages completed, source files (atomic JSON)
    WORK/.lock                   held by the one process working on WORK (released when it exits)
    WORK/features/raw.hdf5       backbone region features (T, 9, 1920 or 3840) per video id
    WORK/features/pca.npz        PCA whitening fitted on the collection ({mean, V, d})
    WORK/features/features.hdf5  whitened, L2-normalised (T, 9, dims) features: the DnS input
    WORK/pairs/*.json.gz         teacher / student similarities of the training pairs
    WORK/coarse_init/            the CG student's training inputs: spread targets, initial checkpoint
    WORK/models/<network>/       trained networks (parameters only once a stage is done;
                                 dns_jax.pretrained.load(name, dir))
    WORK/index/                  the DnS index (dns_jax.index)

Paths inside WORK are stored relative to it (and the videos folder relative to it as well), so a
work directory can be moved or shared together with its videos.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from dns_jax.fileio import LockedError, ProcessLock, atomic_write_json

STATE = "state.json"
PATH_KEYS = ("path", "pca", "videos")      # entries of a stage record (or the settings) that are paths


class WorkdirError(ValueError):
    """A work directory that is missing stages, is in use, or was built with other settings."""


class Workdir:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._lock: Optional[ProcessLock] = None

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

    # -- paths relative to the work directory ---------------------------------------------------
    def relative(self, path: Optional[str]) -> Optional[str]:
        """`path` as stored: relative to WORK (also when it lies beside it), absolute only across drives."""
        if path is None:
            return None
        try:
            return os.path.relpath(os.path.abspath(path), self.root)
        except ValueError:          # another drive
            return os.path.abspath(path)

    def resolve(self, path: Optional[str]) -> Optional[str]:
        """A stored path as an absolute one: relative to WORK where it exists (WORK moved together
        with the files beside it), else relative to where WORK was when the path was stored (WORK
        moved alone: files outside it stayed where they were)."""
        if path is None:
            return None
        if os.path.isabs(path):
            return os.path.normpath(path)
        here = os.path.normpath(os.path.join(self.root, path))
        origin = self._origin()
        if not os.path.exists(here) and origin and origin != self.root:
            there = os.path.normpath(os.path.join(origin, path))
            if os.path.exists(there):
                return there
        return here

    def _rebase(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """The state with every stored relative path made relative to WORK's new place (WORK was
        moved since the state was written)."""
        state = json.loads(json.dumps(state))
        move = lambda p: self.relative(self.resolve(p)) if isinstance(p, str) and not os.path.isabs(p) else p
        for record in state.get("done", {}).values():
            if isinstance(record, dict):
                for k in PATH_KEYS:
                    if k in record:
                        record[k] = move(record[k])
                for item in record.get("failed", []) or []:
                    if isinstance(item, list) and len(item) > 1:
                        item[1] = move(item[1])
        for k in ("videos", "pca", "fine", "coarse", "selector"):
            if k in state.get("options", {}):
                state["options"][k] = move(state["options"][k])
        backbone = state.get("options", {}).get("backbone")
        if isinstance(backbone, dict):
            backbone["path"] = move(backbone["path"])
        for rec in state.get("sources", {}).values():
            rec["path"] = move(rec.get("path"))
        state["added"] = {v: move(p) for v, p in state.get("added", {}).items()}
        return state

    def _origin(self) -> Optional[str]:
        p = self.path(STATE)
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f).get("root")

    def _store_paths(self, info: Any) -> Any:
        if isinstance(info, dict):
            return {k: (self.relative(v) if k in PATH_KEYS and isinstance(v, str) else v) for k, v in info.items()}
        return info

    def _resolve_paths(self, info: Any) -> Any:
        if isinstance(info, dict):
            return {k: (self.resolve(v) if k in PATH_KEYS and isinstance(v, str) else v) for k, v in info.items()}
        return info

    # -- one process at a time -------------------------------------------------------------------
    def lock(self) -> "Workdir":
        """Take the work directory for this process (WorkdirError if another one has it)."""
        os.makedirs(self.root, exist_ok=True)
        if self._lock is None:
            try:
                self._lock = ProcessLock(self.path(".lock"), f"the work directory {self.root}")
            except LockedError as e:
                raise WorkdirError(str(e)) from None
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- state ------------------------------------------------------------------------------
    def read_state(self) -> Dict[str, Any]:
        p = self.path(STATE)
        if not os.path.exists(p):
            return {"settings": {}, "done": {}, "sources": {}}
        with open(p) as f:
            state = json.load(f)
        state.setdefault("sources", {})
        return state

    def write_state(self, state: Dict[str, Any]) -> None:
        os.makedirs(self.root, exist_ok=True)
        if state.get("root") and state["root"] != self.root:
            state = self._rebase(state)
        state = dict(state, root=self.root)     # where the relative paths were written from
        atomic_write_json(self.path(STATE), state, durable=True, indent=1, sort_keys=True)

    def exists(self) -> bool:
        return os.path.exists(self.path(STATE))

    def done(self, stage: str) -> bool:
        return stage in self.read_state()["done"]

    def mark_done(self, stage: str, info: Any = True) -> None:
        state = self.read_state()
        state["done"][stage] = self._store_paths(info)
        self.write_state(state)

    def info(self, stage: str) -> Optional[Any]:
        """The record of a finished stage (paths resolved), or None."""
        info = self.read_state()["done"].get(stage)
        return None if info is None else self._resolve_paths(info)

    def require(self, stage: str) -> Any:
        state = self.read_state()
        if stage not in state["done"]:
            raise WorkdirError(f"{self.root}: stage {stage!r} has not been built; run "
                               f"`dns-jax build --videos DIR --workdir {self.root}` first")
        return self._resolve_paths(state["done"][stage])

    def forget(self, stages: List[str]) -> None:
        """Mark stages as not done (their outputs are the caller's to remove)."""
        state = self.read_state()
        for stage in stages:
            state["done"].pop(stage, None)
        self.write_state(state)

    # -- settings -----------------------------------------------------------------------------
    def settings(self) -> Dict[str, Any]:
        """The recorded settings (given files in them are absolute: they are compared, not opened
        from here)."""
        return dict(self.read_state().get("settings") or {})

    def record_settings(self, settings: Dict[str, Any]) -> None:
        state = self.read_state()
        state["settings"] = dict(settings)
        self.write_state(state)

    def changed_settings(self, settings: Dict[str, Any]) -> Dict[str, tuple]:
        """{key: (recorded, given)} of the settings that differ from the recorded ones (none when
        nothing was recorded yet)."""
        old = self.settings()
        if not old:
            return {}
        new = json.loads(json.dumps(settings))
        return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
