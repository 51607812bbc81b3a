"""Training data: pair files, augmentation plans, samplers, the resumable loader, configs."""
import gzip
import importlib.util
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from dns_jax.training import config as train_config
from dns_jax.training.augment import augment, augment_indices
from dns_jax.datasets.stores import MemoryFeatures, open_features, write_hdf5
from dns_jax.training.pairs import PairFileError, PairSet, drop_missing, read_pairs, write_pairs
from dns_jax.training.pipeline import (BatchLoader, Position, SelectorSampler, TripletSampler,
                                       bucket_length)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pairset():
    index = [f"v{i}" for i in range(6)]
    pairs = {0: {"positives": {1: 0.9, 2: 0.7}, "negatives": {3: 0.1, 4: -0.2}},
             1: {"positives": {0: 0.8}, "negatives": {5: 0.0}},
             2: {"positives": {}, "negatives": {3: 0.2}}}
    return PairSet(index, pairs)


def _store(n=6, t=(5, 12, 9, 20, 3, 11), r=2, d=4):
    rng = np.random.default_rng(0)
    return MemoryFeatures({f"v{i}": rng.standard_normal((t[i % len(t)], r, d)).astype(np.float32)
                           for i in range(n)})


# -- pair files --------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".json", ".json.gz", ".npz"])
def test_pair_file_round_trip(tmp_path, ext):
    ps = _pairset()
    ps.meta = {"teacher": "visil_f"}
    back = read_pairs(write_pairs(ps, str(tmp_path / f"pairs{ext}")))
    assert back.index == ps.index
    assert back.meta["teacher"] == "visil_f"
    for q in ps.pairs:
        for kind in ("positives", "negatives"):
            assert back.pairs.get(q, {}).get(kind, {}) == pytest.approx(ps.pairs[q][kind])


def test_official_pickle_layout_with_numpy_scalars(tmp_path):
    obj = {"index": ["a", "b", "c"],
           "pairs": {0: {"positives": {1: np.float32(0.75)}, "negatives": {np.int64(2): np.float64(-0.25)}},
                     1: {"positives": {0: 0.5}, "negatives": {2: 0.0}}}}
    path = tmp_path / "trainset_similarities_teacher.pk"
    path.write_bytes(pickle.dumps(obj))
    ps = read_pairs(str(path))
    assert ps.pairs[0] == {"positives": {1: 0.75}, "negatives": {2: -0.25}}
    assert ps.triplet_queries() == [0, 1]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pk"
    path.write_bytes(pickle.dumps({"index": ["a"], "pairs": _Exploit()}))
    with pytest.raises(PairFileError, match="only plain dicts"):
        read_pairs(str(path))


def test_empty_pair_files(tmp_path):
    (tmp_path / "zero.pk").write_bytes(b"")
    with pytest.raises(PairFileError, match="empty"):
        read_pairs(str(tmp_path / "zero.pk"))
    (tmp_path / "nopairs.json").write_text(json.dumps({"index": ["a", "b"], "pairs": {}}))
    with pytest.raises(PairFileError, match="no pairs"):
        read_pairs(str(tmp_path / "nopairs.json"))
    with gzip.open(tmp_path / "bad.json.gz", "wt") as f:
        f.write(json.dumps({"index": ["a"], "wrong": {}}))
    with pytest.raises(PairFileError, match="not a pair file"):
        read_pairs(str(tmp_path / "bad.json.gz"))
    with pytest.raises(PairFileError, match="no such pair file"):
        read_pairs(str(tmp_path / "absent.pk"))


def test_pairs_out_of_index_are_rejected():
    with pytest.raises(PairFileError, match="outside the index"):
        PairSet(["a", "b"], {0: {"positives": {5: 0.1}, "negatives": {}}})


def test_missing_videos_are_reported_and_skipped():
    ps = _pairset()
    available = {"v0", "v1", "v2", "v4", "v5"}          # v3 missing
    kept, report = drop_missing(ps, available)
    assert report.missing == ["v3"]
    assert report.pairs_dropped == 2                    # (0, 3) and (2, 3)
    assert 3 not in kept.pairs[0]["negatives"]
    assert 2 not in kept.pairs                          # its only pair used v3
    msg = report.message("pairs.pk", "features.hdf5")
    assert "1 of 6 videos" in msg and "v3" in msg and "skipping 2 pairs" in msg


