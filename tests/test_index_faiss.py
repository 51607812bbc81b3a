"""The compressed coarse stage of an index (`dns-jax index --coarse faiss-ivfpq`, index/compressed.py):
the same results as the exact path when the pool covers the collection, <= 64 bytes per video, a
faiss file of other vectors refused, removed videos never returned, updates followed, small
collections searched exactly, and the command lines."""
import glob
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
from helpers import network, retrieved_ids, save_build_networks, synthetic_index

from dns_jax.index import Index, build_index, compressed, search_index
from dns_jax.retrieval import DnS, Representations
from dns_jax.retrieval.synthetic import SyntheticCG

faiss = pytest.importorskip("faiss", reason="faiss is optional (pip install 'dns-jax[faiss]')")

from dns_jax.retrieval.coarse_faiss import CoarseIndexMismatch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, SHARD = 600, 200


@pytest.fixture(scope="module")
def nets():
    return network("fg_bin_student")[1], network("cg_student")[1], network("selector")[1]


@pytest.fixture(scope="module")
def dns(nets):
    return DnS(*nets)


def _make_index(directory, nets, n=N, seed=0, kind=compressed.FAISS_IVFPQ, log=None):
    return synthetic_index(directory, nets, n=n, shard=SHARD, seed=seed, kind=kind, log=log)


@pytest.fixture(scope="module")
def synth(tmp_path_factory, nets):
    return _make_index(str(tmp_path_factory.mktemp("faiss") / "idx"), nets)


def _queries(index, ids):
    return index.representations(ids)


def test_equals_exact_when_the_pool_covers_the_collection(synth, dns):
    q = _queries(synth, ["v0_3", "v0_250", "v0_599"])
    for stage, budget in (("dns", 0.05), ("dns", 20), ("coarse", 0.0)):
        exact = search_index(dns, synth, q, stage, budget, topk=40, coarse_search="exact")
        approx = search_index(dns, synth, q, stage, budget, topk=40, pool=N)
        np.testing.assert_array_equal(approx.ranking, exact.ranking)
        np.testing.assert_allclose(approx.scores, exact.scores, atol=1e-5)
        np.testing.assert_array_equal(approx.reranked, exact.reranked)


def test_a_smaller_pool_keeps_the_exact_top_results(synth, dns):
    q = _queries(synth, [f"v0_{i}" for i in range(0, N, 60)])
    exact = search_index(dns, synth, q, "coarse", 0.0, topk=10, coarse_search="exact")
    approx = search_index(dns, synth, q, "coarse", 0.0, topk=10, pool=100)
    recall = np.mean([np.isin(e, a).mean() for e, a in zip(exact.ranking, approx.ranking)])
    assert recall >= 0.9                     # the pool is re-scored exactly
    fresh = Index.open(synth.directory)
    res = search_index(dns, fresh, _queries(fresh, q.ids), "dns", 0.05, topk=10, pool=100)
    assert res.ranking.shape == (len(q), 10) and res.timings["candidates_per_query"] == 100
    assert fresh._coarse is None                # only the pools' CG vectors were read
    assert res.reranked.sum(1).max() <= int(0.05 * N)


def test_at_most_64_bytes_per_video(synth):
    header = json.load(open(os.path.join(compressed.path_of(synth), "header.json")))
    assert header["bytes_per_video"] <= 64 and header["ntotal"] == N
    assert header["network"] == compressed.network_tag(synth) and header["dims"] == 1024
    size = os.path.getsize(os.path.join(compressed.path_of(synth), "index.faiss"))
    assert size <= N * header["bytes_per_video"] + header["fixed_bytes"] + 64 * 1024
    assert compressed.describe(synth)["bytes_per_video"] == header["bytes_per_video"]
    assert header["recall"]["pool"] == min(compressed.MIN_POOL, N) and header["recall"]["recall"] == 1.0


