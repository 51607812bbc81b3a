"""Video decoding: OpenCV-identical bicubic resize + crop, official frame sampling, clear errors."""
import pathlib

import numpy as np
import pytest

from media import write_audio

from dns_jax.features.video import VideoError, frame_step, iter_frames, load_video, resize_crop

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


def _write_video(path, n=30, rate=10, size=(96, 128), codec="mpeg4", options=None, noise=False):
    """n frames whose red and blue levels are 8 * i, green the complement; `rate` frames per second
    (colours kept inside the YUV gamut so that the codec returns them closely). `noise` adds
    random texture, so that every frame takes a similar share of the file."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            if noise:
                img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            else:
                img = np.zeros((*size, 3), np.uint8)
                img[..., 0] = img[..., 2] = 8 * i
                img[..., 1] = 255 - 8 * i
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a complete file must not look truncated
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


def _bad_file(tmp_path, kind):
    """A path that is no usable video, and the error message expected for it."""
    if kind == "missing":
        return tmp_path / "missing.mp4", FileNotFoundError, "video not found"
    if kind == "directory":
        (tmp_path / "clips.mp4").mkdir()
        return tmp_path / "clips.mp4", VideoError, "not a video file but a directory"
    if kind == "zero_length":
        (tmp_path / "zero.mp4").touch()
        return tmp_path / "zero.mp4", VideoError, r"empty video file \(0 bytes\)"
    if kind == "garbage":
        path = tmp_path / "garbage.avi"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return path, VideoError, "cannot open video"
    if kind == "truncated_mp4":  # the index (moov) is written last: a cut file has none
        full = _write_video(tmp_path / "full.mp4", n=40, noise=True).read_bytes()
        path = tmp_path / "cut.mp4"
        path.write_bytes(full[: len(full) // 2])
        return path, VideoError, "cannot open video"
    if kind == "audio_aac":
        return write_audio(tmp_path / "song.m4a", "aac"), VideoError, r"no video stream in .* \(it has: audio\)"
    if kind == "audio_mp2":
        return write_audio(tmp_path / "song.mka", "mp2"), VideoError, "no video stream in"
    raise ValueError(kind)


BAD_KINDS = ["missing", "directory", "zero_length", "garbage", "truncated_mp4", "audio_aac", "audio_mp2"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_files_raise_naming_the_file(tmp_path, kind):
    path, error, message = _bad_file(tmp_path, kind)
    with pytest.raises(error, match=message) as e:
        load_video(path)
    assert str(path) in str(e.value)
    with pytest.raises(error, match=message):  # the generator fails at its first frame
        next(iter_frames(path))


@pytest.mark.parametrize("name, options", [("cut.mkv", {}), ("cut_faststart.mp4", {"movflags": "faststart"})])
def test_truncated_video_warns_or_raises(tmp_path, name, options):
    """A file cut in half that still decodes in part: the frames that decode and a warning naming
    the file (what the official loader returns, silently), or VideoError with `strict`."""
    full = _write_video(tmp_path / f"full{pathlib.Path(name).suffix}", n=60, noise=True, options=options)
    path = tmp_path / name
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match=f"{name}: the video stream ended after .* frames, its .* says 60"):
        v = load_video(path)
    assert 1 <= len(v) < 6
    with pytest.raises(VideoError, match=f"{name}: .*truncated or corrupt file"):
        load_video(path, strict=True)
    assert len(load_video(full, strict=True)) == 6


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("n, rate", [(10, 25), (1, 30), (23, 24)])
def test_video_shorter_than_one_second_gives_one_frame(tmp_path, n, rate):
    path = _write_video(tmp_path / "short.mp4", n=n, rate=rate)
    v = load_video(path, strict=True)
    assert v.shape == (1, 224, 224, 3)
    np.testing.assert_allclose(v[0, 112, 112], [0, 255, 0], atol=6)  # the first frame
