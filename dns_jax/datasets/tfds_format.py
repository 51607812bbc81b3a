"""The on-disk layout shared by the tfds feature dataset writer and reader: split name, version
and the sidecar id index (`dns_jax_index.json`: record position and length of every id)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from dns_jax.fileio import atomic_write_json

SPLIT = "videos"                  # tfds reserves "all"
INDEX_FILE = "dns_jax_index.json"
INDEX_FORMAT = "dns_jax.datasets/index/1"
VERSION = "1.0.0"


def write_index(dataset_dir: str, ids: List[str], lengths: List[int], shape, extra: Optional[dict] = None):
    """Write the sidecar index (record order) atomically."""
    doc = {"format": INDEX_FORMAT, "split": SPLIT, "ids": list(ids), "lengths": [int(x) for x in lengths],
           "shape": [int(x) for x in shape]}
    doc.update(extra or {})
    atomic_write_json(os.path.join(dataset_dir, INDEX_FILE), doc)


def scan_records(source) -> Tuple[List[str], List[int]]:
    """(ids, lengths) in record order, reading ids and lengths only (features are not decoded)."""
    ids, lengths = [], []
    for i in range(len(source)):
        rec = source[i]
        v = rec["id"]
        ids.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
        lengths.append(int(rec["length"]))
    return ids, lengths
