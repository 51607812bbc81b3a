"""Streaming extraction: decoded frames go through the network batch by batch, never all at once."""
import weakref

import numpy as np
import pytest

from dns_jax.features import extract_video, load_video
from dns_jax.features import extractor as extractor_module
from helpers import tiny_extractor

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def tiny():
    return tiny_extractor(batch_size=3)


def _frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


@pytest.mark.parametrize("max_pending", [1, 2])
def test_stream_reads_frames_lazily(tiny, max_pending):
    frames = _frames(20)
    pulled = []

    def source():
        for i, f in enumerate(frames):
            pulled.append(i)
            yield f

    out, done = [], 0
    for batch in tiny.stream(source(), max_pending=max_pending):
        out.append(batch)
        done += len(batch)
        # frames read but whose features are not out yet: the pending batches and the one filling
        assert len(pulled) - done <= (max_pending + 1) * tiny.batch_size
    assert [len(b) for b in out] == [3] * 6 + [2]
    np.testing.assert_array_equal(np.concatenate(out), tiny(frames))


def test_stream_errors(tiny):
    assert list(tiny.stream(iter([]))) == []
    mixed = [np.zeros((224, 224, 3), np.uint8), np.zeros((224, 256, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"frame 1 has shape \(224, 256, 3\)"):
        list(tiny.stream(mixed))
    with pytest.raises(ValueError, match="max_pending"):
        list(tiny.stream(mixed, max_pending=0))


def _write_video(path, n, rate=10, size=(120, 160)):
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.height, s.width, s.pix_fmt = *size, "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_extract_video_equals_extractor_of_load_video(tiny, tmp_path):
    path = _write_video(tmp_path / "clip.mp4", n=75)  # 8 frames at 1 fps
    full = load_video(path)
    assert len(full) == 8
    np.testing.assert_array_equal(tiny.extract_video(path), tiny(full))
    np.testing.assert_array_equal(extract_video(tiny, path, fps=2), tiny(load_video(path, fps=2)))
    # any callable works, fed `batch_frames` frames at a time
    calls = []

    def mean_colour(frames):
        calls.append(len(frames))
        return frames.astype(np.float32).mean(axis=(1, 2))[:, None, :]

    np.testing.assert_array_equal(extract_video(mean_colour, path, batch_frames=3)[:, 0], mean_colour(full)[:, 0])
    assert calls[:3] == [3, 3, 2]


def test_long_video_is_never_held_whole(tiny, tmp_path, monkeypatch):
    """Through the CLI's path (`extract_to_hdf5`), a 'video' of 60 decoded frames is never held
    whole: at most a few batches of frames are alive at any time."""
    h5py = pytest.importorskip("h5py")
    from dns_jax.features.extract_folder import extract_to_hdf5

    alive, peak = [0], [0]

    def released(_):
        alive[0] -= 1

    def fake_iter_frames(path, **kwargs):
        for f in _frames(60, seed=2):
            f = f.copy()
            alive[0] += 1
            peak[0] = max(peak[0], alive[0])
            weakref.finalize(f, released, None)
            yield f

    monkeypatch.setattr(extractor_module, "iter_frames", fake_iter_frames)
    out = tmp_path / "feats.hdf5"
    s = extract_to_hdf5([("long", "long.mp4")], out, tiny, progress=False, log=lambda *_: None)
    assert (s.extracted, s.frames, s.failed) == (1, 60, [])
    assert peak[0] <= 2 * tiny.batch_size, peak[0]
    with h5py.File(out, "r") as h5:
        np.testing.assert_array_equal(h5["long"][:], tiny(_frames(60, seed=2)))
