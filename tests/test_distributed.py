"""dns_jax.distributed and the staged shards it relies on.

Without Ray: staging and adopting shards (retries, duplicates, shards of other networks or format
versions, a commit killed half way), the sharded search run in-process (exact and on faiss
candidates, with segments; a faiss file of other vectors refused), the command line's errors.
On a local Ray cluster of 2 CPUs (slow; skipped without Ray): the distributed index equals the
single-process one, a killed worker or driver then a rerun loses and duplicates nothing, sharded
search on Ray actors equals search_index, distributed extraction equals extract_to_hdf5."""
import json
import os
import shutil
import subprocess
import sys

import h5py
import jax
import numpy as np
import pytest
from helpers import assert_same_index, network, synthetic_index, tiny_extractor

from dns_jax import retrieval
from dns_jax.distributed import ShardedSearch
from dns_jax.distributed.search import _balanced_runs
from dns_jax.index import (
    Index,
    build_index,
    clean_staging,
    compressed,
    describe_network,
    search_index,
    stage_shard,
    staged_parts,
)
from dns_jax.index.store import STAGING, part_name
from dns_jax.localization import COARSE_ONLY, NotLocalized
from dns_jax.retrieval.coarse_faiss import CoarseIndexMismatch

pytestmark = pytest.mark.deadline(300)     # a stuck Ray job fails the test instead of hanging CI
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def nets():
    return network("fg_bin_student")[1], network("cg_student")[1], network("selector")[1]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """18 videos of 2-23 frames (reference fixtures and random ones) and one with NaN features. Short
    lengths keep the canvases to 2 sizes: compiling their kernels is most of these tests' time."""
    ref = network("selector")[0]
    rng = np.random.default_rng(5)
    path = str(tmp_path_factory.mktemp("feats") / "f.hdf5")
    with h5py.File(path, "w") as f:
        for i, v in enumerate(ref.videos("q") + ref.videos("d")):
            f[f"v{i}"] = v
        for i in range(13):
            x = rng.standard_normal((int(rng.integers(2, 24)), 9, 512)).astype(np.float32)
            f[f"grp/r{i}"] = x / np.linalg.norm(x, axis=-1, keepdims=True)
        f["bad"] = np.full((3, 9, 512), np.nan, np.float32)
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, features, nets):
    d = str(tmp_path_factory.mktemp("single") / "idx")
    build_index(d, [features], *nets, shard_size=4, progress=False, log=lambda m: None)
    return d


# -- staged shards (no Ray) ---------------------------------------------------------------------

def _stage(d, nets, ids, reps, **kw):
    networks = {role: describe_network(m) for role, m in zip(("fine", "coarse", "selector"), nets)}
    return stage_shard(d, ids, reps.fine, reps.coarse, reps.selfsim, networks=networks, fine_kind="packed",
                       fine_dims=64, **kw)


def test_staged_shards_are_adopted_once(tmp_path, single, nets):
    src = Index.open(single)
    d = str(tmp_path / "idx")
    index = Index.create(d, *nets, "packed", 64)
    a = _stage(d, nets, src.ids[:3], src.representations(src.ids[:3]))
    # a retried task: the same part, kept as it is (not written twice)
    stamp = os.stat(os.path.join(a, "fine.npy")).st_mtime_ns
    assert _stage(d, nets, src.ids[:3], src.representations(src.ids[:3])) == a
    assert os.stat(os.path.join(a, "fine.npy")).st_mtime_ns == stamp
    b = _stage(d, nets, src.ids[2:6], src.representations(src.ids[2:6]), skipped={"x": "broken"})  # overlaps a
    c = _stage(d, nets, [], _empty(), skipped={"y": "unreadable"})                   # only a failed video
    os.makedirs(os.path.join(d, STAGING, ".tmp-part-killed"))                                   # a killed worker
    assert staged_parts(d) == sorted([a, b, c])
    assert index.adopt([a, b, c]) == {}
    assert index.ids == src.ids[:3] + src.ids[3:6]                                             # src.ids[2] once
    assert index.manifest["count"] == 6 and index.manifest["shards"][1]["removed"] == [src.ids[2]]
    assert index.skipped == {"x": "broken", "y": "unreadable"}
    assert staged_parts(d) == []
    for v in index.ids:
        np.testing.assert_array_equal(index.representations([v]).fine[0], src.representations([v]).fine[0])
    index.close()
    clean_staging(d)                                                  # what index_ray does first
    assert os.listdir(os.path.join(d, STAGING)) == []
    assert Index.open(d).ids == index.ids


