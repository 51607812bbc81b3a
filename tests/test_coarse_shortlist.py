"""The shortlist coarse search (`--coarse shortlist`, `retrieval.ShortlistCoarseDatabase`): every
video ranked by its region vectors averaged over the temporal segments, the first `pool` scored
exactly; the same results as the exact search when the pool covers the collection, only the pool
ranked otherwise; refused for one-vector CG students; the command lines."""
import json
import os
import sys

import h5py
import numpy as np
import pytest
from helpers import retrieved_ids, save_build_networks

from dns_jax import checkpoint, pretrained
from dns_jax.app import coarse_recipe
from dns_jax.index import Index, build_index, compressed, search_index
from dns_jax.retrieval import (
    CoarseDatabase,
    DnS,
    ShortlistCoarseDatabase,
    coarse_scores,
    region_means,
)
from dns_jax.retrieval.coarse import first_k
from dns_jax.validation import FeatureError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, S, R = 32, 3, 9


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _vectors(n, seed=0):
    return _unit(np.random.default_rng(seed).normal(size=(n, S * R, D))).reshape(n, S * R * D).astype(np.float32)


def _first_stage_reference(q, db):
    """Plain numpy: each region's S unit vectors summed and normalised, then the best of the R x R
    region-pair cosines."""
    qm = _unit(q.reshape(-1, S, R, D).sum(1))
    dm = _unit(db.reshape(-1, S, R, D).sum(1))
    s = np.einsum("qad,nbd->qnab", qm, dm).reshape(q.shape[0], db.shape[0], R * R)
    return s.max(-1)


def test_region_means_by_hand():
    v = _vectors(4)
    got = region_means(v, S, R)
    x = v.reshape(4, S, R, D)
    for i in range(4):
        for r in range(R):
            want = x[i, :, r].sum(0)
            np.testing.assert_allclose(got[i, r * D:(r + 1) * D], want / np.linalg.norm(want), atol=1e-6)
    with pytest.raises(FeatureError, match="do not split into 3 segments x 9 regions"):
        region_means(v[:, :-1], S, R)


def test_first_k_is_a_stable_sorts_first_k():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, (20, 50)).astype(np.float32)          # many ties, also at the k-th place
    for k in (1, 7, 50, 80):
        want = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, 50)]
        np.testing.assert_array_equal(first_k(scores, k), want)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_pool_of_the_whole_database_is_the_exact_search(dtype):
    db = _vectors(300)
    q = _vectors(5, seed=1)
    exact = CoarseDatabase(db, dtype=dtype, blocks=S * R, top=3)
    short = ShortlistCoarseDatabase(exact, S)
    idx, scores = short.candidates(q, 300)
    assert idx.shape == scores.shape == (5, 300) and all(sorted(row) == list(range(300)) for row in idx)
    np.testing.assert_allclose(scores, np.take_along_axis(exact.similarities(q), idx, 1), atol=1e-6)
    if dtype == "float32":
        np.testing.assert_allclose(scores, np.take_along_axis(coarse_scores(q, db, S * R, top=3), idx, 1), atol=1e-5)


def test_the_pool_is_the_first_stage_top_scored_exactly():
    db = _vectors(200)
    q = _vectors(7, seed=2)
    exact = CoarseDatabase(db, blocks=S * R, top=3)
    short = ShortlistCoarseDatabase(exact, S, batch_rows=40)      # 2 queries a batch: the padded last batch too
    idx, scores = short.candidates(q, 20)
    first = _first_stage_reference(q, db)
    for row, s in zip(idx, first):
        np.testing.assert_array_equal(row, np.argsort(-s, kind="stable")[:20])
    np.testing.assert_allclose(scores, np.take_along_axis(coarse_scores(q, db, S * R, top=3), idx, 1), atol=1e-5)
    np.testing.assert_array_equal(short.candidates(q, 20, batch=3)[0], idx)   # batches of 3 queries
    one_by_one = [short.candidates(q[i:i + 1], 20) for i in range(len(q))]
    np.testing.assert_array_equal(np.concatenate([i for i, _ in one_by_one]), idx)
    np.testing.assert_allclose(np.concatenate([s for _, s in one_by_one]), scores, atol=1e-6)
    assert short.first.top == 1 and short.first.blocks == R
    with pytest.raises(ValueError, match="pool must be >= 1"):
        short.candidates(q, 0)


