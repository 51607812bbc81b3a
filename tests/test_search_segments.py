"""Search results with their copied segments: `DnS.search(segments=K)` and `search_index` localize
the top results on the frame-to-frame matrices their fine stage computed (FrameMatrices), mark the
results the budget left to the coarse stage, and keep every segment inside both videos."""
import numpy as np
import pytest

from dns_jax.index.search import search_index
from dns_jax.localization import COARSE_ONLY, NotLocalized, localize, relative_threshold
from dns_jax.retrieval import DnS, Representations, localize_results, scorer_for, stored_frames
from helpers import network

DIMS = 512


def _videos(seed, lengths):
    rng = np.random.default_rng(seed)
    out = []
    for t in lengths:
        x = rng.standard_normal((t, 9, DIMS)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
    return out


@pytest.fixture(scope="module")
def nets():
    return network("fg_att_student")[1], network("cg_student")[1], network("selector")[1]


@pytest.fixture(scope="module")
def collection(nets):
    """10 random videos; video 3 (40 frames) holds query 0's 20 frames at 12-32 s; video 7 is 2
    frames long (indexed repeated to 4); query 1 is 1 frame long, a copy of video 5's frame 4."""
    db = _videos(0, [30, 25, 18, 40, 22, 12, 35, 2, 28, 16])
    q0 = db[3][12:32].copy()
    q1 = db[5][4:5].copy()
    dns = DnS(*nets)
    return dns, dns.index(db, [f"v{i}" for i in range(len(db))]), dns.index([q0, q1], ["q0", "q1"]), db


def test_frame_matrices_are_the_fine_students_matrices(nets):
    """The matrix kept by the fine stage equals `frame_to_frame_similarity` of the pair, for short
    (repeated) videos and a target scored by 2048-frame chunks."""
    fg = nets[0]
    scorer = scorer_for(fg)
    q = scorer.index(_videos(1, [7, 2]))
    t = scorer.index(_videos(2, [5, 1, 2100, 40]))
    plain = scorer.similarities(q, t)
    sims, kept = scorer.similarities(q, t, frame_matrices=True)
    np.testing.assert_array_equal(sims, plain)
    for i in range(2):
        for j in range(4):
            want = np.asarray(fg.frame_to_frame_similarity(q[i], t[j]))
            np.testing.assert_allclose(kept.matrix(i, j), want, atol=1e-6)
    for i in range(2):      # the same matrices for pairs a search did not score, in one call
        for j, m in enumerate(scorer.frame_matrices(q[i], t)):
            np.testing.assert_allclose(m, kept.matrix(i, j), atol=1e-6)
    resident = scorer.resident(t)
    _, sub = scorer.similarities(q, resident.subset([2, 0]), frame_matrices=True)
    np.testing.assert_allclose(sub.matrix(0, 1), kept.matrix(0, 0), atol=1e-6)
    assert (0, 1) in sub and (0, 2) not in sub
    with pytest.raises(KeyError, match="no frame-to-frame matrix"):
        sub.matrix(0, 2)


def test_dns_results_carry_their_segments(collection):
    dns, database, queries, db = collection
    full = dns.search(queries, database, budget=1.0, topk=10, segments=2)
    assert full.ranking[0, 0] == 3 and full.reranked[0, 0]
    (seg, *_) = full.segments[0][0]
    assert (seg.query_start, seg.query_end, seg.target_start, seg.target_end) == (0, 20, 12, 32)
    assert full.ranking[1, 0] == 5
    (seg, *_) = full.segments[1][0]
    assert (seg.query_start, seg.query_end, seg.target_start, seg.target_end) == (0, 1, 4, 5)

    res = dns.search(queries, database, budget=3, topk=10, segments=10)
    assert len(res.segments) == 2 and all(len(row) == 10 for row in res.segments)
    marked = 0
    for q, row in enumerate(res.segments):
        for r, segs in enumerate(row):
            j = res.ranking[q, r]
            if not res.reranked[q, r]:          # the budget (3 videos) left it to the coarse stage
                assert isinstance(segs, NotLocalized) and segs.reason == COARSE_ONLY and not list(segs)
                marked += 1
                continue
            assert isinstance(segs, list)
            for s in segs:
                assert 0 <= s.query_start < s.query_end <= (20, 1)[q]
                assert 0 <= s.target_start < s.target_end <= len(db[j]), (j, str(s))
    assert marked == 2 * (10 - 3)
    assert "localize_s_per_query" in res.timings
    # the same ranking and scores as a search without segments
    plain = dns.search(queries, database, budget=3, topk=10)
    np.testing.assert_array_equal(plain.ranking, res.ranking)
    np.testing.assert_array_equal(plain.scores, res.scores)
    assert plain.segments is None


def test_segments_of_a_repeated_short_video_stay_inside_it(collection):
    """Video 7 has 2 frames (indexed as 4): its segments end by 2 s on its side."""
    dns, database, _, db = collection
    queries = dns.index([db[7]], ["q7"])
    res = dns.search(queries, database, budget=1.0, topk=None, segments=10)
    segs = res.segments[0][list(res.ranking[0]).index(7)]
    assert segs and all(s.query_end <= 2 and s.target_end <= 2 for s in segs), [str(s) for s in segs]
    assert all(s.query_end <= 2 for row in res.segments for found in row for s in found)
    assert stored_frames(database.fine_rep(7)) == 2 and stored_frames(database.fine_rep(3)) == 40


def test_search_index_stages(collection, tmp_path, nets):
    from dns_jax.index.store import Index
    dns, database, queries, db = collection
    index = Index.create(str(tmp_path / "index"), *nets, fine_kind="float32", fine_dims=DIMS)
    index.add(database.ids, database.fine, database.coarse, database.selfsim)
    coarse = search_index(dns, index, queries, "coarse", topk=5, segments=3)
    assert all(isinstance(s, NotLocalized) and s.reason == COARSE_ONLY for row in coarse.segments for s in row)
    fine = search_index(dns, index, queries, "fine", topk=5, segments=2)
    assert fine.ranking[0, 0] == 3
    fg = nets[0]
    want = localize(np.asarray(fg.frame_to_frame_similarity(queries.fine_rep(0), database.fine_rep(3))),
                    "tn", threshold="relative", anchor="start")
    assert [str(s) for s in fine.segments[0][0]] == [str(s) for s in want]
    dns_res = search_index(dns, index, queries, "dns", budget=1.0, topk=5, segments=2)
    assert [str(s) for s in dns_res.segments[0][0]] == [str(s) for s in want]


def test_localize_results_marks_missing_matrices():
    ranking = np.array([[0, 1]])
    f2f = np.full((5, 6), 0.05, np.float32)
    np.fill_diagonal(f2f[:, 1:], 0.9)
    out = localize_results(ranking, 2, lambda q, j: f2f if j == 0 else None, [5], lambda j: 6)
    assert [(s.query_start, s.query_end, s.target_start, s.target_end) for s in out[0][0]] == [(0, 5, 1, 6)]
    assert isinstance(out[0][1], NotLocalized) and "coarse stage only" in str(out[0][1])
    # bad matrices: a reason each, never a crash; NaN cells do not match
    bad = {0: np.zeros((0, 6), np.float32), 1: np.full((5, 6), np.nan, np.float32)}
    nan = f2f.copy()
    nan[2, 3] = np.nan
    bad[2] = nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        out = localize_results(np.array([[0, 1, 2]]), 3, lambda q, j: bad[j], [5], lambda j: 6)
    assert isinstance(out[0][0], NotLocalized) and "empty" in out[0][0].reason
    assert isinstance(out[0][1], NotLocalized) and "NaN" in out[0][1].reason
    assert out[0][2] and all(s.query_end <= 5 and s.target_end <= 6 for s in out[0][2])


def test_relative_threshold():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.1, 0.02, (30, 40)).astype(np.float32)
    assert relative_threshold(noise) is None
    assert localize(noise, threshold="relative") == []
    copy = noise.copy()
    copy[np.arange(10), np.arange(5, 15)] = 0.8
    thr = relative_threshold(copy)
    assert 0.4 < thr < 0.5
    (s,) = localize(copy, threshold="relative", anchor="start")
    assert (s.query_start, s.query_end, s.target_start, s.target_end) == (0, 10, 5, 15)
    assert relative_threshold(np.full((3, 3), np.nan)) is None
    with pytest.raises(ValueError, match="threshold"):
        localize(copy, threshold="auto")


def test_representations_without_fine_stage_are_marked(collection):
    """budget 0: nothing re-ranked, every result is marked, nothing crashes."""
    dns, database, queries, _ = collection
    res = dns.search(queries, database, budget=0, topk=4, segments=4)
    assert all(isinstance(s, NotLocalized) for row in res.segments for s in row)
    assert isinstance(database, Representations)