def _empty():
    return retrieval.Representations(ids=[], fine=[], coarse=np.zeros((0, 1024), np.float32),
                                     selfsim=np.zeros(0, np.float32))


def test_shards_of_other_networks_or_versions_are_rejected(tmp_path, single, nets):
    src = Index.open(single)
    d = str(tmp_path / "idx")
    index = Index.create(d, *nets, "packed", 64)
    good = _stage(d, nets, src.ids[:2], src.representations(src.ids[:2]))
    fine = nets[0]
    other = type(fine)(fine.name, fine.config, fine.module, jax.tree_util.tree_map(lambda w: w + 1, fine.variables))
    alien = _stage(d, (other, nets[1], nets[2]), src.ids[2:4], src.representations(src.ids[2:4]))
    old = _stage(d, nets, src.ids[4:6], src.representations(src.ids[4:6]))
    meta = json.load(open(os.path.join(old, "part.json")))
    meta["format_version"] = 0
    json.dump(meta, open(os.path.join(old, "part.json"), "w"))
    rejected = index.adopt([good, alien, old])
    assert set(rejected) == {alien, old}
    assert "fine network" in rejected[alien] and "fingerprint" in rejected[alien]
    assert "format version 0" in rejected[old]
    assert index.ids == src.ids[:2]                                  # the rest is committed
    assert sorted(os.listdir(os.path.join(d, STAGING, "rejected"))) == sorted(map(os.path.basename, (alien, old)))
    index.close()


def test_a_commit_killed_before_its_manifest_is_restaged(tmp_path, single, nets):
    """A part moved under shards/ whose manifest write never happened is staged again when the
    index is next opened for writing (not deleted as an unlisted shard), then adopted."""
    src = Index.open(single)
    d = str(tmp_path / "idx")
    Index.create(d, *nets, "packed", 64).close()
    part = _stage(d, nets, src.ids[:3], src.representations(src.ids[:3]))
    os.rename(part, os.path.join(d, "shards", "000000"))                 # killed right after the move
    index = Index.open(d, writable=True)
    assert len(index) == 0 and staged_parts(d) == [os.path.join(d, STAGING, part_name(src.ids[:3]))]
    index.adopt(staged_parts(d))
    assert index.ids == src.ids[:3]
    index.close()


def test_balanced_runs():
    assert _balanced_runs([4, 4, 4, 4, 1], 2) == [range(0, 2), range(2, 5)]
    assert _balanced_runs([1], 4) == [range(0, 1)]
    assert [len(r) for r in _balanced_runs([3] * 9, 3)] == [3, 3, 3]


@pytest.fixture(scope="module")
def in_process(single, nets):
    """One DnS and the index's shards split over 3 holders run in this process, for every budget
    (the kernels compile once per shape)."""
    dns = retrieval.DnS(*nets)
    return dns, Index.open(single), ShardedSearch(dns, single, actors=3, use_ray=False)


@pytest.mark.parametrize("budget,topk", [(0.5, None), (3, 5), (1.0, 4), (0, None), (1000, None)])
def test_sharded_search_in_process_equals_search_index(in_process, budget, topk):
    """The shards split over 3 holders: the driver's merges give the ranked ids and scores of one
    search over the whole index, fractions and numbers of videos alike."""
    dns, index, sharded = in_process
    queries = index.representations(["v0", "grp/r3", "grp/r7"])
    assert sharded.ids == index.ids and len(sharded.sizes) == 3
    a = sharded.search(queries, budget, topk)
    b = search_index(dns, index, queries, "dns", budget, topk)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.reranked, b.reranked)
    assert a.timings["fine_pairs_per_query"] == retrieval.budget_count(budget, len(index))