def test_with_top_shares_the_vectors_and_scores_the_mean_of_the_best_pairs():
    db, q = _vectors(50), _vectors(3, seed=6)
    best = CoarseDatabase(db, blocks=S * R)
    np.testing.assert_allclose(best.similarities(q), coarse_scores(q, db, S * R, top=1), atol=1e-5)
    best.topk(q, 5)                                  # compiled for the best pair first
    three = best.with_top(3)
    assert three.vectors is best.vectors and best.top == 1
    np.testing.assert_allclose(three.similarities(q), coarse_scores(q, db, S * R, top=3), atol=1e-5)
    np.testing.assert_allclose(three.topk(q, 5)[0], -np.sort(-coarse_scores(q, db, S * R, top=3), 1)[:, :5], atol=1e-5)
    np.testing.assert_allclose(best.similarities(q), coarse_scores(q, db, S * R, top=1), atol=1e-5)
    with pytest.raises(FeatureError, match="top 730 of 729 block pairs"):
        best.with_top(730)


def test_a_copy_of_one_stretch_reaches_the_pool():
    """A query that copies one stretch of a database video: its averaged regions still single that
    video out, and the exact score of the copied stretch is 1."""
    db = _vectors(100, seed=3)
    x = db.reshape(100, S, R, D)
    q = _unit(np.stack([x[42, 1]] * S) + 0.05 * np.random.default_rng(4).normal(size=(S, R, D)))
    q[1] = x[42, 1]
    short = ShortlistCoarseDatabase(CoarseDatabase(db, blocks=S * R, top=3), S)
    idx, scores = short.candidates(q.reshape(1, -1).astype(np.float32), 5)
    assert idx[0, 0] == 42 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 40-video index with the build's CG student of 3 segments (top 3), FG-Att fine student and
    selector of 32 dims; the networks' checkpoints and the features file for the command lines."""
    tmp = tmp_path_factory.mktemp("shortlist")
    paths = save_build_networks(tmp, D, random=True)
    config = coarse_recipe.region_max_config(D, segments=S, top_pairs=3)
    paths["region"] = str(tmp / "net_region")
    checkpoint.save_network(paths["region"], "cg_student", config, coarse_recipe.initial_variables(config, [], seed=0))
    rng = np.random.default_rng(0)
    base = rng.standard_normal((10, 6, 9, D)).astype(np.float32)
    h5 = str(tmp / "f.hdf5")
    with h5py.File(h5, "w") as f:
        for i in range(40):
            x = base[i % 10] + 0.8 * rng.standard_normal((6, 9, D))
            f[f"v{i:03d}"] = _unit(x).astype(np.float32)
    nets = [pretrained.load(name, paths[k]) for k, name in (("fine", "fg_att_student"), ("region", "cg_student"),
                                                             ("selector", "selector"))]
    index_dir = str(tmp / "idx")
    build_index(index_dir, [h5], *nets, progress=False, log=lambda m: None, coarse_search="shortlist")
    return {"paths": paths, "h5": h5, "nets": nets, "index": Index.open(index_dir), "tmp": tmp}


def test_search_index_equals_exact_when_the_pool_covers_the_collection(setup):
    index, dns = setup["index"], DnS(*setup["nets"])
    assert index.coarse_search == "shortlist" and compressed.ranks_candidates_only(index)
    q = index.representations(["v000", "v007", "v013"])
    for stage, budget in (("coarse", 0.0), ("dns", 0.2), ("dns", 5)):
        exact = search_index(dns, index, q, stage, budget, topk=None, coarse_search="exact")
        short = search_index(dns, index, q, stage, budget, topk=None)           # the index's: shortlist
        assert short.timings["candidates_per_query"] == 40                        # max(1000, ...) >= 40 videos
        np.testing.assert_array_equal(short.ranking, exact.ranking)
        np.testing.assert_allclose(short.scores, exact.scores, atol=1e-5)
        np.testing.assert_array_equal(short.reranked, exact.reranked)


def test_a_smaller_pool_ranks_the_pool_only(setup):
    index, dns = setup["index"], DnS(*setup["nets"])
    q = index.representations(["v000", "v011"])
    res = search_index(dns, index, q, "dns", 4, topk=None, pool=12)
    assert res.ranking.shape == (2, 12) and res.reranked.sum(1).max() == 4
    coarse = np.asarray(index.coarse)
    first = _first_stage_reference(np.asarray(q.coarse), coarse)
    for qi in range(2):
        assert set(res.ranking[qi]) == set(np.argsort(-first[qi], kind="stable")[:12])
    # the query's own video and its family (the same base: every 10th video) make its pool, and the
    # coarse stage puts the video itself first (cosine 1)
    assert {0, 10, 20, 30} <= set(res.ranking[0]) and {1, 11, 21, 31} <= set(res.ranking[1])
    coarse_only = search_index(dns, index, q, "coarse", 0.0, topk=3, pool=12)
    assert list(coarse_only.ranking[:, 0]) == [0, 11] and np.allclose(coarse_only.scores[:, 0], 1.0, atol=1e-5)


