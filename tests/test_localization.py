"""Copied-segment localization (dns_jax.localization) on constructed similarity matrices: each
method recovers known segments (one diagonal, speeds 0.8 / 1.25, two segments, noise, reversed
and looped copies), times map to seconds inside both videos, and bad input gets a clear error."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dns_jax.localization import (COARSE_ONLY, LocalizationError, Segment, cell_bounds, frame_times,
                                  localize, localize_batch)
from dns_jax.localization import dp, hough, temporal_network

METHODS = ("tn", "dp", "hough")


def background(tq, tt, seed=0, noise=0.05):
    return np.random.default_rng(seed).normal(0.0, noise, (tq, tt)).astype(np.float32)


def add_copy(s, q0, q1, t0, speed=1.0, value=0.8, reverse=False):
    """Query cells q0..q1-1 appear in the target from t0 on, played at `speed` (the target shows
    `speed` query seconds per second): cell q matches t0 + (q - q0) / speed, its neighbours a
    little. Returns the copy's box (q0, q1, t_first, t_last + 1) in cells."""
    ts = []
    for q in range(q0, q1):
        off = (q - q0) / speed
        t = int(np.floor(t0 - off + 0.5)) if reverse else int(np.floor(t0 + off + 0.5))
        s[q, t] = max(s[q, t], value)
        for n in (t - 1, t + 1):
            if 0 <= n < s.shape[1]:
                s[q, n] = max(s[q, n], 0.25)
        ts.append(t)
    return (q0, q1, min(ts), max(ts) + 1)


def seconds(box, tq=30, tt=40):
    """Cells -> seconds at 1 frame/s: frame i stands for [i - 1/2, i + 1/2), the first from 0,
    the last to the video's end (Tq, Tt s)."""
    q0, q1, t0, t1 = box
    edge = lambda i, n: 0.0 if i == 0 else (float(n) if i == n else i - 0.5)  # noqa: E731
    return (edge(q0, tq), edge(q1, tq), edge(t0, tt), edge(t1, tt))


def as_box(seg):
    return (seg.query_start, seg.query_end, seg.target_start, seg.target_end)


def close(seg, box, tol=1.0):
    return np.allclose(as_box(seg), seconds(box), atol=tol)


@pytest.mark.parametrize("method", METHODS)
def test_single_diagonal_exact(method):
    s = background(30, 40)
    box = add_copy(s, 5, 15, 12)
    segs = localize(s, method)
    assert len(segs) == 1
    assert as_box(segs[0]) == seconds(box)              # query 5-15 s ~ target 12-22 s
    assert segs[0].score == pytest.approx(0.8, abs=0.01) and not segs[0].reversed


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("speed", [0.8, 1.25])
def test_speed_changes(method, speed):
    s = background(30, 40, seed=1)
    box = add_copy(s, 6, 26, 10, speed=speed)           # 20 query s -> 25 or 16 target s
    segs = localize(s, method)
    assert len(segs) >= 1 and close(segs[0], box), (segs, box)
    # nothing else stands out
    assert all(seg.score < 0.6 for seg in segs[1:])


@pytest.mark.parametrize("method", METHODS)
def test_two_segments_in_swapped_order(method):
    s = background(30, 40, seed=2)
    a = add_copy(s, 2, 12, 28)
    b = add_copy(s, 16, 28, 4, value=0.7)
    segs = localize(s, method)
    assert len(segs) == 2
    assert close(segs[0], a) and close(segs[1], b)       # best (higher similarity) first


@pytest.mark.parametrize("method", METHODS)
def test_noise_alone_gives_nothing_and_a_noisy_copy_is_found(method):
    assert localize(background(30, 40, seed=3, noise=0.08), method) == []
    s = background(30, 40, seed=4, noise=0.08)
    box = add_copy(s, 8, 28, 5, value=0.65)
    s[rng_cells(s, 15)] = 0.5                            # scattered false matches
    segs = localize(s, method)
    assert len(segs) >= 1 and close(segs[0], box), (segs, box)


def rng_cells(s, n, seed=9):
    r = np.random.default_rng(seed)
    return r.integers(0, s.shape[0], n), r.integers(0, s.shape[1], n)


@pytest.mark.parametrize("method", METHODS)
def test_looped_copy_gives_one_segment_per_loop(method):
    s = background(30, 40, seed=5)                      # query rows 12.. match nothing
    first = add_copy(s, 1, 11, 3)
    second = add_copy(s, 1, 11, 25)
    segs = sorted(localize(s, method), key=lambda g: g.target_start)
    assert len(segs) == 2 and close(segs[0], first, 0) and close(segs[1], second, 0)


@pytest.mark.parametrize("method", METHODS)
def test_a_target_moment_copies_one_query_moment(method):
    s = background(30, 40, seed=8)
    box = add_copy(s, 0, 10, 10)
    s[20:26, 15:20] = 0.5            # a static query stretch that looks like part of the copy
    segs = localize(s, method)
    assert len(segs) == 1 and close(segs[0], box, 0)
    both = localize(s, method, max_overlap=1.0)
    assert len(both) >= 2 and all(g.target_start >= 14.5 and g.query_start >= 19.5 for g in both[1:])