def _above(f):
    """Re-ranked results first (the networks score random codes): their segments are in the top."""
    return np.asarray(f, np.float32) + 10.0


def test_sharded_segments_equal_search_index(in_process):
    """`segments=K`: each holder localizes its own re-ranked results among its first K; the driver
    returns the segments one search over the whole index gives, NotLocalized for coarse-only ones."""
    dns, index, sharded = in_process
    queries = index.representations(["v0", "grp/r3", "v4"])
    for budget, count, mapping in ((4, 6, _above), (1.0, 5, None)):
        a = sharded.search(queries, budget, 8, fine_mapping=mapping, segments=count)
        b = search_index(dns, index, queries, "dns", budget, 8, fine_mapping=mapping, segments=count)
        np.testing.assert_array_equal(a.ranking, b.ranking)
        assert [len(row) for row in a.segments] == [count] * 3
        assert repr(a.segments) == repr(b.segments)
        assert any(len(s) for row in a.segments for s in row)             # segments found, not only markers
    assert not any(isinstance(s, NotLocalized) for row in a.segments for s in row)     # budget 1.0: all re-ranked
    first = sharded.search(queries, 4, 8, fine_mapping=_above, segments=6)
    assert all(isinstance(s, NotLocalized) and s.reason == COARSE_ONLY for row in first.segments for s in row[4:])
    assert sharded.search(queries, 4, 8).segments is None


# -- the compressed coarse stage (faiss-ivfpq), no Ray ----------------------------------------------

FAISS_N, FAISS_SHARD = 192, 64


@pytest.fixture(scope="module")
def faiss_index(tmp_path_factory, nets):
    """192 synthetic videos in 3 shards with their faiss coarse stage."""
    pytest.importorskip("faiss", reason="faiss is optional (pip install 'dns-jax[faiss]')")
    return synthetic_index(str(tmp_path_factory.mktemp("faiss") / "idx"), nets, n=FAISS_N, shard=FAISS_SHARD)


@pytest.fixture(scope="module")
def faiss_sharded(faiss_index, nets):
    dns = retrieval.DnS(*nets)
    return dns, faiss_index, ShardedSearch(dns, faiss_index.directory, actors=3, use_ray=False)


@pytest.mark.parametrize("budget,topk,pool", [(0.05, 10, 50), (20, None, 40), (0, 5, 30), (0.25, 8, None)])
def test_sharded_search_on_faiss_candidates_equals_search_index(faiss_sharded, budget, topk, pool):
    """The driver's faiss pool and selector, the holders' fine stage: the ranked ids, scores and
    re-ranked flags of one process's search on the same candidates (only the pool is ranked)."""
    dns, index, sharded = faiss_sharded
    assert sharded.candidates_only and len(sharded.sizes) == 3 and sharded.ids == index.ids
    queries = index.representations(["v0_3", "v0_100", "v0_191"])
    a = sharded.search(queries, budget, topk, pool=pool)
    b = search_index(dns, index, queries, "dns", budget, topk, pool=pool)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.reranked, b.reranked)
    assert a.timings["candidates_per_query"] == b.timings["candidates_per_query"] == (pool or FAISS_N)
    assert a.timings["fine_pairs_per_query"] == b.timings["fine_pairs_per_query"]
    assert a.reranked.sum(1).max() <= a.timings["fine_pairs_per_query"]


def test_sharded_segments_on_faiss_candidates_equal_search_index(faiss_sharded):
    dns, index, sharded = faiss_sharded
    queries = index.representations(["v0_3", "v0_150"])
    a = sharded.search(queries, 5, 12, fine_mapping=_above, segments=8, pool=60)
    b = search_index(dns, index, queries, "dns", 5, 12, fine_mapping=_above, segments=8, pool=60)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    assert a.reranked[:, :5].all() and not a.reranked[:, 5:8].any()
    assert repr(a.segments) == repr(b.segments)
    assert any(not isinstance(s, NotLocalized) for row in a.segments for s in row[:5])
    assert all(isinstance(s, NotLocalized) and s.reason == COARSE_ONLY for row in a.segments for s in row[5:])


