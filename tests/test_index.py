"""dns_jax.index: building from HDF5, bad videos, append/resume, atomic commits, version stamp,
network checks, DnS search over an index, and the index.py / retrieve.py command lines."""
import csv
import json
import os
import sys

import h5py
import numpy as np
import pytest

from dns_jax import retrieval
from dns_jax.index import Index, IndexFormatError, NetworkMismatchError, build_index, store
from helpers import network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = ["a", "grp/b_1.flv", "c.mp4", "d", "short"]         # CC_WEB-like nested id, SVD-like .mp4 id


@pytest.fixture(scope="module")
def nets():
    return network("fg_bin_student")[1], network("cg_student")[1], network("selector")[1]


@pytest.fixture(scope="module")
def videos():
    ref = network("selector")[0]
    v = ref.videos("q") + ref.videos("d")
    return {"a": v[0], "grp/b_1.flv": v[1], "c.mp4": v[2], "d": v[3], "short": v[4][:2]}


@pytest.fixture(scope="module")
def h5(tmp_path_factory, videos):
    path = str(tmp_path_factory.mktemp("features") / "features.hdf5")
    with h5py.File(path, "w") as f:
        for k, v in videos.items():
            f[k] = v
        f["bad_nan"] = videos["a"] * np.nan
        f["bad_dims"] = videos["a"][:, :, :100]
        f["bad_empty"] = np.zeros((0, 9, 512), np.float32)
        f["bad_rank"] = np.zeros((4, 9, 512, 2), np.float32)
    return path


def _expected(nets, videos, ids):
    fg, cg, sel = nets
    vids = [videos[i] for i in ids]
    sc = retrieval.scorer_for(fg)
    return sc.index(vids), retrieval.coarse_index(cg, vids), retrieval.self_similarities(sel, vids)


def test_build_reads_hdf5_reports_bad_videos(tmp_path, h5, nets, videos):
    d = str(tmp_path / "idx")
    logs = []
    report = build_index(d, [h5], *nets, shard_size=3, progress=False, log=logs.append)
    assert report.added == 5 and set(report.skipped) == {"bad_nan", "bad_dims", "bad_empty", "bad_rank"}
    assert "NaN" in report.skipped["bad_nan"] and "512-d" in report.skipped["bad_dims"]
    assert any("bad_nan" in m for m in logs)
    index = Index.open(d)
    assert sorted(index.ids) == sorted(GOOD) and set(index.skipped) == set(report.skipped)
    fine, coarse, selfsim = _expected(nets, videos, index.ids)
    for i, f in enumerate(fine):
        stored = np.asarray(index.fine_rep(i))
        assert stored.dtype == np.uint8 and stored.shape[1:] == (9, 64)     # packed: 64 bytes per region
        np.testing.assert_array_equal(stored, f)
    np.testing.assert_allclose(index.coarse, coarse, atol=1e-6)
    np.testing.assert_allclose(index.selfsim, selfsim, atol=1e-7)
    assert index.fine_rep(index.position("short")).shape[0] == 4               # repeated to 4 frames
    per_video = index.bytes_per_video()
    assert per_video["fine"] == pytest.approx(9 * 64 * index.lengths.mean()) and per_video["selector"] == 4


def test_append_and_resume(tmp_path, h5, nets):
    d = str(tmp_path / "idx")
    r1 = build_index(d, [h5], *nets, ids=["c.mp4", "a"], progress=False, log=lambda m: None)
    assert r1.added == 2
    r2 = build_index(d, [h5], *nets, shard_size=2, progress=False, log=lambda m: None)
    assert r2.added == 3 and r2.already == 2
    index = Index.open(d)
    assert index.ids[:2] == ["c.mp4", "a"] and sorted(index.ids) == sorted(GOOD)
    r3 = build_index(d, [h5], *nets, ids=["a", "nope"], progress=False, log=lambda m: None)
    assert r3.added == 0 and r3.already == 1 and "nope" in r3.skipped
    assert len(Index.open(d)) == 5


