"""Feature source (official HDF5, .npz, folder of .npy) -> tfds array_record dataset.

Each record: `id` (text), `length` (int32, T) and `features` (float32 `[T, R, D]`, R and D fixed
by the first usable video). A video that cannot be stored (unreadable, NaN/inf, empty, another
(R, D)) is reported and skipped; the others are written. After tfds has written (and shuffled)
the records, the sidecar `dns_jax_index.json` maps every id to its record and length.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from dns_jax.datasets.stores import open_features
from dns_jax.datasets.tfds_format import SPLIT, VERSION, scan_records, write_index
from dns_jax.validation import FeatureError, check_video

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass
class ConversionReport:
    """What `convert_features` did: where, how many videos written, which skipped and why."""

    dataset_dir: str
    written: int = 0
    frames: int = 0
    shape: Optional[Tuple[int, int]] = None
    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self):
        lines = [f"{self.dataset_dir}: {self.written} videos ({self.frames} frames, regions x dims "
                 f"{self.shape}) written, {len(self.skipped)} skipped"]
        lines += [f"  skipped {vid!r}: {why}" for vid, why in self.skipped.items()]
        return "\n".join(lines)


def _open_source(path: str):
    """(store, every video id); HDF5 ids are dataset paths, so CC_WEB_VIDEO's nested ids work."""
    store = open_features(path)
    return store, list(store.ids())


def _read(store, video_id: str, shape: Optional[Tuple[int, int]]) -> np.ndarray:
    try:
        raw = store[video_id]
    except FeatureError:
        raise
    except Exception as e:  # corrupt chunk, unsupported dtype, a group instead of a dataset ...
        raise FeatureError(f"{video_id}: unreadable ({type(e).__name__}: {e})") from None
    arr = check_video(raw, None if shape is None else shape[1], video_id)
    if shape is not None and arr.shape[1:] != shape:
        raise FeatureError(f"{video_id}: shape {arr.shape}; this dataset stores [T, {shape[0]}, {shape[1]}]")
    return arr


def make_builder(name: str, examples: Callable[[], Iterator[Tuple[str, dict]]], shape: Tuple[int, int],
                 data_dir: str, description: str = ""):
    """A tfds `GeneratorBasedBuilder` named `name` (not registered) writing array_record files
    under `data_dir/name/1.0.0` from `examples()`: (key, {'id', 'length', 'features'}) pairs."""
    import tensorflow_datasets as tfds
    if not _NAME.match(name):
        raise ValueError(f"dataset name {name!r}: use lower-case letters, digits and '_' (a letter first)")
    r, d = (int(x) for x in shape)

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description=description or "DnS region features, one record per video",
                features=tfds.features.FeaturesDict({
                    "id": tfds.features.Text(),
                    "length": np.int32,
                    "features": tfds.features.Tensor(shape=(None, r, d), dtype=np.float32),
                }))

        def _split_generators(self, dl_manager):
            return {SPLIT: self._generate_examples()}

        def _generate_examples(self):
            yield from examples()

    cls = types.new_class(name, (_Builder,), {"skip_registration": True},
                          lambda ns: ns.update({"name": name}))
    return cls(data_dir=data_dir, file_format="array_record")


def convert_features(source_path: str, data_dir: str, name: str = "dns_features", progress: bool = True,
                     log: Callable[[str], None] = print) -> ConversionReport:
    """Convert a feature source readable by `open_features` into a tfds array_record dataset at
    `data_dir/name/1.0.0` (with the sidecar index). Bad videos are skipped and listed in the report
    (and in the index's `skipped`). Raises FeatureError if no video is usable."""
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    store, ids = _open_source(os.fspath(source_path))
    report = ConversionReport(dataset_dir=os.path.join(data_dir, name, VERSION))
    first = None
    for vid in ids:  # (R, D) of the collection: the first usable video
        try:
            first = _read(store, vid, None)
            break
        except FeatureError as e:
            report.skipped[vid] = str(e)
    if first is None:
        raise FeatureError(f"{source_path}: no usable video among {len(ids)}"
                           + (f"; e.g. {next(iter(report.skipped.values()))}" if report.skipped else ""))
    report.shape = tuple(int(x) for x in first.shape[1:])

    def examples():
        for vid in tqdm(ids, desc=f"converting {os.path.basename(os.fspath(source_path))}", unit="video",
                        disable=not progress):
            if vid in report.skipped:
                continue
            try:
                arr = _read(store, vid, report.shape)
            except FeatureError as e:
                report.skipped[vid] = str(e)
                log(f"skipped {vid!r}: {e}")
                continue
            report.written += 1
            report.frames += arr.shape[0]
            yield vid, {"id": vid, "length": arr.shape[0], "features": arr}

    builder = make_builder(name, examples, report.shape, data_dir,
                           description=f"DnS region features converted from {os.path.basename(os.fspath(source_path))}")
    if os.path.exists(os.path.join(report.dataset_dir, "dataset_info.json")):
        raise FileExistsError(f"{report.dataset_dir} already holds a dataset; remove it or choose another --name")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    source = tfds.builder_from_directory(report.dataset_dir).as_data_source(
        SPLIT, decoders={"features": tfds.decode.SkipDecoding()})
    rec_ids, lengths = scan_records(source)
    write_index(report.dataset_dir, rec_ids, lengths, report.shape,
                {"source": os.path.abspath(os.fspath(source_path)), "skipped": report.skipped})
    return report