def test_sharded_search_refuses_a_faiss_file_of_other_vectors(tmp_path, faiss_index, nets):
    """As search_index: CoarseIndexMismatch naming the file, here before any holder starts; bad
    options are ValueErrors naming them."""
    other = synthetic_index(str(tmp_path / "other"), nets, n=FAISS_SHARD, shard=FAISS_SHARD, seed=1)
    mine = str(tmp_path / "mine")
    shutil.copytree(faiss_index.directory, mine)
    shutil.rmtree(os.path.join(mine, compressed.DIRNAME))
    shutil.copytree(compressed.path_of(other), os.path.join(mine, compressed.DIRNAME))
    dns = retrieval.DnS(*nets)
    message = r"coarse_faiss/header.json was built for another index: its shard '000000' holds other CG vectors"
    with pytest.raises(CoarseIndexMismatch, match=message):
        search_index(dns, Index.open(mine), faiss_index.representations(["v0_1"]), "dns", 0.05)
    with pytest.raises(CoarseIndexMismatch, match=message):
        ShardedSearch(dns, mine, actors=2, use_ray=False)
    with ShardedSearch(dns, mine, actors=2, use_ray=False, coarse_search="exact") as exact:
        assert not exact.candidates_only
        with pytest.raises(ValueError, match="budget must be a fraction"):
            exact.search(faiss_index.representations(["v0_1"]), 1.5)
        with pytest.raises(ValueError, match="top-k must be a whole number"):
            exact.search(faiss_index.representations(["v0_1"]), 0.1, -1)
    with pytest.raises(compressed.CompressedCoarseError, match="coarse search must be one of"):
        ShardedSearch(dns, mine, use_ray=False, coarse_search="ivf")


def test_a_small_faiss_ivfpq_collection_is_searched_exactly_by_shards(tmp_path, nets):
    """Under compressed.MIN_VIDEOS a faiss-ivfpq index has no faiss file: every video is ranked, as
    in one process."""
    pytest.importorskip("faiss", reason="faiss is optional (pip install 'dns-jax[faiss]')")
    small = synthetic_index(str(tmp_path / "small"), nets, n=compressed.MIN_VIDEOS - 1, shard=21)
    dns = retrieval.DnS(*nets)
    queries = small.representations(["v0_0", "v0_40"])
    with ShardedSearch(dns, small.directory, actors=3, use_ray=False) as sharded:
        assert not sharded.candidates_only
        a = sharded.search(queries, 4, None)
    b = search_index(dns, small, queries, "dns", 4, None)
    assert a.ranking.shape == (2, compressed.MIN_VIDEOS - 1)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)


# -- Ray ----------------------------------------------------------------------------------------

def _ray():
    return pytest.importorskip("ray", reason="Ray is not installed (pip install 'dns-jax[ray]')")


