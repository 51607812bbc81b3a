"""Video decoding: OpenCV-identical bicubic resize + crop, official frame sampling, clear errors."""
import pathlib

import numpy as np
import pytest

from dns_jax.features.video import VideoError, frame_step, load_video, resize_crop

DATA = pathlib.Path(__file__).parent / "data" / "features"


@pytest.mark.parametrize("case", ["up_default", "down_portrait", "up_odd"])
def test_resize_crop_matches_opencv(case):
    z = np.load(DATA / "resize_cv2.npz")
    rs, cc = z[f"{case}/sizes"]
    np.testing.assert_array_equal(resize_crop(z[f"{case}/input"], int(rs), int(cc)), z[f"{case}/output"])


def test_resize_crop_edge_cases():
    flat = np.full((30, 50, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_crop(flat, 40, 32), np.full((32, 32, 3), 77, np.uint8))
    assert resize_crop(flat, None, 20).shape == (20, 20, 3)
    assert resize_crop(flat, 40, None).shape == (40, 67, 3)  # round(50 * 40 / 30)


def test_frame_step_official_rule():
    assert frame_step(30) == 30 and frame_step(29.97) == 30 and frame_step(23.976) == 24
    assert frame_step(30, fps=2) == 15 and frame_step(12.5) == 12  # Python's round, as the official code
    assert frame_step(0) == frame_step(None) == frame_step(240) == 25  # missing / above 144 -> 25 fps
    assert frame_step(0.4) == 1


def _write_video(path, n=30, rate=10, size=(96, 128), codec="mpeg4"):
    """n frames whose red and blue levels are 8 * i, green the complement; `rate` frames per second
    (colours kept inside the YUV gamut so that the codec returns them closely)."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            img = np.zeros((*size, 3), np.uint8)
            img[..., 0] = img[..., 2] = 8 * i
            img[..., 1] = 255 - 8 * i
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("ext", ["mp4", "avi", "mkv"])
def test_load_video_samples_one_frame_per_second(tmp_path, ext):
    path = _write_video(tmp_path / f"clip.{ext}")
    v = load_video(path)
    assert v.dtype == np.uint8 and v.shape == (3, 224, 224, 3)
    # frames 0, 10, 20 of a 10 fps clip; lossy codec, so compare levels loosely
    np.testing.assert_allclose(v[:, 112, 112, 0], [0, 80, 160], atol=4)
    np.testing.assert_allclose(v[:, 112, 112, 1], [255, 175, 95], atol=4)
    assert load_video(path, fps=2).shape[0] == 6
    assert load_video(path, all_frames=True, rs_size=None, cc_size=None).shape == (30, 96, 128, 3)
    assert load_video(str(path), rs_size=64, cc_size=None).shape == (3, 64, 85, 3)


def test_load_video_errors(tmp_path):
    av = pytest.importorskip("av")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match="cannot open video .*garbage.mp4"):
        load_video(garbage)
    empty = tmp_path / "empty.avi"
    with av.open(str(empty), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height, s.width, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    with pytest.raises(VideoError, match="no frames could be decoded from .*empty.avi"):
        load_video(empty)
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(VideoError, match="no video stream in .*audio.wav"):
        load_video(audio)