def test_a_faiss_index_of_other_vectors_is_refused(tmp_path, synth, nets, dns):
    other = _make_index(str(tmp_path / "other"), nets, n=SHARD, seed=1)
    mine = str(tmp_path / "mine")
    shutil.copytree(synth.directory, mine)
    shutil.rmtree(os.path.join(mine, compressed.DIRNAME))
    shutil.copytree(compressed.path_of(other), os.path.join(mine, compressed.DIRNAME))
    index = Index.open(mine)
    q = _queries(index, ["v0_1"])
    with pytest.raises(CoarseIndexMismatch, match=r"coarse_faiss/header.json was built for another index: its "
                                                  r"shard '000000' holds other CG vectors"):
        search_index(dns, index, q, "dns", 0.05)
    path = os.path.join(mine, compressed.DIRNAME, "header.json")
    header = json.load(open(path))
    json.dump(dict(header, network="cg_student:0123456789abcdef"), open(path, "w"))
    with pytest.raises(CoarseIndexMismatch, match="was trained on vectors of network 'cg_student:0123"):
        search_index(dns, index, q, "dns", 0.05)
    writer = Index.open(mine, writable=True)          # the next sync rebuilds it
    logs = []
    compressed.sync(writer, log=logs.append)
    writer.close()
    assert any("rebuilt" in m for m in logs)
    assert search_index(dns, Index.open(mine), q, "coarse", 0.0, topk=1).ranking[0, 0] == 1


def test_removed_videos_are_never_returned_and_updates_are_followed(tmp_path, synth, nets, dns):
    d = str(tmp_path / "idx")
    shutil.copytree(synth.directory, d)
    q_ids = ["v0_10", "v0_300"]
    before = search_index(dns, Index.open(d), _queries(Index.open(d), q_ids), "dns", 0.05, topk=30, pool=60)
    gone = sorted({Index.open(d).ids[int(i)] for i in before.ranking[:, :15].reshape(-1)} | {"v0_10"})
    writer = Index.open(d, writable=True)
    writer.remove(gone)
    writer.close()
    index = Index.open(d)                           # not synced yet: removed rows filtered out
    q = Representations(ids=q_ids, fine=before_q_fine(synth, q_ids), coarse=synth.coarse_rows(
        [synth.position(v) for v in q_ids]), selfsim=synth.selfsim[[synth.position(v) for v in q_ids]])
    for pool in (60, None):
        res = search_index(dns, index, q, "dns", 0.05, topk=30, pool=pool)
        found = {index.ids[int(i)] for i in res.ranking.reshape(-1)}
        assert not found & set(gone) and res.ranking.shape == (2, 30)
    # a new shard: added to the faiss index by the next sync; searched (exactly) before it
    rng = np.random.default_rng(5)
    writer = Index.open(d, writable=True)
    new = SyntheticCG(n=N + 50, dims=1024, rank=64, topics=12).vectors(N, N + 50)
    writer.add([f"new{i}" for i in range(50)], [rng.integers(0, 256, (4, 9, 64), np.uint8) for _ in range(50)],
               new, np.full(50, 0.8, np.float32))
    res = search_index(dns, Index.open(d), Representations(["n"], [q.fine[0]], new[:1], q.selfsim[:1]),
                       "coarse", 0.0, topk=1, pool=10)
    assert Index.open(d).ids[int(res.ranking[0, 0])] == "new0"
    compressed.sync(writer, log=lambda m: None)
    writer.close()
    header = json.load(open(os.path.join(d, compressed.DIRNAME, "header.json")))
    assert [c["name"] for c in header["covered"]][-1] == "000003" and header["ntotal"] == N + 50
    index = Index.open(d)
    q_new = Representations(["n"], [q.fine[0]], new[:1], q.selfsim[:1])
    res = search_index(dns, index, q_new, "coarse", 0.0, topk=30, pool=40)
    assert index.ids[int(res.ranking[0, 0])] == "new0"
    res = search_index(dns, index, q_new, "dns", 0.05, topk=30, pool=40)
    assert "new0" in {index.ids[int(i)] for i in res.ranking[0]}
    assert not {index.ids[int(i)] for i in res.ranking[0]} & set(gone)


def before_q_fine(index, ids):
    return [np.asarray(index.fine_rep(index.position(v))) for v in ids]


def test_a_small_collection_is_searched_exactly(tmp_path, nets, dns):
    logs = []
    index = _make_index(str(tmp_path / "small"), nets, n=compressed.MIN_VIDEOS - 1, log=logs.append)
    assert any("too few to train" in m and "searched exactly" in m for m in logs)
    assert not os.path.exists(compressed.path_of(index))
    q = _queries(index, ["v0_0"])
    a = search_index(dns, index, q, "dns", 0.1, topk=10)
    b = search_index(dns, index, q, "dns", 0.1, topk=10, coarse_search="exact")
    np.testing.assert_array_equal(a.ranking, b.ranking)