def test_unreachable_address_and_flag_errors(tmp_path, features, nets, capsys):
    _ray()
    from dns_jax import cli
    base = ["index", "--index", str(tmp_path / "idx"), "--features", features, "--quiet"] + _network_flags(tmp_path, nets)
    assert cli.main(base + ["--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Ray cluster at '127.0.0.1:1'" in err[0]
    assert cli.main(base + ["--ray", "nonsense"]) == 2
    assert "not HOST:PORT" in capsys.readouterr().err
    assert cli.main(base + ["--workers", "2"]) == 2
    assert "--workers and --cpus need --ray" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "idx")


def _network_flags(tmp_path, nets):
    from dns_jax import checkpoint
    flags = []
    for role, net in zip(("fine", "coarse", "selector"), nets):
        checkpoint.save_network(str(tmp_path / role), net.name, net.config, net.variables)
        flags += [f"--{role}", str(tmp_path / role)]
    return flags


@pytest.mark.slow
def test_killed_worker_then_rerun_loses_and_duplicates_nothing(ray_cluster, tmp_path, features, single, nets):
    """A worker dies between writing a shard and renaming it into place: that run either recovers
    (Ray retries the batch on a new worker) or stops with a one-line error; a rerun completes, and
    the index equals the single-process one, each video once."""
    from dns_jax.distributed import ClusterError, index_ray
    d = str(tmp_path / "idx")
    marker = str(tmp_path / "killed")
    try:
        index_ray(d, [features], *nets, shard_size=4, workers=1, progress=False, log=lambda m: None,
                  _faults={"worker_exit_before_rename": marker})
    except ClusterError as e:
        assert "run the same command again" in str(e)
    assert os.path.exists(marker)                                     # the worker was killed
    index_ray(d, [features], *nets, shard_size=4, workers=1, progress=False, log=lambda m: None)
    assert_same_index(single, d)
    assert not [n for n in os.listdir(os.path.join(d, STAGING)) if n != "rejected"]


@pytest.mark.slow
def test_index_ray_equals_single_process(ray_cluster, tmp_path, features, single, nets, capsys):
    """`dns-jax index --ray`, 2 workers, shards of 4: the single-process index (the bad video listed
    as skipped); a staged shard left by a run with other networks is rejected with an error line
    and the rest is built."""
    from dns_jax import cli
    from dns_jax.distributed import index_ray
    d = str(tmp_path / "idx")
    Index.create(d, *nets, "packed", 64).close()
    att = network("fg_att_student")[1]                      # its representations: float32 [T, R, 512]
    alien = stage_shard(d, ["v0"], [np.zeros((9, 9, 512), np.float32)], np.zeros((1, 1024)),
                        np.zeros(1), networks={r: describe_network(m) for r, m in
                                               zip(("fine", "coarse", "selector"), (att, *nets[1:]))},
                        fine_kind="float32", fine_dims=512)
    capsys.readouterr()
    assert cli.main(["index", "--index", d, "--features", features, "--ray", "--workers", "2", "--shard-size", "4",
                     "--quiet", "--coarse", "faiss-ivfpq"] + _network_flags(tmp_path, nets)) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    # the compressed coarse stage follows the Ray commit (18 videos: too few to train, searched exactly)
    assert Index.open(d).coarse_search == "faiss-ivfpq" and "too few to train the faiss index" in captured.err
    assert any(line.startswith("error: staged shard " + os.path.basename(alien)) and "fine network" in line
               for line in err)
    assert any(line.startswith("skipped bad: ") for line in err)
    assert f"{d}: 18 videos added, 0 already indexed, 1 skipped" in err
    assert_same_index(single, d)
    again = index_ray(d, [features], *nets, shard_size=4, workers=2, progress=False, log=lambda m: None)
    assert (again.added, again.already) == (0, 18)


_DRIVER = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import ray
from helpers import assert_same_index, network, tiny_extractor
from dns_jax.distributed import index_ray
ray.init(address=sys.argv[5], runtime_env={"env_vars": json.loads(sys.argv[6])}, logging_level="WARNING")
nets = network("fg_bin_student")[1], network("cg_student")[1], network("selector")[1]
index_ray(sys.argv[3], [sys.argv[4]], *nets, shard_size=4, workers=1, progress=False,
          _faults={"driver_exit_after_parts": 2})
"""


@pytest.mark.slow
def test_killed_driver_then_rerun_loses_and_duplicates_nothing(ray_cluster, tmp_path, features, single, nets):
    """The driver dies after two shards were staged and before its commit: nothing of it is in the
    index yet; the rerun adopts what was staged, indexes the rest, and equals the single-process index."""
    from dns_jax.distributed import index_ray
    d = str(tmp_path / "idx")
    address = ray_cluster.get_runtime_context().gcs_address
    env = dict(os.environ, JAX_PLATFORMS="cpu", DNS_JAX_COMPILATION_CACHE="off")
    workers_env = json.dumps(ray_cluster.get_runtime_context().runtime_env["env_vars"])  # the module's XLA cache
    out = subprocess.run([sys.executable, "-c", _DRIVER, ROOT, HERE, d, features, address, workers_env], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert len(Index.open(d)) == 0 and len(staged_parts(d)) >= 2
    report = index_ray(d, [features], *nets, shard_size=4, workers=1, progress=False, log=lambda m: None)
    assert report.added == 18
    assert_same_index(single, d)


@pytest.mark.slow
def test_sharded_search_on_ray_actors_equals_search_index(ray_cluster, single, nets):
    index = Index.open(single)
    dns = retrieval.DnS(*nets)
    queries = index.representations(["v0", "grp/r3", "v4"])
    with ShardedSearch(dns, single, actors=2) as sharded:
        assert sharded.ids == index.ids and len(sharded.sizes) == 2 and min(sharded.resident_bytes) > 0
        for budget, topk, count in ((0.3, None, 0), (4, 6, 3)):
            a = sharded.search(queries, budget, topk, segments=count)
            b = search_index(dns, index, queries, "dns", budget, topk, segments=count)
            np.testing.assert_array_equal(a.ranking, b.ranking)
            np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(a.reranked, b.reranked)
            assert repr(a.segments) == repr(b.segments)


@pytest.mark.slow
@pytest.mark.deadline(240)
def test_sharded_search_on_ray_actors_with_faiss_candidates_equals_search_index(ray_cluster, faiss_index, nets):
    """The compressed coarse stage with Ray actors: the driver's pool, the actors' fine stage and
    segments give one process's results."""
    dns = retrieval.DnS(*nets)
    queries = faiss_index.representations(["v0_3", "v0_150"])
    with ShardedSearch(dns, faiss_index.directory, actors=2) as sharded:
        assert sharded.candidates_only and len(sharded.sizes) == 2
        a = sharded.search(queries, 5, 10, fine_mapping=_above, segments=6, pool=60)
    b = search_index(dns, faiss_index, queries, "dns", 5, 10, fine_mapping=_above, segments=6, pool=60)
    np.testing.assert_array_equal(a.ranking, b.ranking)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.reranked, b.reranked)
    assert repr(a.segments) == repr(b.segments)