@pytest.mark.parametrize("fail_at", ["shard_file", "manifest"])
def test_killed_build_leaves_usable_index_and_resumes(tmp_path, h5, nets, monkeypatch, fail_at):
    d = str(tmp_path / "idx")
    calls = {"n": 0}
    real_json, real_npy = store._write_json_atomic, store._save_npy

    class Killed(Exception):
        pass

    def json_once(path, obj):            # dies before the manifest of the 2nd shard is written
        if obj.get("shards") and len(obj["shards"]) == 2:
            raise Killed()
        real_json(path, obj)

    def npy_once(path, arr):             # dies while writing the 2nd shard
        calls["n"] += 1
        if calls["n"] == 8:
            raise Killed()
        real_npy(path, arr)

    if fail_at == "manifest":
        monkeypatch.setattr(store, "_write_json_atomic", json_once)
    else:
        monkeypatch.setattr(store, "_save_npy", npy_once)
    with pytest.raises(Killed):
        build_index(d, [h5], *nets, shard_size=2, progress=False, log=lambda m: None)
    monkeypatch.undo()
    index = Index.open(d)                                  # usable: the first shard only
    assert len(index) == 2 and len(index.manifest["shards"]) == 1
    leftovers = set(os.listdir(os.path.join(d, "shards"))) - {"000000"}
    assert leftovers                                        # the partial shard is there ...
    report = build_index(d, [h5], *nets, shard_size=2, progress=False, log=lambda m: None)
    assert report.already == 2 and report.added == 3
    assert set(os.listdir(os.path.join(d, "shards"))) == {"000000", "000001", "000002"}   # ... and cleaned
    index = Index.open(d)
    assert sorted(index.ids) == sorted(GOOD) and len(set(index.ids)) == len(index.ids)


def test_version_stamp_and_network_checks(tmp_path, h5, nets):
    d = str(tmp_path / "idx")
    build_index(d, [h5], *nets, ids=["a"], progress=False, log=lambda m: None)
    index = Index.open(d)
    index.check_networks(*nets)
    with pytest.raises(NetworkMismatchError, match="fine network 'fg_att_student'"):
        index.check_networks(network("fg_att_student")[1])
    with pytest.raises(NetworkMismatchError):
        build_index(d, [h5], network("fg_att_student")[1], nets[1], nets[2], progress=False)
    with pytest.raises(KeyError, match="unknown video id 'zzz'"):
        index.representations(["zzz"])
    writer = Index.open(d, writable=True)
    with pytest.raises(IndexFormatError, match="another process"):
        Index.open(d, writable=True)                      # one writer at a time
    writer.close()
    Index.open(d, writable=True).close()
    manifest = json.load(open(os.path.join(d, "index.json")))
    manifest["format_version"] = 99
    json.dump(manifest, open(os.path.join(d, "index.json"), "w"))
    with pytest.raises(IndexFormatError, match="format version 99"):
        Index.open(d)
    with pytest.raises(IndexFormatError, match="not a DnS index"):
        Index.open(str(tmp_path))


def test_dns_search_over_index_equals_brute_force(tmp_path, h5, nets, videos):
    fg, cg, sel = nets
    d = str(tmp_path / "idx")
    build_index(d, [h5], *nets, progress=False, log=lambda m: None)
    index = Index.open(d)
    dns = retrieval.DnS(fg, cg, sel)
    queries = index.representations(["a", "grp/b_1.flv"])
    res = dns.search(queries, index, budget=0.4, topk=None)
    db = [videos[i] for i in index.ids]
    fine = np.stack([retrieval.score(fg, videos[q], db) for q in queries.ids])
    coarse = retrieval.coarse_index(cg, [videos[q] for q in queries.ids]) @ retrieval.coarse_index(cg, db).T
    ss = retrieval.self_similarities(sel, db)
    s = retrieval.selector_scores(sel, queries.selfsim, ss, coarse)
    mixed = retrieval.rerank(coarse, fine, s, 0.4)
    np.testing.assert_array_equal(res.ranking, np.argsort(-mixed, 1, kind="stable"))
    np.testing.assert_allclose(res.scores, np.take_along_axis(mixed, res.ranking, 1), atol=1e-5)
    assert res.reranked.sum(1).tolist() == [2, 2]           # int(0.4 * 5)
    # queries given as features are indexed like the database
    q2 = dns.index([videos["a"]], ["a"])
    np.testing.assert_array_equal(q2.fine[0], queries.fine[0])