# -- feature files -----------------------------------------------------------------------------

def test_hdf5_features(tmp_path):
    rng = np.random.default_rng(1)
    vids = {"x": rng.standard_normal((7, 9, 8)), "y": rng.standard_normal((3, 8))}  # [T, D] -> R = 1
    store = open_features(write_hdf5(vids, str(tmp_path / "f.hdf5")))
    assert sorted(store.ids()) == ["x", "y"] and store.length("x") == 7
    np.testing.assert_allclose(store["x"], vids["x"].astype(np.float32))
    assert store["y"].shape == (3, 1, 8)


# -- augmentation ------------------------------------------------------------------------------

def test_augmentation_follows_the_official_rule():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(400):
        t = int(rng.integers(9, 60))
        idx = augment_indices(t, rng)
        assert idx.min() >= 0 and idx.max() < t
        if len(idx) == 2 * t:
            assert np.array_equal(idx, np.repeat(np.arange(t), 2)); kinds.add("dup")
        elif np.array_equal(idx, np.arange(t)[::-1]):
            kinds.add("rev")
        elif np.array_equal(idx, np.arange(t)[::2]):
            kinds.add("skip")
        elif np.array_equal(idx, np.arange(t)):
            kinds.add("none")
        else:
            kinds.add("chunks")
    assert kinds == {"dup", "rev", "skip", "none", "chunks"}
    for t in (1, 5, 8):                                  # <= 8 frames: never augmented
        assert np.array_equal(augment_indices(t, np.random.default_rng(3)), np.arange(t))
    long = [len(augment_indices(400, np.random.default_rng(s))) for s in range(50)]
    assert max(long) <= 300                              # truncated, never duplicated (>= 150)
    video = np.arange(20)[:, None, None] * np.ones((20, 2, 3))
    out = augment(video, np.random.default_rng(5))
    assert out.shape[1:] == (2, 3)


def test_chunk_augmentations_drop_or_shuffle_whole_chunks():
    t, seen = 23, set()
    for seed in range(300):
        rng = np.random.default_rng(seed)
        u = rng.uniform()
        if u >= 0.2:
            continue
        w = int(rng.integers(4, 16))
        ext = np.concatenate([np.arange(t), np.arange(t)])[:t + (w - t % w) % w]  # self-extended
        chunks = [tuple(c) for c in ext.reshape(-1, w)]
        got = [tuple(c) for c in augment_indices(t, np.random.default_rng(seed)).reshape(-1, w)]
        if u < 0.1:   # dropped chunks: an ordered subsequence of whole chunks
            it = iter(chunks)
            assert all(any(c == d for d in it) for c in got)
            seen.add("drop")
        else:         # shuffled chunks: a permutation of all of them
            assert sorted(got) == sorted(chunks)
            seen.add("shuffle")
    assert seen == {"drop", "shuffle"}


# -- sampling and loading ----------------------------------------------------------------------

def test_triplet_sampling_is_seeded_per_epoch():
    s = TripletSampler(_pairset(), seed=3)
    assert len(s) == 2                                   # query 2 has no positive
    assert s.epoch(0) == TripletSampler(_pairset(), seed=3).epoch(0)
    assert {tuple(t[:3]) for e in range(20) for t in s.epoch(e)} > {tuple(t[:3]) for t in s.epoch(0)}


def test_selector_sampling_balances_classes():
    items = [(f"v{i % 6}", f"v{(i + 1) % 6}", 0.1 * i) for i in range(30)]
    labels = [1.0 if i < 8 else 0.0 for i in range(30)]
    s = SelectorSampler(items, labels, pairs_per_class=5000, seed=0)
    ep = s.epoch(0)
    assert len(ep) == 16 and sum(r[3] for r in ep) == 8
    with pytest.raises(ValueError, match="nothing to learn"):
        SelectorSampler(items, [0.0] * 30, 10)


