"""dns_jax.datasets: HDF5 -> tfds array_record -> data source / grain / open_features, bad videos."""
import json
import os
import sys

import h5py
import numpy as np
import pytest

from dns_jax.datasets import INDEX_FILE, ArrayRecordFeatures, convert_features
from dns_jax import cli
from dns_jax.datasets.stores import open_features

R, D = 3, 8


@pytest.fixture(scope="module")
def videos():
    rng = np.random.default_rng(7)
    lengths = {"a": 5, "b_odd": 7, "one": 1, "grp/nested.flv": 3, "c.mp4": 13, "e": 2}
    return {k: rng.standard_normal((t, R, D)).astype(np.float32) for k, t in lengths.items()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, videos):
    d = tmp_path_factory.mktemp("tfds")
    h5 = str(d / "features.hdf5")
    with h5py.File(h5, "w") as f:
        for k, v in videos.items():
            f[k] = v
        f["bad_nan"] = np.full((4, R, D), np.nan, np.float32)
        f["bad_shape"] = np.zeros((4, R + 1, D), np.float32)
    logs = []
    report = convert_features(h5, str(d / "data"), name="toy_features", progress=False, log=logs.append)
    return h5, str(d / "data"), report, logs


def test_round_trip_identical_arrays(converted, videos):
    _, data_dir, report, _ = converted
    assert report.written == len(videos) and report.shape == (R, D)
    store = ArrayRecordFeatures(data_dir)
    assert sorted(store.ids()) == sorted(videos)
    for k, v in videos.items():
        assert store.length(k) == v.shape[0]
        got = store[k]
        assert got.dtype == np.float32 and got.shape == v.shape
        np.testing.assert_array_equal(got, v)
    # the records are not in insertion order, hence the sidecar index
    with open(os.path.join(report.dataset_dir, INDEX_FILE)) as f:
        assert sorted(json.load(f)["ids"]) == sorted(videos)


def test_bad_videos_skipped_and_reported(converted):
    _, _, report, logs = converted
    assert set(report.skipped) == {"bad_nan", "bad_shape"}
    assert "NaN" in report.skipped["bad_nan"] and "[T, 3, 8]" in report.skipped["bad_shape"]
    assert "bad_shape" in str(report) and any("bad_shape" in m for m in logs)
    assert ArrayRecordFeatures(report.dataset_dir).skipped == report.skipped


def test_tfds_data_source_and_grain(converted, videos):
    import grain
    import tensorflow_datasets as tfds
    _, data_dir, _, _ = converted
    source = tfds.data_source("toy_features", data_dir=data_dir, split="videos")
    ds = grain.MapDataset.source(source).map(lambda r: (r["id"].decode(), r["features"]))
    seen = dict(ds[i] for i in range(len(ds)))
    assert sorted(seen) == sorted(videos)
    for k, v in videos.items():
        np.testing.assert_array_equal(seen[k], v)
    assert "tensorflow" not in sys.modules


def test_open_features_accepts_dataset_dirs(converted, videos):
    _, data_dir, report, _ = converted
    for path in (data_dir, os.path.join(data_dir, "toy_features"), report.dataset_dir):
        store = open_features(path)
        assert isinstance(store, ArrayRecordFeatures) and store.shape() == (R, D)
        np.testing.assert_array_equal(store["one"], videos["one"])
    with pytest.raises(KeyError, match="missing"):
        store["missing"]


def test_missing_index_is_rebuilt(converted, tmp_path, videos):
    import shutil
    _, _, report, _ = converted
    copy = str(tmp_path / "copy")
    shutil.copytree(report.dataset_dir, copy)
    os.remove(os.path.join(copy, INDEX_FILE))
    store = ArrayRecordFeatures(copy)
    assert store.length("c.mp4") == 13 and os.path.exists(os.path.join(copy, INDEX_FILE))


def test_command_line(tmp_path, capsys):
    src = str(tmp_path / "f.npz")
    np.savez(src, x=np.ones((2, R, D), np.float32), y=np.zeros((0, R, D), np.float32))
    out = str(tmp_path / "out")
    assert cli.main(["dataset", src, out, "--name", "npz_features", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "1 videos" in text and "skipped 'y'" in text
    np.testing.assert_array_equal(open_features(out)["x"], np.ones((2, R, D)))
    assert cli.main(["dataset", src, out, "--name", "npz_features", "--quiet"]) == 2   # exists already
    assert "already holds" in capsys.readouterr().err
    assert cli.main(["dataset", src, out, "--name", "Bad-Name", "--quiet"]) == 2


@pytest.mark.parametrize("suffix", [".hdf5", ".npz", "_npy"])
def test_integer_and_all_zero_videos_are_read_with_a_warning_naming_them(tmp_path, suffix):
    """Not errors (the official loader takes them), but almost surely not region features."""
    import warnings

    from dns_jax.datasets.stores import read_checked
    from dns_jax.validation import FeatureWarning

    rng = np.random.default_rng(0)
    videos = {"fine": rng.standard_normal((4, R, D)).astype(np.float32),
              "counts": rng.integers(0, 5, (4, R, D)).astype(np.int32),
              "blank": np.zeros((3, R, D), np.float32)}
    path = str(tmp_path / f"f{suffix}")
    if suffix == ".npz":
        np.savez(path, **videos)
    elif suffix == "_npy":
        os.makedirs(path)
        for k, v in videos.items():
            np.save(os.path.join(path, f"{k}.npy"), v)
    else:
        with h5py.File(path, "w") as f:
            for k, v in videos.items():
                f.create_dataset(k, data=v)
    store = open_features(path)
    for vid in videos:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = read_checked(store, vid, D)
        messages = [str(w.message) for w in caught]
        assert x.dtype == np.float32 and x.shape == videos[vid].shape
        if vid == "fine":
            assert messages == []
        else:
            assert len(messages) == 1 and repr(vid) in messages[0], messages
            assert caught[0].category is FeatureWarning
            assert ("int32" if vid == "counts" else "all zero") in messages[0]
