"""The compressed coarse stage (faiss IVF-PQ) and its synthetic CG vectors.

Recall is measured against exact cosine top-k computed here with numpy; the
contract checks mirror ``CoarseDatabase.topk``.  Indexes are small (a few
thousand vectors) so that training stays within seconds.
"""
import json
import os
import sys

import numpy as np
import pytest

from dns_jax.retrieval.coarse import CoarseDatabase
from dns_jax.retrieval.synthetic import SyntheticCG
from dns_jax.validation import FeatureError

faiss = pytest.importorskip("faiss", reason="faiss is optional (pip install faiss-cpu)")

from dns_jax.retrieval.coarse_faiss import (  # noqa: E402  (after the skip)
    CoarseIndexMismatch,
    CompressedCoarseIndex,
    IVFPQParams,
    budget_count,
    fingerprint,
)

DATA = SyntheticCG(n=6000, dims=256, rank=64, topics=30)
SMALL = IVFPQParams(m=32, nbits=8, nlist=32, nprobe=8, transform="none")


@pytest.fixture(scope="module")
def vectors():
    return DATA.vectors()


@pytest.fixture(scope="module")
def index(vectors):
    return CompressedCoarseIndex.build(vectors, network="cg_student", params=SMALL,
                                       train_size=4000)


def _exact_topk(q, x, k):
    s = q @ x.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _recall(found, exact):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


# ---------------------------------------------------------------------------
# Synthetic CG vectors
# ---------------------------------------------------------------------------


def test_synthetic_vectors_are_deterministic_unit_and_chunkable():
    gen = SyntheticCG(n=70_000, dims=64, rank=16, topics=10)
    whole = gen.vectors(65_530, 65_546)  # crosses a generator block boundary
    parts = np.concatenate([gen.vectors(65_530, 65_536), gen.vectors(65_536, 65_546)])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
    assert gen.groups(65_530, 65_546).shape == (16,)
    other = SyntheticCG(n=70_000, dims=64, rank=16, topics=10, seed=1)
    assert not np.allclose(other.vectors(0, 4), gen.vectors(0, 4))


def test_synthetic_vectors_have_duplicate_and_topic_structure():
    stats = SyntheticCG(n=20_000).stats(sample=20_000)
    assert stats["group"] > 0.85 > 0.7 > stats["topic"] > 0.5 > stats["unrelated"] > 0.25, stats


# ---------------------------------------------------------------------------
# Recall, bytes, contract
# ---------------------------------------------------------------------------


def test_recall_of_exact_topk(index, vectors):
    q, _ = DATA.queries(60)
    exact = _exact_topk(q, vectors, 50)
    _, found = index.topk(q, 50)
    _, pool = index.topk(q, 500)
    assert _recall(found, exact) >= 0.6  # measured 0.78 (50 of 50) and 0.96 (50 in 500)
    assert _recall(pool, exact) >= 0.92
    index.nprobe = 1  # fewer lists scanned: recall must drop (the measure can fail)
    try:
        assert _recall(index.topk(q, 500)[1], exact) < _recall(pool, exact)
    finally:
        index.nprobe = SMALL.nprobe


def test_near_duplicates_come_first(index, vectors):
    """A query's group members (cosine ~0.9) are found in its top 20 (0.95 measured)."""
    q, groups = DATA.queries(40, seed=1)
    members = DATA.groups()
    _, found = index.topk(q, 20)
    hits = [np.isin(np.flatnonzero(members == g), f).mean() for g, f in zip(groups, found)
            if np.any(members == g)]
    assert np.mean(hits) >= 0.9


@pytest.mark.slow
def test_default_parameters_store_at_most_64_bytes_per_video(tmp_path):
    """Default m / nbits on 1024-d vectors; the saved file holds no more than counted."""
    # 1200 vectors: 1080 training rows after the held-out tenth, enough for OPQ on 1024-d and 256 centroids;
    # one OPQ round (the byte count does not depend on how well the rotation is trained)
    gen = SyntheticCG(n=1200, topics=10)
    params = IVFPQParams(nlist=16, opq_iterations=1)  # default m=56, nbits=8, OPQ to 896
    index = CompressedCoarseIndex.build(gen.vectors(), network="cg_student", params=params)
    assert index.bytes_per_video == 64 == 56 + 8
    index.save(tmp_path / "idx")
    size = os.path.getsize(tmp_path / "idx" / "index.faiss")
    assert index.n * index.bytes_per_video <= size <= index.n * index.bytes_per_video \
        + index.fixed_bytes + 64 * 1024


