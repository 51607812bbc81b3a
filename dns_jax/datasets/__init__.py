"""Every source of per-video region features, and the collections the project makes itself.

    store = dns_jax.datasets.open_features('fivr5k.hdf5')   # HDF5, .npz, .npy folder or tfds dataset
    store.ids(); store.length(video_id); store[video_id]      # float32 [T, R, D]

- `stores`: the readers (official HDF5, .npz, folder of `<id>.npy`, in-memory) and `open_features`;
- `tfds_builder` / `tfds_reader` / `tfds_format`: feature files as tensorflow-datasets array_record
  datasets, read without TensorFlow (`dns-jax dataset FEATURES OUT_DIR` converts);
- `synthetic`: generated region-feature collections with near-duplicate families (tests, training
  smoke runs); `video_collection`: generated near-duplicate *video files* from real clips (the demo).
"""
from dns_jax.datasets.store_base import FeatureStore
from dns_jax.datasets.stores import (
                                     HDF5Features,
                                     MemoryFeatures,
                                     NpyFolderFeatures,
                                     NpzFeatures,
                                     global_descriptors,
                                     open_features,
                                     read_checked,
                                     write_hdf5,
)
from dns_jax.datasets.tfds_builder import ConversionReport, convert_features, make_builder
from dns_jax.datasets.tfds_format import INDEX_FILE, SPLIT
from dns_jax.datasets.tfds_reader import ArrayRecordFeatures, find_dataset_dir, is_tfds_dataset

__all__ = ["FeatureStore", "HDF5Features", "MemoryFeatures", "NpyFolderFeatures", "NpzFeatures",
           "open_features", "read_checked", "write_hdf5", "global_descriptors",
           "convert_features", "make_builder", "ConversionReport", "ArrayRecordFeatures",
           "find_dataset_dir", "is_tfds_dataset", "INDEX_FILE", "SPLIT"]