def test_one_vector_students_are_refused(setup, tmp_path):
    one = pretrained.load("cg_student", setup["paths"]["coarse"])
    dns = DnS(setup["nets"][0], one, setup["nets"][2])
    with pytest.raises(compressed.CompressedCoarseError, match="shortlist needs a region-vector CG student"):
        build_index(str(tmp_path / "one"), [setup["h5"]], setup["nets"][0], one, setup["nets"][2],
                    progress=False, log=lambda m: None, coarse_search="shortlist")
    assert not os.path.exists(str(tmp_path / "one"))                    # refused before any work
    build_index(str(tmp_path / "one"), [setup["h5"]], setup["nets"][0], one, setup["nets"][2],
                progress=False, log=lambda m: None)
    index = Index.open(str(tmp_path / "one"))
    with pytest.raises(FeatureError, match="needs a region-vector CG student.*one vector per video"):
        search_index(dns, index, index.representations(["v000"]), "coarse", 0.0, coarse_search="shortlist")
    writable = Index.open(str(tmp_path / "one"), writable=True)
    writable.set_coarse_search("shortlist")
    with pytest.raises(compressed.CompressedCoarseError, match="one CG vector per video.*--coarse exact or faiss"):
        compressed.sync(writable, log=lambda m: None)
    writable.close()
    with pytest.raises(compressed.CompressedCoarseError, match="one of exact, faiss-ivfpq, shortlist"):
        compressed.check_kind("short")


def test_the_build_refuses_a_shortlist_of_one_vector_students_before_any_work(tmp_path):
    from dns_jax.app.build import BuildError, BuildOptions, _check_settings
    from dns_jax.app.workdir import Workdir

    opts = BuildOptions(videos="v", workdir=str(tmp_path), recipe="build:demo", coarse_search="shortlist")
    rc = opts.config()
    assert _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)["coarse.kind"] == "region_max"
    rc.coarse.kind = "netvlad"
    with pytest.raises(BuildError, match="--coarse shortlist needs region vectors.*coarse.kind 'netvlad'"):
        _check_settings(opts, rc, Workdir(str(tmp_path)), lambda *_: None)


def test_command_lines(setup, tmp_path, capsys):
    """dns-jax index --coarse REGION_CG --coarse shortlist, then retrieve: the same as --coarse exact;
    --pool bounds what is ranked; the help names it."""
    sys.path.insert(0, ROOT)
    import index as index_cli
    import retrieve as retrieve_cli
    paths = setup["paths"]
    common = ["--fine", paths["fine"], "--coarse", paths["region"], "--selector", paths["selector"], "--quiet"]
    d = str(tmp_path / "idx")
    assert index_cli.main(["--index", d, "--features", setup["h5"], "--coarse", "shortlist"] + common) == 0
    assert Index.open(d).coarse_search == "shortlist"
    assert retrieved_ids(retrieve_cli.main, d, "shortlist", common, tmp_path) == \
        retrieved_ids(retrieve_cli.main, d, "exact", common, tmp_path)
    small = str(tmp_path / "small.json")
    assert retrieve_cli.main(["--index", d, "--query-ids", "v000", "--pool", "7", "--top", "0", "--output", small]
                             + common) == 0
    assert len(json.load(open(small))["v000"]) == 7
    one = ["--fine", paths["fine"], "--coarse", paths["coarse"], "--selector", paths["selector"], "--quiet"]
    assert index_cli.main(["--index", str(tmp_path / "one"), "--features", setup["h5"], "--coarse", "shortlist"]
                          + one) != 0
    assert "shortlist needs a region-vector CG student" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        index_cli.main(["--help"])
    assert "--coarse shortlist" in capsys.readouterr().out