def test_segments_on_faiss_candidates_equal_the_exact_path(synth, dns):
    """Search results on the faiss pool carry segments as the exact path's do (same frame-to-frame
    matrices of the fine stage); the coarse stage marks every result as not localized."""
    from dns_jax.localization import COARSE_ONLY, NotLocalized
    q = _queries(synth, ["v0_3", "v0_250"])
    above = lambda f: np.asarray(f) + 10.0  # noqa: E731 -- re-ranked results first (random networks)
    a = search_index(dns, synth, q, "dns", 0.05, topk=10, pool=N, segments=4, fine_mapping=above)
    b = search_index(dns, synth, q, "dns", 0.05, topk=10, coarse_search="exact", segments=4, fine_mapping=above)
    assert a.reranked[:, :4].all()
    np.testing.assert_array_equal(a.ranking, b.ranking)
    assert a.segments is not None and len(a.segments) == 2 and all(len(s) == 4 for s in a.segments)
    assert repr(a.segments) == repr(b.segments)
    assert any(not isinstance(s, NotLocalized) for row in a.segments for s in row)   # re-ranked ones
    c = search_index(dns, synth, q, "coarse", 0.0, topk=10, pool=50, segments=3)
    assert all(isinstance(s, NotLocalized) and s.reason == COARSE_ONLY for row in c.segments for s in row)


def test_only_an_index_with_its_faiss_file_ranks_candidates_only(tmp_path, synth, nets):
    assert compressed.ranks_candidates_only(synth)
    small = _make_index(str(tmp_path / "small"), nets, n=compressed.MIN_VIDEOS - 1)
    assert not compressed.ranks_candidates_only(small)
    exact = _make_index(str(tmp_path / "exact"), nets, n=70, kind=compressed.EXACT)
    assert not compressed.ranks_candidates_only(exact)


