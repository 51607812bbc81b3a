"""Loading of the benchmark annotations shipped in `dns_jax/evaluation/data/` (gzipped JSON).

The files are produced once by `tools/convert_eval_annotations.py` from the official pickles (and
S2VS's FIVR files); see `data/README.md`. Nothing here unpickles anything.
"""
from __future__ import annotations

import functools
import gzip
import json
from importlib import resources

FILES = {
    "fivr": "fivr.json.gz",
    "fivr_s2vs": "fivr_s2vs.json.gz",
    "cc_web_video": "cc_web_video.json.gz",
    "evve": "evve.json.gz",
    "svd": "svd_test_groundtruth.json.gz",
}


@functools.lru_cache(maxsize=None)
def load_annotation(name: str):
    """The parsed JSON document of one benchmark. Cached: callers must not modify it."""
    if name not in FILES:
        raise KeyError(f"unknown annotation file {name!r}; expected one of {sorted(FILES)}")
    ref = resources.files(__package__).joinpath("data", FILES[name])
    try:
        raw = ref.read_bytes()
    except FileNotFoundError as e:  # pragma: no cover - broken installation
        raise FileNotFoundError(
            f"dns_jax annotation file data/{FILES[name]} is missing from the installed package; "
            "it must be shipped as package data of dns_jax.evaluation") from e
    return json.loads(gzip.decompress(raw).decode("ascii"))


def read_json_file(path):
    """The JSON document in `path`, gzipped or not (told by the gzip magic bytes). Raises the
    OSError / ValueError of reading, decompressing or parsing for the caller to word."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw.decode("utf-8"))