def test_batches_are_split_into_chunks():
    from dns_jax.localization.api import _run
    mats = []
    for k in range(3):
        s = background(30, 40, seed=20 + k)
        add_copy(s, k, k + 10, 2 * k)
        mats.append(s)
    chunked = _run("tn", mats, 0.3, 5, {}, chunk=2)
    whole = _run("tn", mats, 0.3, 5, {})
    assert [[tuple(b) for b, _ in r] for r in chunked] == [[tuple(b) for b, _ in r] for r in whole]
    assert [[tuple(b) for b, _ in r] for r in whole] == [[(k, k + 10, 2 * k, 2 * k + 10)] for k in range(3)]


@pytest.mark.parametrize("method", METHODS)
def test_reversed_copy_needs_reverse(method):
    s = background(30, 40, seed=6)
    box = add_copy(s, 4, 16, 30, reverse=True)          # target 30, 29, ..., 19
    assert all(g.query_duration < 4 for g in localize(s, method))
    segs = localize(s, method, reverse=True)
    assert len(segs) == 1 and segs[0].reversed and close(segs[0], box, 0)


def test_methods_are_pure_jittable_functions():
    # traceable end to end (no Python control flow on values); the API runs them as jit(vmap(.))
    s = jnp.asarray(background(30, 40, seed=7))
    for fn in (temporal_network.candidates, dp.candidates, hough.candidates):
        out = jax.eval_shape(lambda x: fn(x, threshold=0.5, max_segments=3), s)
        assert [o.shape for o in out] == [(3, 4), (3,), (3,)]
        assert "while" in str(jax.make_jaxpr(lambda x: fn(x, threshold=0.5, max_segments=3))(s))


def test_batch_equals_one_at_a_time():
    mats = []
    for k, (tq, tt) in enumerate([(25, 33), (30, 40), (32, 47)]):   # one padding bucket
        s = background(tq, tt, seed=10 + k)
        add_copy(s, 1, min(tq, tt) - 10, 2, speed=1.25 if k == 1 else 1.0)
        mats.append(s)
    for method in METHODS:
        batch = localize_batch(mats, method)
        single = [localize(s, method) for s in mats]
        assert [len(b) for b in batch] == [len(x) for x in single] and all(len(x) for x in single)
        for b, x in zip(batch, single):
            for gb, gx in zip(b, x):
                assert as_box(gb) == as_box(gx) and gb.score == pytest.approx(gx.score, abs=1e-6)


# -- times ----------------------------------------------------------------------------------

def test_true_timestamps_and_durations():
    s = background(30, 40, seed=11)
    add_copy(s, 22, 30, 32)                              # to the end of both videos
    qt = frame_times(30, 30 / 29.97)                     # one frame in 30 of a 29.97 fps video
    tt = frame_times(40, 1.0, start=0.2)
    kw = dict(query_times=qt, target_times=tt, query_duration=30.05, target_duration=40.1)
    seg = localize(s, "tn", **kw)[0]
    # the copy starts between the last frame outside it and the first inside: the midpoint
    assert seg.query_start == pytest.approx(21.5 * 30 / 29.97) and seg.query_end == pytest.approx(30.05)
    assert seg.target_start == pytest.approx(31.7) and seg.target_end == pytest.approx(40.1)
    seg = localize(s, "tn", anchor="start", **kw)[0]
    assert seg.query_start == pytest.approx(22 * 30 / 29.97) and seg.target_start == pytest.approx(32.2)
    assert seg.query_end == pytest.approx(30.05) and seg.target_end == pytest.approx(40.1)


def test_segments_stay_inside_short_videos():
    s = background(30, 40, seed=12)
    add_copy(s, 20, 30, 30)
    # durations shorter than the last frame's default end: clipped
    seg = localize(s, "dp", query_duration=29.4, target_duration=39.5)[0]
    assert seg.query_end == pytest.approx(29.4) and seg.target_end == pytest.approx(39.5)


def test_repeated_short_video_is_folded_onto_its_real_frames():
    # a 2-frame query concatenated with itself to the networks' 4-frame minimum
    s = background(4, 12, seed=13)
    s[[0, 2], 5] = 0.9
    s[[1, 3], 6] = 0.9
    segs = localize(s, "tn", query_times=[0.0, 1.0], query_duration=1.6)
    assert len(segs) == 1 and as_box(segs[0]) == (0.0, 1.6, 4.5, 6.5)
    with pytest.raises(LocalizationError, match="3 frame times for 4"):
        localize(s, "tn", query_times=[0.0, 1.0, 2.0])