def test_missing_faiss_is_one_line_with_the_extra(tmp_path, nets, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(compressed.CompressedCoarseError, match=r"pip install 'dns-jax\[faiss\]'"):
        build_index(str(tmp_path / "i"), [], *nets, progress=False, coarse_search="faiss-ivfpq")
    assert not os.path.exists(tmp_path / "i")


def test_command_lines(tmp_path, nets, capsys):
    """dns-jax index --coarse CG --coarse faiss-ivfpq, then retrieve: the same as --coarse exact."""
    from dns_jax import checkpoint
    sys.path.insert(0, ROOT)
    import index as index_cli
    import retrieve as retrieve_cli
    rng = np.random.default_rng(0)
    base = rng.standard_normal((12, 4, 9, 512)).astype(np.float32)
    h5 = str(tmp_path / "f.hdf5")
    with h5py.File(h5, "w") as f:
        for i in range(compressed.MIN_VIDEOS + 6):
            x = base[i % 12] + 0.7 * rng.standard_normal((4, 9, 512))
            f[f"v{i:03d}"] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    paths = {}
    for role, net in zip(("fine", "coarse", "selector"), nets):
        paths[role] = str(tmp_path / f"ckpt_{role}")
        checkpoint.save_network(paths[role], net.name, net.config, net.variables)
    common = ["--fine", paths["fine"], "--fine-network", "fg_bin_student", "--coarse", paths["coarse"],
              "--selector", paths["selector"], "--quiet"]
    d = str(tmp_path / "idx")
    assert index_cli.main(["--index", d, "--features", h5, "--coarse", "faiss-ivfpq"] + common) == 0
    assert "coarse search: faiss IVF" in capsys.readouterr().err
    assert json.load(open(os.path.join(d, "coarse_faiss", "header.json")))["recall"]["recall"] == 1.0  # pool = N
    assert Index.open(d).coarse_search == "faiss-ivfpq" and os.path.exists(os.path.join(d, "coarse_faiss"))
    assert retrieved_ids(retrieve_cli.main, d, "faiss-ivfpq", common, tmp_path) == \
        retrieved_ids(retrieve_cli.main, d, "exact", common, tmp_path)
    assert index_cli.main(["--index", d, "--features", h5, "--fine", paths["fine"], "--coarse", "faiss-ivfpq",
                           "--selector", paths["selector"], "--quiet"]) == 2
    assert "--coarse: give the coarse student's weights too" in capsys.readouterr().err
    assert retrieve_cli.main(["--index", d, "--query-ids", "v000", "--pool", "0"] + common) == 2
    assert "--pool must be >= 1" in capsys.readouterr().err
    assert index_cli.main(["--index", d, "--features", h5, "--coarse", "exact"] + common) == 0   # back to exact
    assert Index.open(d).coarse_search == "exact" and not os.path.exists(os.path.join(d, "coarse_faiss"))
    assert "the faiss index was removed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        index_cli.main(["--help"])
    assert "faiss-ivfpq" in capsys.readouterr().out


@pytest.mark.slow
def test_build_command_keeps_the_coarse_search_stage(tmp_path, capsys):
    """dns-jax build --coarse NET --coarse faiss-ivfpq: recorded in the index and kept by `dns-jax remove`;
    a collection this small is searched exactly (said in the log)."""
    pytest.importorskip("av")
    from dns_jax import cli
    from dns_jax.app.query import Searcher
    from dns_jax.datasets.video_collection import make_collection
    make_collection(str(tmp_path / "c"), seed=1, num_sources=1, edits=("crop",), extra_edits=0,
                    num_distractors=2, min_seconds=3, max_seconds=4, width=96)
    nets = save_build_networks(tmp_path, 32, random=True)
    work = str(tmp_path / "work")
    argv = ["build", "--videos", str(tmp_path / "c" / "videos"), "--workdir", work, "--dims", "32",
            "--fine", nets["fine"], "--coarse", nets["coarse"], "--coarse", "faiss-ivfpq", "--selector", nets["selector"]]
    assert cli.main(argv) == 0
    assert "too few to train the faiss index" in capsys.readouterr().out
    assert Index.open(os.path.join(work, "index")).coarse_search == "faiss-ivfpq"
    ids = Index.open(os.path.join(work, "index")).ids
    assert cli.main(["remove", "--workdir", work, ids[0], "--quiet"]) == 0
    index = Index.open(os.path.join(work, "index"))
    assert index.coarse_search == "faiss-ivfpq" and ids[0] not in index.ids
    assert set(Searcher(work).search(ids[1], "dns", 0.5, top=3).scores) == set(index.ids)


@pytest.mark.slow
def test_query_command_on_a_work_directory_with_a_faiss_file(tmp_path, monkeypatch):
    """`dns-jax query` on a work directory whose coarse stage is a faiss file (the collection made
    large enough for one by lowering MIN_VIDEOS): it answers from the faiss candidates, its results
    are indexed videos, the query's own copy comes first, and the scores equal the library's search."""
    pytest.importorskip("av")
    from dns_jax import cli
    from dns_jax.app.query import Searcher
    from dns_jax.datasets.video_collection import make_collection
    monkeypatch.setattr(compressed, "MIN_VIDEOS", 4)
    monkeypatch.setattr(compressed, "params_for",       # quantisers a handful of vectors can train
                        lambda n, dims: compressed.IVFPQParams(m=8, nbits=2, nlist=1, nprobe=1, transform="none"))
    make_collection(str(tmp_path / "c"), seed=2, num_sources=1, edits=("crop", "hflip"), extra_edits=0,
                    num_distractors=2, min_seconds=3, max_seconds=4, width=96)
    nets = save_build_networks(tmp_path, 32)
    work = str(tmp_path / "work")
    assert cli.main(["build", "--videos", str(tmp_path / "c" / "videos"), "--workdir", work, "--dims", "32",
                     "--fine", nets["fine"], "--coarse", nets["coarse"], "--coarse", "faiss-ivfpq",
                     "--selector", nets["selector"], "--quiet"]) == 0
    index = Index.open(os.path.join(work, "index"))
    assert compressed.ranks_candidates_only(index), "the build made no faiss file"
    video = sorted(glob.glob(str(tmp_path / "c" / "videos" / "*")))[0]
    out = str(tmp_path / "results.json")
    assert cli.main(["query", "--workdir", work, "--stage", "dns", "--budget", "0.5", "--top", "3",
                     "--output", out, video]) == 0
    with open(out) as f:
        results = json.load(f)
    assert len(results) == 1
    (scores,) = results.values()
    own = os.path.splitext(os.path.basename(video))[0]
    assert len(scores) == 3 and set(scores) <= set(index.ids)      # the top results only, from the candidates
    assert max(scores, key=scores.get) == own
    direct = Searcher(work).search(own, "dns", 0.5, top=3).scores    # the indexed video as the query
    assert set(direct) == set(scores)
    for vid, score in direct.items():
        assert abs(score - scores[vid]) < 1e-4, vid
