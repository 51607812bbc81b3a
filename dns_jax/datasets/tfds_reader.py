"""`ArrayRecordFeatures`: a FeatureStore over a tfds array_record dataset (no TensorFlow needed)."""
from __future__ import annotations

import glob
import json
import os
import threading
from typing import List

import numpy as np

from dns_jax.datasets.store_base import FeatureStore
from dns_jax.datasets.tfds_format import INDEX_FILE, INDEX_FORMAT, SPLIT, scan_records, write_index
from dns_jax.validation import FeatureError

_INFO = "dataset_info.json"


def _candidates(path: str) -> List[str]:
    """Dataset version folders (holding dataset_info.json) at `path`, one or two levels below."""
    found = []
    for pattern in (_INFO, os.path.join("*", _INFO), os.path.join("*", "*", _INFO)):
        found = sorted(glob.glob(os.path.join(glob.escape(path), pattern)))
        if found:
            break
    return [os.path.dirname(p) for p in found if ".incomplete" not in p and "incomplete." not in p]


def is_tfds_dataset(path: str) -> bool:
    """True if `path` is a tfds dataset folder: the version folder (with dataset_info.json), the
    dataset's folder above it, or a data_dir holding one dataset."""
    return os.path.isdir(path) and bool(_candidates(os.fspath(path)))


def find_dataset_dir(path: str) -> str:
    """The one dataset version folder at or below `path` (see `is_tfds_dataset`)."""
    path = os.fspath(path)
    found = _candidates(path)
    if not found:
        raise FeatureError(f"{path!r} is not a tfds dataset folder (no {_INFO} in it or below)")
    if len(found) > 1:
        raise FeatureError(f"{path!r} holds {len(found)} tfds datasets ({', '.join(found)}); pass one of them")
    return found[0]


class ArrayRecordFeatures(FeatureStore):
    """Random access by video id to a dataset written by `convert_features`.

    `store[id]` -> float32 [T, R, D]; `length(id)` from the sidecar index (no frame decoding);
    `data_source` is the tfds random-access source (records in file order, e.g. for
    `grain.MapDataset.source`). A dataset without the sidecar (written by another tool with the same
    features) gets one by a scan of its ids and lengths; it is saved if the folder is writable.
    """

    def __init__(self, path: str, split: str = SPLIT):
        import tensorflow_datasets as tfds
        self.source = find_dataset_dir(path)
        try:
            builder = tfds.builder_from_directory(self.source)
            self.data_source = builder.as_data_source(split)
        except Exception as e:
            raise FeatureError(f"cannot open tfds dataset {self.source!r} (split {split!r}): "
                               f"{type(e).__name__}: {e}") from e
        self._lock = threading.Lock()
        doc = self._read_index(split)
        if doc is None:
            lean = builder.as_data_source(split, decoders={"features": tfds.decode.SkipDecoding()})
            ids, lengths = scan_records(lean)
            shape = tuple(builder.info.features["features"].shape[1:])
            doc = {"ids": ids, "lengths": lengths, "shape": shape}
            try:
                write_index(self.source, ids, lengths, shape)
            except OSError:
                pass  # read-only dataset: keep the index in memory
        self._ids = list(doc["ids"])
        self._lengths = dict(zip(self._ids, (int(x) for x in doc["lengths"])))
        self._position = {v: i for i, v in enumerate(self._ids)}
        self.skipped = dict(doc.get("skipped", {}))
        if len(self._ids) != len(self.data_source):
            raise FeatureError(f"{self.source}: {INDEX_FILE} lists {len(self._ids)} videos but split {split!r} "
                               f"has {len(self.data_source)} records; delete {INDEX_FILE} to rebuild it")

    def _read_index(self, split):
        path = os.path.join(self.source, INDEX_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            doc = json.load(f)
        if doc.get("format") != INDEX_FORMAT or doc.get("split") != split:
            return None
        return doc

    def ids(self):
        return self._ids

    def __contains__(self, video_id):
        return video_id in self._position

    def length(self, video_id):
        try:
            return self._lengths[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in {self.source}") from None

    def shape(self):
        return tuple(self.data_source.dataset_info.features["features"].shape[1:])

    def __getitem__(self, video_id):
        if video_id not in self._position:
            raise KeyError(f"video {video_id!r} is not in {self.source}")
        with self._lock:
            rec = self.data_source[self._position[video_id]]
        got = rec["id"].decode("utf-8") if isinstance(rec["id"], bytes) else str(rec["id"])
        if got != video_id:
            raise FeatureError(f"{self.source}: record {self._position[video_id]} holds {got!r}, not "
                               f"{video_id!r}; the {INDEX_FILE} is stale (delete it to rebuild)")
        return np.asarray(rec["features"], dtype=np.float32)
