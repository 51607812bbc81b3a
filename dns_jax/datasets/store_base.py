"""The interface every per-video feature store implements (`ids`, `in`, `length`, `[id]`)."""
from __future__ import annotations

import warnings
from typing import List

import numpy as np

from dns_jax.validation import FeatureError, FeatureWarning


def _as_video(arr: np.ndarray, video_id: str, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind in "biu":   # read as float32 like the official loader, but say so
        warnings.warn(f"{source}: video {video_id!r} holds {arr.dtype} values, not float region features; "
                      "it is read as float32 (were its features extracted and saved correctly?)", FeatureWarning,
                      stacklevel=3)
    if arr.ndim == 2:  # one region per frame, as the official loader accepts
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise FeatureError(f"{source}: video {video_id!r} has shape {arr.shape}; expected [T, R, D] with T > 0")
    return arr.astype(np.float32, copy=False)


class FeatureStore:
    """Interface: `ids()`, `id in store`, `length(id)`, `store[id] -> float32 [T, R, D]`."""

    source = "features"

    def ids(self) -> List[str]:
        raise NotImplementedError

    def __contains__(self, video_id) -> bool:
        raise NotImplementedError

    def length(self, video_id: str) -> int:
        raise NotImplementedError

    def __getitem__(self, video_id: str) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids())

    def shape(self) -> tuple:
        """(R, D) of the collection (read from its first video)."""
        first = self[self.ids()[0]]
        return first.shape[1:]