def test_the_sharded_search_of_a_shortlist_index_with_a_covering_pool_or_exact_is_the_exact_search(setup):
    """ShardedSearch (Ray actors; here in-process) on a shortlist index: the default pool covers these
    40 videos, and `coarse_search='exact'` searches every video; both give the exact ranking."""
    from dns_jax.distributed.search import ShardedSearch

    index, dns = setup["index"], DnS(*setup["nets"])
    q = index.representations(["v000", "v007"])
    exact = search_index(dns, index, q, "dns", 0.2, topk=None, coarse_search="exact")
    for coarse_search in (None, "exact"):
        with ShardedSearch(dns, index.directory, actors=2, use_ray=False, coarse_search=coarse_search) as sharded:
            assert sharded.candidates_only == (coarse_search is None)
            got = sharded.search(q, budget=0.2, topk=None)
        np.testing.assert_array_equal(got.ranking, exact.ranking)
        np.testing.assert_allclose(got.scores, exact.scores, atol=1e-5)


@pytest.fixture(scope="module")
def sharded_setup(setup):
    """The same 40 videos indexed in 4 shards of 10, with the shortlist recorded."""
    index_dir = str(setup["tmp"] / "idx_shards")
    build_index(index_dir, [setup["h5"]], *setup["nets"], progress=False, log=lambda m: None,
                coarse_search="shortlist", shard_size=10)
    return Index.open(index_dir)


@pytest.mark.parametrize("budget,topk,pool", [(0.2, None, 12), (4, 6, 9), (0, 5, 7), (0.5, None, None)])
def test_the_sharded_search_takes_the_shortlist(setup, sharded_setup, budget, topk, pool):
    """ShardedSearch (Ray actors; here in-process) on a shortlist index: each holder's first `pool`,
    merged by first-stage score, is the pool one process takes; the ranked ids, scores and
    re-ranked flags are search_index's, and only the pool is ranked."""
    from dns_jax.distributed.search import ShardedSearch

    index, dns = sharded_setup, DnS(*setup["nets"])
    assert len(index.manifest["shards"]) == 4
    q = index.representations(["v000", "v007", "v031"])
    with ShardedSearch(dns, index.directory, actors=3, use_ray=False) as sharded:
        assert sharded.candidates_only and len(sharded.sizes) == 3
        got = sharded.search(q, budget=budget, topk=topk, pool=pool)
    want = search_index(dns, index, q, "dns", budget, topk=topk, pool=pool)
    assert want.timings["candidates_per_query"] == (pool or 40)
    np.testing.assert_array_equal(got.ranking, want.ranking)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_array_equal(got.reranked, want.reranked)
    assert got.timings["candidates_per_query"] == want.timings["candidates_per_query"]
    if pool:   # the pool is the first stage's top, which the exact stage alone would not give
        first = dns.shortlist_database(index).candidates(q.coarse, pool)[0]
        assert all(set(r) <= set(f) for r, f in zip(got.ranking, first))


def test_merging_the_holders_shortlists_takes_the_global_first_stage_top_with_ties_to_the_lower_position():
    """ShardedSearch merges its holders' shortlists with `_merge` keyed by first-stage score: the
    first `pool` of one process's `first_k` over the whole index, with their exact scores."""
    from dns_jax.distributed.search import _merge

    rng = np.random.default_rng(3)
    first = rng.integers(0, 4, (5, 30)).astype(np.float32)          # many ties
    exact = rng.random((5, 30)).astype(np.float32)
    offsets = [0, 8, 19]
    parts = []
    for a, (lo, hi) in enumerate(zip(offsets, offsets[1:] + [30])):
        local = first_k(first[:, lo:hi], 6)                          # each holder's own first 6
        parts.append((local, np.take_along_axis(exact[:, lo:hi], local, 1),
                      np.take_along_axis(first[:, lo:hi], local, 1), 0.0))
    pos, _, scores = _merge([(p, f, e) for p, e, f, _ in parts], np.array(offsets), 6)
    np.testing.assert_array_equal(pos, first_k(first, 6))
    np.testing.assert_array_equal(scores, np.take_along_axis(exact, pos, 1))


def test_the_sharded_search_refuses_the_shortlist_of_a_one_vector_student(setup, monkeypatch):
    """Refused in the driver, before any actor starts (on Ray, starting them costs seconds)."""
    from dns_jax.distributed import search as sharded_search

    index = setup["index"]
    one_vector = pretrained.load("cg_student", setup["paths"]["coarse"])
    dns = DnS(setup["nets"][0], one_vector, setup["nets"][2])

    def no_actor(*args, **kwargs):
        raise AssertionError("an actor was started before the refusal")

    monkeypatch.setattr(sharded_search, "ShardActor", no_actor)
    with pytest.raises(FeatureError, match="shortlist coarse search needs a region-vector CG student"):
        sharded_search.ShardedSearch(dns, index.directory, actors=2, use_ray=False, coarse_search="shortlist")