def test_command_lines(tmp_path, h5, nets, monkeypatch, capsys):
    from dns_jax import checkpoint
    sys.path.insert(0, ROOT)
    import index as index_cli
    import retrieve as retrieve_cli
    paths = {}
    for role, net in zip(("fine", "coarse", "selector"), nets):
        paths[role] = str(tmp_path / f"ckpt_{role}")
        checkpoint.save_network(paths[role], net.name, net.config, net.variables)
    common = ["--fine", paths["fine"], "--fine_network", "fg_bin_student", "--coarse", paths["coarse"],
              "--selector", paths["selector"]]
    d = str(tmp_path / "idx")
    assert index_cli.main(["--index", d, "--features", h5, "--quiet"] + common) == 0
    assert len(Index.open(d)) == 5
    out = str(tmp_path / "res.json")
    assert retrieve_cli.main(["--index", d, "--query_ids", "a", "c.mp4", "--budget", "0.2", "--topk", "3",
                              "--output", out, "--quiet"] + common) == 0
    res = json.load(open(out))
    assert list(res) == ["a", "c.mp4"] and len(res["a"]) == 3 and {r["id"] for r in res["a"]} <= set(GOOD)
    scores = [r["score"] for r in res["a"]]
    assert scores == sorted(scores, reverse=True)
    assert sum(r["reranked"] for r in res["a"]) <= 1
    out_csv = str(tmp_path / "res.csv")
    assert retrieve_cli.main(["--index", d, "--query_features", h5, "--query_ids", "grp/b_1.flv",
                              "--budget", "0.2", "--output", out_csv, "--quiet"] + common) == 0
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 5 and rows[0]["query_id"] == "grp/b_1.flv" and {r["video_id"] for r in rows} == set(GOOD)
    assert retrieve_cli.main(["--index", d, "--query_ids", "missing", "--quiet"] + common) == 2
    assert "unknown video id 'missing'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        retrieve_cli.main(["--help"])
    assert e.value.code == 0 and "--budget" in capsys.readouterr().out


def test_build_from_tfds_dataset_equals_hdf5(tmp_path, h5, nets):
    """index.py takes the tfds array_record conversion of a feature file (nested ids included) and
    stores the same representations as from the HDF5 file."""
    from dns_jax.datasets import convert_features
    convert_features(h5, str(tmp_path / "tfds"), name="feats", progress=False, log=lambda m: None)
    a, b = str(tmp_path / "from_h5"), str(tmp_path / "from_tfds")
    build_index(a, [h5], *nets, progress=False, log=lambda m: None)
    report = build_index(b, [str(tmp_path / "tfds")], *nets, progress=False, log=lambda m: None)
    assert report.added == len(GOOD)
    ia, ib = Index.open(a), Index.open(b)
    assert sorted(ib.ids) == sorted(GOOD)
    ra, rb = ia.representations(GOOD), ib.representations(GOOD)
    np.testing.assert_array_equal(ra.coarse, rb.coarse)
    np.testing.assert_array_equal(ra.selfsim, rb.selfsim)
    for fa, fb in zip(ra.fine, rb.fine):
        np.testing.assert_array_equal(fa, fb)
