"""Read-only collections of per-video region features `[T, R, D]` keyed by video id.

`open_features(path)` picks the reader: HDF5 (the official feature files: one dataset per video),
`.npz` (one array per video), a tfds array_record dataset folder (`dns_jax.datasets`) or a folder of
`<id>.npy` files. `MemoryFeatures` wraps a dict (the
synthetic collection). Every store gives `length(id)` without reading the frames, which the input
pipeline uses to plan padded batches before loading anything.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

from dns_jax.datasets.store_base import FeatureStore, _as_video
from dns_jax.datasets.tfds_reader import ArrayRecordFeatures, is_tfds_dataset
from dns_jax.validation import FeatureError, FeatureWarning, check_video


class MemoryFeatures(FeatureStore):
    def __init__(self, videos: Mapping[str, np.ndarray], source: str = "in-memory features"):
        self.source = source
        self._videos = {str(k): _as_video(v, k, source) for k, v in videos.items()}

    def ids(self):
        return list(self._videos)

    def __contains__(self, video_id):
        return video_id in self._videos

    def length(self, video_id):
        return self._videos[video_id].shape[0]

    def __getitem__(self, video_id):
        return self._videos[video_id]


class HDF5Features(FeatureStore):
    """An HDF5 file with one dataset `[T, R, D]` (or `[T, D]`) per video id (official layout)."""

    def __init__(self, path: str):
        import h5py
        self.source = os.fspath(path)
        try:
            self._file = h5py.File(self.source, "r")
        except OSError as e:
            raise FeatureError(f"cannot open feature file {self.source!r}: {e}") from e
        self._lock = threading.Lock()  # h5py serialises anyway; the lock keeps reads well-formed
        self._ids = hdf5_dataset_paths(self._file)
        self._idset = set(self._ids)

    def ids(self):
        return self._ids

    def __contains__(self, video_id):
        return video_id in self._idset

    def length(self, video_id):
        return int(self._file[video_id].shape[0])

    def __getitem__(self, video_id):
        with self._lock:
            arr = self._file[video_id][()]
        return _as_video(arr, video_id, self.source)


def hdf5_dataset_paths(f) -> List[str]:
    """Every dataset of an open h5py File, by its path: nested groups give ids with '/' (CC_WEB_VIDEO)."""
    import h5py
    ids: List[str] = []
    f.visititems(lambda name, obj: ids.append(name) if isinstance(obj, h5py.Dataset) else None)
    return ids


class NpzFeatures(FeatureStore):
    """An .npz file with one array per video id, read lazily (one bad array costs only its video)."""

    def __init__(self, path: str):
        self.source = os.fspath(path)
        try:
            self._file = np.load(self.source, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FeatureError(f"cannot open feature file {self.source!r}: {e}") from e
        self._ids = list(self._file.files)
        self._idset = set(self._ids)
        self._lock = threading.Lock()

    def ids(self):
        return self._ids

    def __contains__(self, video_id):
        return video_id in self._idset

    def length(self, video_id):
        return self[video_id].shape[0]

    def __getitem__(self, video_id):
        with self._lock:
            arr = self._file[video_id]
        return _as_video(arr, video_id, self.source)


class NpyFolderFeatures(FeatureStore):
    """A folder of `<video_id>.npy` files (memory-mapped for `length`)."""

    def __init__(self, path: str):
        self.source = os.fspath(path)
        self._ids = sorted(f[:-4] for f in os.listdir(self.source) if f.endswith(".npy"))
        self._idset = set(self._ids)

    def _path(self, video_id):
        return os.path.join(self.source, video_id + ".npy")

    def ids(self):
        return self._ids

    def __contains__(self, video_id):
        return video_id in self._idset

    def length(self, video_id):
        return int(np.load(self._path(video_id), mmap_mode="r").shape[0])

    def __getitem__(self, video_id):
        return _as_video(np.load(self._path(video_id)), video_id, self.source)


def open_features(path: str) -> FeatureStore:
    """A FeatureStore for an HDF5 file, an .npz file, a tfds dataset folder or a folder of .npy files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FeatureError(f"no such feature file or folder: {path!r}")
    if os.path.isdir(path):
        if is_tfds_dataset(path):
            return ArrayRecordFeatures(path)
        return NpyFolderFeatures(path)
    if path.lower().endswith(".npz"):
        return NpzFeatures(path)
    return HDF5Features(path)


def read_checked(store: FeatureStore, video_id: str, dims: Optional[int] = None) -> np.ndarray:
    """One video's features `(T, R, D)` float32, checked; FeatureError naming the id and the reason
    (missing, unreadable, wrong shape, empty, NaN/inf) otherwise. Integer arrays (see `_as_video`)
    and all-zero videos are read with a warning naming the video: valid input, almost surely not
    region features."""
    if video_id not in store:
        raise FeatureError(f"{video_id}: not in {store.source}")
    try:
        arr = store[video_id]
    except FeatureError as e:
        raise FeatureError(f"{video_id}: {e}") from None
    except Exception as e:  # a corrupt chunk, an unsupported dtype, a group instead of a dataset
        raise FeatureError(f"{video_id}: unreadable ({type(e).__name__}: {e})") from None
    arr = check_video(arr, dims, video_id)
    if not arr.any():
        warnings.warn(f"{store.source}: video {video_id!r} has features that are all zero (shape {arr.shape}); "
                      "it matches nothing (was its extraction interrupted?)", FeatureWarning, stacklevel=2)
    return arr


def write_hdf5(videos: Mapping[str, np.ndarray], path: str) -> str:
    """Write `{id: [T, R, D]}` as an official-layout HDF5 feature file."""
    import h5py
    with h5py.File(path, "w") as f:
        for k, v in videos.items():
            f.create_dataset(str(k), data=np.asarray(v, np.float32))
    return path


def global_descriptors(store: FeatureStore, ids: Iterable[str]) -> np.ndarray:
    """[N, D] L2-normalised mean of every video's region features (a cheap pre-ranking key)."""
    out = []
    for v in ids:
        x = store[v].mean(axis=(0, 1))
        out.append(x / max(float(np.linalg.norm(x)), 1e-12))
    return np.stack(out).astype(np.float32)


def read_all(store: FeatureStore, ids: Iterable[str]) -> Dict[str, np.ndarray]:
    return {v: store[v] for v in ids}
