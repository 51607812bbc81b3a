"""Re-ranking at prepared speed and absolute budgets: a resident (device-kept) fine database scores
any subset with the same numbers, bit for bit, as the same videos given as arrays; DnS.search
gathers its selected videos from it; a budget is a fraction (float) or a number of videos (int)."""
import dataclasses
import json
import shutil

import h5py
import numpy as np
import pytest
from helpers import network

from dns_jax import retrieval
from dns_jax.commands.common import budget_value
from dns_jax.index import Index, build_index, search_index
from dns_jax.index.search import check_search_options
from dns_jax.retrieval.dns import budget_count
from dns_jax.retrieval.fine import FineScorer, ResidentDatabase, ScorerOptions
from dns_jax.retrieval.kernels import canvas_similarity

# several canvases of 16 dense frames, f2f blocks of a few frames
SMALL = ScorerOptions(max_cols=16, max_rows=32, block_bytes=1 << 12)


def test_budget_count_fraction_or_number():
    assert budget_count(0.05, 1000) == 50 and budget_count(0.4, 5) == 2
    assert budget_count(1.0, 7) == 7 and budget_count(1, 7) == 1          # 1.0: all; 1: one video
    assert budget_count(1000, 7) == 7 and budget_count(3, 7) == 3          # a number, at most N
    assert budget_count(0, 7) == 0 and budget_count(0.0, 7) == 0
    assert budget_count(np.int64(2), 7) == 2 and budget_count(np.float32(0.5), 7) == 3
    for bad in (1.5, -0.1, -1, float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match="budget"):
            budget_count(bad, 7)
    for bad in (1.5, -1, True):
        with pytest.raises(ValueError, match="budget"):
            check_search_options("dns", bad, 10)
    check_search_options("dns", 1000, 10)


def test_selection_and_rerank_with_a_number_of_videos():
    rng = np.random.default_rng(0)
    coarse, fine, sel = (rng.random((3, 40)) for _ in range(3))
    np.testing.assert_array_equal(retrieval.selection(sel, 6), retrieval.selection(sel, 0.15))   # 6 of 40
    np.testing.assert_array_equal(retrieval.rerank(coarse, fine, sel, 6), retrieval.rerank(coarse, fine, sel, 0.15))
    assert retrieval.selection(sel, 100).shape == (3, 40)
    mask = np.arange(40) % 2 == 0                                   # 20 available: 5 videos = 0.25
    np.testing.assert_array_equal(retrieval.rerank(coarse, fine, sel, 5, mask=mask),
                                  retrieval.rerank(coarse, fine, sel, 0.25, mask=mask))
    assert not np.array_equal(retrieval.rerank(coarse, fine, sel, 1), retrieval.rerank(coarse, fine, sel, 1.0))


def test_budget_flag():
    assert budget_value("1000") == 1000 and isinstance(budget_value("1000"), int)
    assert budget_value("0.05") == 0.05 and budget_value("5%") == 0.05 and budget_value("1.0") == 1.0
    for bad in ("1.5", "-3", "x", "150%"):
        with pytest.raises(ValueError, match="budget"):
            budget_value(bad)


def _reps(scorer, rng, lengths):
    vids = []
    for t in lengths:
        x = rng.standard_normal((int(t), 9, 512)).astype(np.float32)
        vids.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
    return scorer.index(vids)


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student"])
def test_resident_subset_equals_arrays_bit_for_bit(name):
    """Short (repeated to 4 frames), ordinary and > 2048-frame (chunked) targets, any order, with
    repeats: the same similarities as the arrays themselves (bit for bit from one part; split over
    two parts (devices) the canvases differ, so to float rounding), and the official numbers of the
    reference fixtures."""
    ref, net = network(name)
    sc = FineScorer(net, options=SMALL)
    rng = np.random.default_rng(1)
    reps = sc.index(ref.videos("d")) + _reps(sc, rng, [1, 3, 2100, 9, 30])
    queries = sc.index(ref.videos("q"))
    cpu = sc.devices[0]
    for devices in (None, [cpu, cpu]):
        res = sc.resident(reps, devices=devices)
        assert isinstance(res, ResidentDatabase) and len(res.parts) == (1 if devices is None else 2)
        for idx in ([0, 1, 2], [7, 3, 0, 5, 4], [6, 6, 1], list(range(len(reps)))[::-1]):
            got = sc.similarities(queries, res.subset(idx))
            want = sc.similarities(queries, [reps[i] for i in idx])
            if devices is None:              # one part: the very canvases of the arrays
                np.testing.assert_array_equal(got, want)
            else:                            # canvases split by part: other sizes, float rounding
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
        np.testing.assert_allclose(sc.similarities(queries, res.subset([0, 1, 2])), ref.out["sim_unbatched"],
                                   atol=1e-5)
    with pytest.raises(IndexError, match="out of range"):
        sc.similarities(queries, res.subset([len(reps)]))


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    ref = network("selector")[0]
    vids = ref.videos("q") + ref.videos("d")
    rng = np.random.default_rng(5)
    path = str(tmp_path_factory.mktemp("feats") / "f.hdf5")
    with h5py.File(path, "w") as f:
        for i, v in enumerate(vids):
            f[f"v{i}"] = v
        for i in range(7):
            x = rng.standard_normal((int(rng.integers(2, 40)), 9, 512)).astype(np.float32)
            f[f"r{i}"] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    nets = network("fg_bin_student")[1], network("cg_student")[1], network("selector")[1]
    d = str(tmp_path_factory.mktemp("idx") / "idx")
    build_index(d, [path], *nets, shard_size=4, progress=False, log=lambda m: None)
    return d, path, nets