def test_bucket_length():
    assert [bucket_length(n, (16, 32, 64)) for n in (1, 16, 17, 64, 65, 130)] == [16, 16, 32, 64, 128, 192]


def _collect(loader, n):
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def test_loader_batches_are_deterministic_and_resumable():
    ps = PairSet([f"v{i}" for i in range(6)],
                 {q: {"positives": {(q + 1) % 6: 0.5}, "negatives": {(q + 3) % 6: 0.1, (q + 2) % 6: 0.2}}
                  for q in range(6)})
    store = _store()
    kw = dict(kind="student", batch_size=4, global_batch=4, buckets=(8, 16), augmentation=True,
              max_augmented_frames=300, seed=1)
    full = _collect(BatchLoader(TripletSampler(ps, 1), store, num_threads=2, **kw), 7)
    assert full[0].arrays["videos"].shape[:2] == (4, 3)
    assert full[1].num_real == 2 and full[1].arrays["weights"].tolist() == [1, 1, 0, 0]
    assert full[1].next_position == Position(1, 0)       # 6 triplets = 2 batches per epoch
    resumed = _collect(BatchLoader(TripletSampler(ps, 1), store, num_threads=0,
                                   start=Position(1, 1), **kw), 4)
    # the grain iterator's own state: saved after 3 batches, restored into a fresh iterator
    loader = BatchLoader(TripletSampler(ps, 1), store, num_threads=2, **kw)
    it = iter(loader)
    for _ in range(3):
        next(it)
    saved = it.get_state()
    it.close()
    assert loader.position_of(saved["next_index"]) == Position(1, 1) == full[2].next_position
    it = iter(BatchLoader(TripletSampler(ps, 1), store, num_threads=1, **kw))
    it.set_state(saved)
    restored = [next(it) for _ in range(4)]
    it.close()
    for a, b, c in zip(full[3:], resumed, restored):
        assert (a.epoch, a.index) == (b.epoch, b.index) == (c.epoch, c.index)
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
            np.testing.assert_array_equal(a.arrays[k], c.arrays[k])
    b = full[0].arrays
    lengths = b["masks"].sum(-1)
    assert b["videos"].shape[2] == bucket_length(int(lengths.max()), (8, 16))
    assert np.all(b["videos"][b["masks"] == 0] == 0)
    # two processes each build their half of the same global batch
    halves = [_collect(BatchLoader(TripletSampler(ps, 1), store, num_threads=0, process_index=p,
                                   process_count=2, **kw), 1)[0].arrays for p in (0, 1)]
    for k in b:
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), b[k])


def test_checkpointed_data_positions(caplog):
    """A checkpoint's data item -> the grain iterator state to resume from: its saved iterator
    state, or (checkpoints before grain) the index of its (epoch, batch)."""
    from types import SimpleNamespace
    from dns_jax.training.resume import TrainingError
    from dns_jax.training.trainer import _restored_position

    loader = BatchLoader(TripletSampler(_pairset(), 1), _store(), "student", 1, 1, (8,))   # 2 per epoch
    cfg = SimpleNamespace(seed=1)
    assert _restored_position("w", cfg, loader, {"epoch": 3, "batch": 1, "seed": 1}) == {"next_index": 7}
    saved = {"epoch": 3, "batch": 1, "seed": 1, "iterator": {"next_index": 7}}
    assert _restored_position("w", cfg, loader, saved) == {"next_index": 7} and not caplog.records
    moved = dict(saved, iterator={"next_index": 9})                 # e.g. another batch size since
    assert _restored_position("w", cfg, loader, moved) == {"next_index": 9}
    assert "epoch 3, batch 1, which is batch 9" in caplog.text
    with pytest.raises(TrainingError, match="seed 1, this config has seed 2"):
        _restored_position("w", SimpleNamespace(seed=2), loader, saved)
    with pytest.raises(ValueError, match="outside the epochs of 2 batches"):
        loader.index_of(Position(0, 2))