def _write_video(path, n, level):
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height, s.width, s.pix_fmt = 64, 80, "yuv420p"
        for i in range(n):
            img = np.full((64, 80, 3), (level + 7 * i) % 200, np.uint8)
            img[:, : 8 + i % 40] = 255 - img[:, : 8 + i % 40]
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


@pytest.mark.slow
def test_extract_features_ray_equals_extract_to_hdf5(ray_cluster, tmp_path):
    """Videos decoded in Ray tasks and extracted by 2 actors: the features of extract_to_hdf5, bit for
    bit; the broken file is listed as failed; a part staged with other settings is rejected with an
    error line; a rerun extracts nothing more."""
    from dns_jax.distributed import extract_features_ray
    from dns_jax.distributed.extraction import PART_META, parts_dir
    from dns_jax.features.extract_folder import extract_to_hdf5
    videos = [(f"v{i}", _write_video(tmp_path / "videos" / f"v{i}.mp4", 10 + 7 * i, 20 * i)) for i in range(5)]
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    videos.append(("broken", str(tmp_path / "videos" / "broken.mp4")))
    extractor = tiny_extractor(batch_size=4)
    one = tmp_path / "one.hdf5"
    s1 = extract_to_hdf5(videos, one, extractor, settings={"x": 1}, progress=False, log=lambda m: None)
    out = tmp_path / "ray.hdf5"
    stale = os.path.join(parts_dir(out), "part-stale")
    os.makedirs(stale)
    json.dump({"settings": '{"x": 2}', "ids": [], "failed": []}, open(os.path.join(stale, PART_META), "w"))
    logs = []
    s2 = extract_features_ray(videos, out, extractor, settings={"x": 1}, part_size=2, workers=2, progress=False,
                              log=logs.append)
    assert any("part-stale was extracted with other settings" in line for line in logs)
    assert (s2.extracted, s2.frames) == (s1.extracted, s1.frames) == (5, s1.frames)
    assert [f[0] for f in s2.failed] == ["broken"]
    with h5py.File(one, "r") as a, h5py.File(out, "r") as b:
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k][()], b[k][()])
    s3 = extract_features_ray(videos, out, extractor, settings={"x": 1}, progress=False, log=lambda m: None)
    assert (s3.extracted, s3.skipped) == (0, 5)
    shutil.rmtree(parts_dir(out), ignore_errors=True)