def test_pooled_comparator_output_with_factor_4():
    s = background(5, 8, seed=14)                        # from 22 x 33 frames
    add_copy(s, 1, 4, 3)
    segs = localize(s, "tn", factor=4, query_times=frame_times(22), target_times=frame_times(33))
    # cell i holds frames 4i..4i+3: [4i - 1/2, 4i + 7/2)
    assert as_box(segs[0]) == (3.5, 15.5, 11.5, 23.5)
    bounds = cell_bounds(frame_times(22), duration=22.0, factor=4)
    np.testing.assert_allclose(bounds[[0, -1]], [[0.0, 3.5], [15.5, 19.5]])  # frames 20-21 fall off
    bounds = cell_bounds(frame_times(22), duration=22.0, factor=4, anchor="start")
    np.testing.assert_allclose(bounds[[0, -1]], [[0.0, 4.0], [16.0, 20.0]])


# -- bad input ------------------------------------------------------------------------------

def test_coarse_only_result_gets_a_clear_message():
    with pytest.raises(LocalizationError) as e:
        localize(None)
    assert str(e.value) == COARSE_ONLY and "coarse stage" in str(e.value)
    with pytest.raises(LocalizationError, match="video-level score"):
        localize(np.float32(0.7))
    with pytest.raises(LocalizationError, match="video-level score"):
        localize(np.ones(5))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_matrix(shape):
    with pytest.raises(LocalizationError, match="empty similarity matrix"):
        localize(np.zeros(shape))


@pytest.mark.parametrize("method", METHODS)
def test_one_frame_videos(method):
    row = background(1, 15, seed=15)
    row[0, 6] = 0.9
    seg = localize(row, method, min_length=1)
    assert [as_box(g) for g in seg] == [(0.0, 1.0, 5.5, 6.5)]
    col = background(15, 1, seed=16)
    col[9, 0] = 0.9
    assert [as_box(g) for g in localize(col, method, min_length=1)] == [(8.5, 9.5, 0.0, 1.0)]
    assert localize(np.array([[0.95]]), method, min_length=1)[0].score == pytest.approx(0.95)
    assert localize(row, method) == []                   # shorter than the default 2 cells


@pytest.mark.parametrize("method", METHODS)
def test_nan_cells_are_non_matching(method):
    s = background(16, 16, seed=17)
    box = add_copy(s, 2, 12, 3)
    s[12:, 12:] = np.nan
    s[7, 8] = np.nan                                     # inside the copy
    with pytest.warns(RuntimeWarning, match="17 of 256 similarity cells are NaN"):
        segs = localize(s, method)
    assert close(segs[0], box)
    with pytest.raises(LocalizationError, match="every cell"):
        localize(np.full((3, 3), np.nan), method)


def test_bad_settings_and_times():
    s = background(5, 5)
    with pytest.raises(LocalizationError, match="unknown method"):
        localize(s, "dtw")
    with pytest.raises(LocalizationError, match="no option"):
        localize(s, "dp", top_k=3)
    with pytest.raises(LocalizationError, match="strictly increasing"):
        localize(s, query_times=[0, 1, 1, 2, 3])
    with pytest.raises(LocalizationError, match="threshold"):
        localize(s, threshold=float("nan"))
    with pytest.raises(LocalizationError, match="one \\[query frames"):
        localize(np.zeros((2, 3, 4)))


def test_batch_warns_and_keeps_going():
    good = background(10, 10)
    add_copy(good, 0, 8, 1)
    with pytest.warns(RuntimeWarning) as rec:
        out = localize_batch([good, None, np.zeros((0, 3))], "tn")
    messages = [str(w.message) for w in rec]
    assert "pair 1: not localized" in messages[0] and "coarse stage" in messages[0]
    assert "pair 2: not localized: empty similarity matrix" in messages[1]
    assert len(out) == 3 and len(out[0]) == 1 and out[1] == [] == out[2]
    with pytest.raises(LocalizationError):
        localize_batch([good, None], "tn", errors="raise")


def test_segment_str():
    seg = Segment(3.0, 9.0, 12.0, 18.0, 0.71)
    assert str(seg) == "query 3-9s ~ target 12-18s (0.71)"


@pytest.mark.parametrize("method", ["tn", "dp", "hough"])
def test_speed_two_ends_and_one_frame_copies(method):
    """At 2x speed two query frames share each target frame: a path moving on both axes leaves the
    last query frame out, which growing the longer side's ends puts back (exact box); a copy held
    by a single target frame (a 3-s excerpt at 2x, 1 frame/s) is kept, its longer side being 3."""
    sim = np.full((8, 20), 0.05, np.float32)
    sim[np.arange(8), 6 + np.arange(8) // 2] = 0.9
    (seg,) = localize(sim, method, anchor="start")
    assert (seg.query_start, seg.query_end, seg.target_start, seg.target_end) == (0, 8, 6, 10)
    assert localize(sim, method, anchor="start", grow=0)[0].query_end < 8 or method == "hough"
    one = np.full((6, 12), 0.05, np.float32)
    one[1:4, 5] = 0.9
    (seg,) = localize(one, method, anchor="start")
    assert (seg.query_start, seg.query_end, seg.target_start, seg.target_end) == (1, 4, 5, 6)
    assert localize(one, method, anchor="start", min_length=4) == []