# -- configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("network", train_config.NETWORKS)
def test_configs_have_the_official_defaults(network):
    import importlib.util
    name = network if network != "fg_student" else "fg_att_student"
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config() if network != "fg_student" else train_config.default_config(network)
    train_config.validate_config(c)
    assert c.learning_rate == (1e-5 if network == "cg_student" else 1e-4)
    if network == "selector":
        assert (c.batch_size, c.num_epochs, c.selector.threshold, c.selector.pairs_per_class) == (64, 100, 0.2, 5000)
    else:
        assert (c.batch_size, c.num_epochs, c.max_augmented_frames) == (32, 300, 300)
        assert c.r_parameter == (1e-3 if network.startswith("fg_") else 0.0)


def test_unknown_config_key_is_an_error():
    c = train_config.default_config("fg_att_student")
    c.unlock()
    c.learning_rat = 1e-3
    with pytest.raises(train_config.ConfigError, match="learning_rat.*did you mean 'learning_rate'"):
        train_config.validate_config(c)
    c = train_config.default_config("cg_student")
    c.model.unlock()
    c.model.heads = 4
    with pytest.raises(train_config.ConfigError, match="heads"):
        train_config.validate_config(c)
    with pytest.raises(train_config.ConfigError, match="dataset"):
        train_config.validate_config(train_config.override(train_config.default_config("selector"),
                                                           dataset="imagenet"))


def test_cli_rejects_unknown_config_key(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--config",
                           os.path.join(REPO, "configs", "fg_att_student.py"), "--workdir", str(tmp_path),
                           "--config.learning_rat=0.1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "learning_rat" in proc.stderr
    assert not os.listdir(tmp_path)


def test_partial_config_gets_the_defaults():
    import ml_collections
    c = ml_collections.ConfigDict({"network": "cg_student", "model": {"dims": 32},
                                   "synthetic": {"dims": 32}, "batch_size": 4})
    v = train_config.validate_config(c)
    assert (v.batch_size, v.model.dims, v.model.netvlad_clusters, v.learning_rate) == (4, 32, 64, 1e-5)
    with pytest.raises(train_config.ConfigError, match="learning_rate"):
        train_config.validate_config(ml_collections.ConfigDict({"network": "selector", "learning_rate": "fast"}))


# -- metric writers ----------------------------------------------------------------------------

def _event_scalars(logdir):
    """{(tag, step): value} of the TensorBoard event files in `logdir` (TFRecord framing:
    length, its CRC, an Event proto, its CRC)."""
    import struct
    from tensorboardX.proto import event_pb2
    out = {}
    for name in os.listdir(logdir):
        data = open(os.path.join(logdir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out[(v.tag, event.step)] = v.simple_value
    return out


def test_clu_metric_writers(tmp_path):
    from clu.metric_writers import AsyncMultiWriter, LoggingWriter, MetricWriter
    from dns_jax.training import metric_writers as metrics

    writer = metrics.create_writer(str(tmp_path / "main"), is_main=True)
    assert isinstance(writer, AsyncMultiWriter)
    kinds = {type(w._writer) for w in writer._writers}      # AsyncWriter wraps each one
    assert {LoggingWriter, metrics.JsonlWriter} <= kinds
    writer.write_scalars(3, {"loss": np.float32(0.5), "lr": 1e-4})
    writer.write_scalars(6, {"loss": np.asarray(0.25)})
    writer.write_images(6, {"x": np.zeros((2, 2, 3))})       # not supported: skipped, no error
    writer.close()
    assert metrics.read_jsonl(str(tmp_path / "main")) == [{"step": 3, "loss": 0.5, "lr": 1e-4},
                                                          {"step": 6, "loss": 0.25}]
    if metrics.has_tensorflow() or importlib.util.find_spec("tensorboardX") is None:
        return
    assert metrics.TensorboardXWriter in kinds and issubclass(metrics.TensorboardXWriter, MetricWriter)
    assert _event_scalars(str(tmp_path / "main" / "tensorboard")) == {
        ("loss", 3): 0.5, ("lr", 3): pytest.approx(1e-4), ("loss", 6): 0.25}
    other = metrics.create_writer(str(tmp_path / "other"), is_main=False)   # process > 0: log only
    other.write_scalars(1, {"loss": 1.0})
    other.close()
    assert not os.path.exists(tmp_path / "other")