def test_topk_contract_matches_coarse_database(index, vectors):
    q, _ = DATA.queries(5, seed=2)
    exact = CoarseDatabase(vectors)
    for k in (1, 7, 300):
        s, i = index.topk(q, k)
        es, ei = exact.topk(q, k)
        assert s.shape == i.shape == es.shape == (5, k)
        assert s.dtype == es.dtype == np.float32 and i.dtype == ei.dtype == np.int64
        assert np.all(np.diff(s, axis=1) <= 0)
        assert np.all((i >= 0) & (i < index.n))
        assert all(len(set(row)) == k for row in i)
    s1, i1 = index.topk(q[0], 3)  # one [E] vector is one query, as in CoarseDatabase
    assert s1.shape == i1.shape == (1, 3)
    assert index.topk(q, 10**9)[1].shape == (5, index.n)  # k clipped to N
    with pytest.raises(ValueError, match="positive"):
        index.topk(q, 0)
    with pytest.raises(FeatureError, match="256-d"):
        index.topk(np.ones((2, 255), np.float32) / np.sqrt(255), 3)


def test_ties_are_ordered_by_index(vectors):
    """Identical vectors get identical codes and scores: lower index first."""
    x = vectors[:1000].copy()               # 900 training rows: enough for nlist 32 and 256 PQ centroids
    x[[100, 600, 900]] = x[50]
    idx = CompressedCoarseIndex.build(x, network="cg_student", params=SMALL)
    s, i = idx.topk(x[50], 4)
    assert s[0, 0] == s[0, 1] == s[0, 2] == s[0, 3]
    assert list(i[0]) == [50, 100, 600, 900]


def _private_copy(index, path):
    """The module's index through save and load (tests that change it must not change the shared one)."""
    index.save(path)
    return CompressedCoarseIndex.load(path)


def test_short_lists_are_searched_again(index, tmp_path):
    """nprobe=1 scans one list; asking for more than it holds still gives k valid ids."""
    assert index.nprobe == SMALL.nprobe != IVFPQParams().nprobe       # the build took the params' nprobe
    idx = _private_copy(index, tmp_path / "coarse")
    idx.nprobe = 1
    s, i = idx.topk(DATA.queries(3, seed=3)[0], 2000)
    assert i.shape == (3, 2000) and np.all(i >= 0) and np.all(np.isfinite(s))
    assert idx.nprobe == 1                  # the retries with more lists leave it as it was


def test_candidates_budget_fraction_or_count(index):
    q, _ = DATA.queries(2, seed=4)
    assert index.candidates(q, 0.01)[1].shape == (2, int(0.01 * index.n))
    assert index.candidates(q, 37)[1].shape == (2, 37)
    assert budget_count(10**9, 500) == 500 and budget_count(1.0, 500) == 500
    for bad, error in ((0, ValueError), (0.0, ValueError), (1.5, ValueError),
                       (1e-6, ValueError), (True, TypeError), ("10", TypeError)):
        with pytest.raises(error):
            budget_count(bad, 500)


# ---------------------------------------------------------------------------
# Persistence and mismatches
# ---------------------------------------------------------------------------


def test_save_load_round_trip(index, tmp_path):
    path = tmp_path / "coarse"
    index.save(path)
    assert sorted(os.listdir(path)) == ["header.json", "index.faiss"]
    assert os.listdir(tmp_path) == ["coarse"]  # no temporary directory left behind
    header = json.loads((path / "header.json").read_text())
    assert header["dims"] == 256 and header["network"] == "cg_student"
    assert header["faiss_version"] == faiss.__version__ and header["ntotal"] == index.n
    assert header["training_fingerprint"] == index.header["training_fingerprint"]
    back = CompressedCoarseIndex.load(path, dims=256, network="cg_student")
    q, _ = DATA.queries(4, seed=5)
    for a, b in zip(index.topk(q, 25), back.topk(q, 25)):
        np.testing.assert_array_equal(a, b)
    assert back.nprobe == index.nprobe and back.bytes_per_video == index.bytes_per_video
    with pytest.raises(FileExistsError, match="overwrite"):
        index.save(path)
    index.nprobe = 3
    try:
        index.save(path, overwrite=True)
    finally:
        index.nprobe = SMALL.nprobe
    assert CompressedCoarseIndex.load(path).nprobe == 3
    assert sorted(os.listdir(tmp_path)) == ["coarse"]