def test_dns_search_gathers_from_the_resident_index(index_dir, tmp_path):
    """DnS.search with a resident copy == without (bit for bit), for fractions and numbers of
    videos; the copy is built once and rebuilt when the index changes."""
    d, path, nets = index_dir
    index = Index.open(d)
    queries = index.representations(["v0", "r3"])
    kept = retrieval.DnS(*nets, resident=True)
    host = retrieval.DnS(*nets, resident=False)
    auto = retrieval.DnS(*nets)
    for budget in (0.5, 5, 1.0, 1000):
        a = search_index(kept, index, queries, "dns", budget, topk=None)
        b = search_index(host, index, queries, "dns", budget, topk=None)
        c = search_index(auto, index, queries, "dns", budget, topk=None)
        np.testing.assert_array_equal(a.ranking, b.ranking)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(c.scores, b.scores)
        assert a.reranked.sum(1).tolist() == [retrieval.budget_count(budget, len(index))] * 2
    assert host.fine_database(index) is None
    assert auto.fine_database(index) is not None                         # small: kept resident by default
    first = kept.fine_database(index)
    assert kept.fine_database(index) is first
    # the index changes: the resident copy follows
    copy = str(tmp_path / "copy")
    shutil.copytree(d, copy)
    writer = Index.open(copy, writable=True)
    before = kept.fine_database(writer)
    writer.remove(["v1", "r0"])
    after = kept.fine_database(writer)
    assert after is not before and len(after) == len(writer) == len(index) - 2
    a = search_index(kept, writer, queries, "dns", 0.5, topk=None)
    b = search_index(host, writer, queries, "dns", 0.5, topk=None)
    np.testing.assert_array_equal(a.scores, b.scores)
    writer.close()


def test_retrieve_command_takes_a_number_of_videos(index_dir, tmp_path):
    from dns_jax import checkpoint, cli
    d, _, nets = index_dir
    flags = []
    for role, net in zip(("fine", "coarse", "selector"), nets):
        path = str(tmp_path / role)
        checkpoint.save_network(path, net.name, net.config, net.variables)
        flags += [f"--{role}", path]
    out = str(tmp_path / "res.json")
    assert cli.main(["retrieve", "--index", d, "--query-ids", "v0", "--budget", "3", "--top", "0", "--output", out,
                     "--quiet"] + flags) == 0
    rows = json.load(open(out))["v0"]
    assert len(rows) == len(Index.open(d)) and sum(r["reranked"] for r in rows) == 3


def test_partial_canvas_widths_are_bucketed():
    """A subset laid out on several canvases gets its partly filled canvas widened to a multiple of
    `width_step` (ScorerOptions): a query whose partial canvas has another width than the warm-up's
    compiles nothing new and scores bit for bit as with the fine widths (width_step=0), whose
    layout does meet a new width (a compile per query at FIVR size, docs/scaling.md); after
    `warm_up`, no subset compiles."""
    ref, net = network("fg_bin_student")
    opts = ScorerOptions(max_cols=256, max_rows=32, width_step=128)
    sc = FineScorer(net, options=opts)
    fine = FineScorer(net, options=dataclasses.replace(opts, width_step=0))
    rng = np.random.default_rng(3)
    reps = _reps(sc, rng, rng.integers(8, 60, 40))
    res = sc.resident(reps)
    queries = sc.index(ref.videos("q"))

    def widths(scorer, idx):
        return sorted((c.size, c.dense_size) for c in scorer.prepare(res.subset(idx)).canvases)

    a, b = list(range(0, 14)), list(range(14, 26))
    wa, wb = widths(sc, a), widths(sc, b)
    assert len(wa) > 1 and len(wb) > 1                                  # several canvases each
    assert set(wa) | set(wb) <= {(256, 256), (128, 128)}                # full, or a bucket
    assert set(widths(fine, b)) - set(widths(fine, a))                  # the fine widths differ
    sc.similarities(queries, res.subset(a))                             # warm-up
    compiled = canvas_similarity._cache_size()
    got = sc.similarities(queries, res.subset(b))
    assert canvas_similarity._cache_size() == compiled                  # nothing new compiled
    fine.similarities(queries, res.subset(a))
    compiled = canvas_similarity._cache_size()
    np.testing.assert_array_equal(got, fine.similarities(queries, res.subset(b)))
    assert canvas_similarity._cache_size() > compiled                   # the fine widths: a new one
    np.testing.assert_array_equal(got, sc.similarities(queries, [reps[i] for i in b]))

    other = FineScorer(net, options=dataclasses.replace(opts, width_step=64))
    other.warm_up(queries, res)                                         # every bucket: 64, 128, 192, 256
    compiled = canvas_similarity._cache_size()
    subsets = (a, b, list(range(26, 40)), list(range(3, 40, 2)), list(range(0, 40, 3)))
    assert len({w for idx in subsets for w in widths(other, idx)} - {(256, 256)}) >= 2   # several buckets met
    scores = [other.similarities(queries, res.subset(idx)) for idx in subsets]
    assert canvas_similarity._cache_size() == compiled                  # nothing compiled after the warm-up
    for idx, g in zip(subsets, scores):
        np.testing.assert_array_equal(g, fine.similarities(queries, res.subset(idx)))
