"""Feature collections as tensorflow-datasets (array_record), readable without TensorFlow.

    python -m dns_jax.datasets.convert fivr5k_features.hdf5 tfds_data --name fivr5k_features
    store = dns_jax.training.features.open_features('tfds_data')   # an ArrayRecordFeatures
    store['8ja0i5wV-io']                                           # float32 [T, R, D]

`convert_features` writes one record per video (its id, its frame count and its `[T, R, D]`
float32 features) with a `GeneratorBasedBuilder` (file_format='array_record'), plus a small
sidecar index (`dns_jax_index.json`: record position and length of every id, because tfds
shuffles the records when it writes them). `ArrayRecordFeatures` reads it back through
`tfds.builder_from_directory(...).as_data_source(...)` (random access; also a grain source).
"""
from dns_jax.datasets.builder import (INDEX_FILE, SPLIT, ConversionReport, convert_features,
                                      make_builder)
from dns_jax.datasets.reader import ArrayRecordFeatures, find_dataset_dir, is_tfds_dataset

__all__ = ["convert_features", "make_builder", "ConversionReport", "ArrayRecordFeatures",
           "find_dataset_dir", "is_tfds_dataset", "INDEX_FILE", "SPLIT"]