def test_load_refuses_another_dimension_network_or_training(index, tmp_path):
    path = tmp_path / "coarse"
    index.save(path)
    with pytest.raises(CoarseIndexMismatch, match=r"holds 256-d vectors; this network's CG "
                                                  r"vectors are 1024-d"):
        CompressedCoarseIndex.load(path, dims=1024)
    with pytest.raises(CoarseIndexMismatch, match="trained on vectors of network 'cg_student', "
                                                  "not 'cg_student_v2'"):
        CompressedCoarseIndex.load(path, network="cg_student_v2")
    with pytest.raises(CoarseIndexMismatch, match="trained on other vectors"):
        CompressedCoarseIndex.load(path, training_fingerprint=fingerprint(np.zeros((2, 256))))
    with pytest.raises(FileNotFoundError, match="not a compressed coarse index"):
        CompressedCoarseIndex.load(tmp_path)


def test_header_must_match_the_faiss_file(index, tmp_path):
    path = tmp_path / "coarse"
    index.save(path)
    header = json.loads((path / "header.json").read_text())
    (path / "header.json").write_text(json.dumps({**header, "dims": 512}))
    with pytest.raises(CoarseIndexMismatch, match="does not match its header.json"):
        CompressedCoarseIndex.load(path)
    (path / "header.json").write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(CoarseIndexMismatch, match="version 99"):
        CompressedCoarseIndex.load(path)


def test_vectors_of_another_network_are_refused(index, tmp_path):
    """Same dimension, other basis and mean: far from every centroid."""
    index = _private_copy(index, tmp_path / "coarse")
    other = SyntheticCG(n=6000, dims=256, rank=64, topics=30, seed=7)
    fresh = SyntheticCG(n=12000, dims=256, rank=64, topics=30).vectors(6000, 7000)
    before = index.n
    with pytest.raises(CoarseIndexMismatch, match=r"do not match the vectors this index was "
                                                  r"trained on \(network 'cg_student'\)"):
        index.add(other.vectors(0, 500))
    with pytest.raises(CoarseIndexMismatch, match="coarse queries do not match"):
        index.topk(other.queries(50)[0], 10)
    assert index.n == before
    index.add(fresh)  # control: more vectors of the same kind are accepted
    assert index.n == before + 1000


def test_vectors_must_be_unit_norm_and_finite(index):
    x = DATA.vectors(0, 10) * 2
    with pytest.raises(FeatureError, match="expected L2-normalised CG vectors; row 0 has norm 2"):
        index.add(x)
    x[:] = np.nan
    with pytest.raises(FeatureError, match="non-finite"):
        index.topk(x, 3)


def test_training_needs_enough_vectors_and_a_network():
    x = DATA.vectors(0, 200)
    with pytest.raises(ValueError, match="too few"):
        CompressedCoarseIndex.train(x, network="cg_student", params=SMALL)
    with pytest.raises(ValueError, match="network"):
        CompressedCoarseIndex.train(x, network="", params=SMALL)
    with pytest.raises(ValueError, match="multiple of m"):
        CompressedCoarseIndex.train(x, network="cg", params=IVFPQParams(m=48, transform="none"))
    with pytest.raises(ValueError, match="too few for OPQ on 256-d vectors"):
        CompressedCoarseIndex.train(DATA.vectors(0, 200), network="cg", params=IVFPQParams(m=32, nbits=6, nlist=4))
    with pytest.raises(ValueError, match="transform must be one of"):
        CompressedCoarseIndex.train(x, network="cg", params=IVFPQParams(transform="pca"))


def test_missing_faiss_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        CompressedCoarseIndex.train(DATA.vectors(0, 10), network="cg_student")