def test_mixed_scores_and_fused_mapping_by_hand():
    from dns_jax.retrieval import FusedMapping, mixed_scores

    f = np.array([-1.0, 0.0, 0.6], np.float32)
    c = np.array([0.2, 0.4, 0.9], np.float32)
    np.testing.assert_allclose(mixed_scores(f, c), f / 2 + 0.5)                        # the official mapping
    np.testing.assert_allclose(mixed_scores(f, c, lambda x: x * 3), f * 3)              # a mapping alone
    fused = FusedMapping(lambda x: x * 3, 0.25)
    np.testing.assert_allclose(mixed_scores(f, c, fused), 0.25 * c + 0.75 * f * 3, rtol=1e-6)
    np.testing.assert_allclose(mixed_scores(f, c, FusedMapping(None, 0.5)), 0.5 * c + 0.5 * (f / 2 + 0.5), rtol=1e-6)
    np.testing.assert_allclose(fused(f), f * 3)                                         # called alone: its mapping
    with pytest.raises(ValueError, match="pass them"):
        mixed_scores(f, None, fused)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="coarse_weight must be in"):
            FusedMapping(None, bad)


def _in_index_order(res, n):
    from dns_jax.index.search import scores_in_index_order

    return np.stack([scores_in_index_order(res, q, n) for q in range(len(res.query_ids))])


@pytest.mark.parametrize("coarse_search", ["exact", "shortlist", "sharded exact", "sharded shortlist"])
def test_a_fused_mapping_keeps_its_share_of_the_coarse_score_in_every_search_path(setup, sharded_setup,
                                                                                 coarse_search):
    """A re-ranked video scores w x its CG score + (1 - w) x its mapped fine score, the others their CG
    score: in one process (exact and on the shortlist's pool) and over sharded holders."""
    from dns_jax.distributed.search import ShardedSearch
    from dns_jax.retrieval import FusedMapping

    index, dns = sharded_setup, DnS(*setup["nets"])
    n = len(index)
    q = index.representations(["v000", "v007", "v031"])
    coarse = _in_index_order(search_index(dns, index, q, "coarse", 0, topk=None, coarse_search="exact"), n)
    fine = _in_index_order(search_index(dns, index, q, "fine", 0, topk=None), n)
    mapping = FusedMapping(lambda raw: np.float32(0.9) * raw + np.float32(0.05), 0.3)
    if coarse_search.startswith("sharded"):
        with ShardedSearch(dns, index.directory, actors=3, use_ray=False,
                           coarse_search=coarse_search.split()[1]) as sharded:
            got = sharded.search(q, budget=6, topk=None, fine_mapping=mapping, segments=3)
    else:
        got = search_index(dns, index, q, "dns", 6, topk=None, fine_mapping=mapping, coarse_search=coarse_search)
    assert got.reranked.sum(1).tolist() == [6, 6, 6]
    for qi in range(3):
        for j, score, reranked in zip(got.ranking[qi], got.scores[qi], got.reranked[qi]):
            want = 0.3 * coarse[qi, j] + 0.7 * (0.9 * fine[qi, j] + 0.05) if reranked else coarse[qi, j]
            assert score == pytest.approx(want, abs=2e-5)
    assert all(np.all(np.diff(row) <= 0) for row in got.scores)                  # ranked by the fused scores


def test_a_build_searcher_fuses_with_its_recorded_coarse_weight():
    """Searcher.fine_mapping: the build's recorded quantile map, fused with its `coarse_weight`
    (builds recorded before it: the fine score alone)."""
    from dns_jax.app.coarse_recipe import quantile_scores
    from dns_jax.app.query import Searcher
    from dns_jax.retrieval import FusedMapping

    s = Searcher.__new__(Searcher)                    # the mapping needs no work directory
    s.fine_spread, s.fine_quantiles = None, {"fine": [-1.0, 0.0, 1.0], "coarse": [0.1, 0.5, 0.7]}
    raw = np.array([-0.5, 0.2, 0.9], np.float32)
    s.coarse_weight = 0.0
    plain = s.fine_mapping()
    assert not isinstance(plain, FusedMapping)
    np.testing.assert_allclose(plain(raw), quantile_scores(raw, s.fine_quantiles))
    s.coarse_weight = 0.5
    fused = s.fine_mapping()
    assert isinstance(fused, FusedMapping) and fused.coarse_weight == 0.5
    np.testing.assert_allclose(fused(raw), quantile_scores(raw, s.fine_quantiles))
