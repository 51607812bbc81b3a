"""Collections that live: a built work directory follows its videos (added, removed, changed, fixed
files), settings changes need an explicit --reset, one process at a time, movable work directories.

The networks are given (random, saved as checkpoints) so that no training runs: what is tested is
the bookkeeping, and "the same trained networks" in both builds is exactly true.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

pytest.importorskip("av")

from helpers import save_build_networks  # noqa: E402

from dns_jax import checkpoint, cli, pretrained  # noqa: E402
from dns_jax.app.build import BuildOptions, add_videos, remove_videos, run_build  # noqa: E402
from dns_jax.app.query import Searcher  # noqa: E402
from dns_jax.app.workdir import Workdir, WorkdirError  # noqa: E402
from dns_jax.datasets.video_collection import make_collection  # noqa: E402
from dns_jax.index import Index  # noqa: E402

DIMS = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("updates")
    info = make_collection(str(root / "collection"), seed=1, num_sources=2, edits=("crop", "hflip"),
                           extra_edits=0, num_distractors=3, min_seconds=3, max_seconds=4, width=96)
    all_videos = sorted((root / "collection" / "videos").glob("*.mp4"))
    return root, info, all_videos, save_build_networks(root, DIMS, random=True)


def _folder_of(folder, videos):
    """A new folder holding copies of `videos`."""
    folder.mkdir()
    for v in videos:
        shutil.copy(v, folder / v.name)
    return folder


def _opts(videos, work, nets, **kw):
    return BuildOptions(videos=str(videos), workdir=str(work), dims=DIMS, fine=nets["fine"], coarse=nets["coarse"],
                        selector=nets["selector"], progress=False, **kw)


def _scores(work, query):
    return Searcher(str(work)).search(str(query), "dns", 0.5, top=3).scores


@pytest.mark.slow
def test_updates_give_what_a_fresh_build_of_the_final_folder_gives(setup, tmp_path, capsys):
    root, info, videos, nets = setup
    folder = tmp_path / "videos"
    folder.mkdir()
    later = tmp_path / "later"
    later.mkdir()
    first, extra = videos[:-2], videos[-2:]
    for v in first:
        shutil.copy(v, folder / v.name)
    for v in extra:
        shutil.copy(v, later / v.name)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    work = tmp_path / "work"

    state = run_build(_opts(folder, work, nets))
    assert [f[0] for f in state["features"]["failed"]] == ["broken"]
    assert sorted(Index.open(str(work / "index")).ids) == sorted(v.stem for v in first)

    # a rerun with nothing changed does no work and changes nothing
    before = json.load(open(work / "index" / "index.json"))["shards"]
    run_build(_opts(folder, work, nets))
    assert json.load(open(work / "index" / "index.json"))["shards"] == before

    # two videos added one by one, one removed, the bad file fixed in the folder
    add_videos(str(work), [str(later / v.name) for v in extra], progress=False)
    gone = first[0].stem
    remove_videos(str(work), [gone], progress=False)
    shutil.copy(first[1], folder / "broken.mp4")             # now a readable video
    state = run_build(_opts(folder, work, nets))
    assert state["features"]["failed"] == []
    final_ids = sorted({v.stem for v in first[1:]} | {v.stem for v in extra} | {"broken"})
    assert sorted(Index.open(str(work / "index")).ids) == final_ids

    # a fresh build of the final folder with the same networks and the same whitening
    final = tmp_path / "final"
    final.mkdir()
    for v in first[1:] + extra:
        shutil.copy(v, final / v.name)
    shutil.copy(folder / "broken.mp4", final / "broken.mp4")
    fresh = tmp_path / "fresh"
    run_build(_opts(final, fresh, nets, pca=str(work / "features" / "pca.npz")))
    assert sorted(Index.open(str(fresh / "index")).ids) == final_ids
    query = videos[0]
    got, want = _scores(work, query), _scores(fresh, query)
    assert set(got) == set(want) == set(final_ids)
    np.testing.assert_allclose([got[v] for v in final_ids], [want[v] for v in final_ids], rtol=1e-5, atol=1e-6)

    # the work directory stores relative paths: moved together with its videos, it still answers
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(work), moved / "work")
    shutil.move(str(folder), moved / "videos")
    shutil.move(str(later), moved / "later")
    moved_scores = _scores(moved / "work", query)           # one search, not one per video
    np.testing.assert_allclose([moved_scores[v] for v in final_ids], [got[v] for v in final_ids], rtol=1e-6)
    assert cli.main(["build", "--videos", str(moved / "videos"), "--workdir", str(moved / "work"), "--dims",
                     str(DIMS), "--fine", nets["fine"], "--coarse", nets["coarse"], "--selector", nets["selector"],
                     "--quiet"]) == 0

    # a changed file (same id, other content) is extracted again
    shutil.copy(videos[2], moved / "videos" / first[1].name)
    run_build(_opts(moved / "videos", moved / "work", nets))
    rec = Workdir(str(moved / "work")).read_state()["sources"][first[1].stem]
    assert rec["size"] == os.path.getsize(videos[2])


def test_cli_add_and_remove_errors(setup, tmp_path, capsys):
    assert cli.main(["remove", "--workdir", str(tmp_path / "nothing"), "x"]) == 2
    assert "not a dns-jax work directory" in capsys.readouterr().err
    assert cli.main(["add", "--workdir", str(tmp_path / "nothing"), str(tmp_path / "v.mp4")]) == 2


def test_settings_need_a_reset_and_a_failed_first_run_locks_nothing(setup, tmp_path):
    root, info, videos, nets = setup
    folder = _folder_of(tmp_path / "videos", videos[:4])
    work = tmp_path / "work"
    # a mistyped folder first: the corrected run is not refused
    with pytest.raises(ValueError, match="is not a directory"):
        run_build(_opts(tmp_path / "vidoes", work, nets))
    assert not Workdir(str(work)).settings()
    run_build(_opts(folder, work, nets))
    with pytest.raises(WorkdirError, match=r"dims: 32 -> 16.*--reset whiten"):
        run_build(BuildOptions(**{**_opts(folder, work, nets).__dict__, "dims": 16}))
    with pytest.raises(WorkdirError, match="--reset fine"):
        run_build(BuildOptions(**{**_opts(folder, work, nets).__dict__, "fine_steps": 5}))
    # the lock: a second process (here: a second lock) is refused while the first works
    wd = Workdir(str(work)).lock()
    try:
        with pytest.raises(WorkdirError, match="in use by another process"):
            run_build(_opts(folder, work, nets))
    finally:
        wd.unlock()
    state = run_build(BuildOptions(**{**_opts(folder, work, nets).__dict__, "fine_steps": 5, "reset": "fine"}))
    assert state["index"]["videos"] == 4


@pytest.mark.slow
def test_teacher_s2vs_trains_on_the_collection_then_scores_the_pairs(setup, tmp_path, monkeypatch):
    """--teacher s2vs: the build trains the S2VS teacher on the collection's own videos (here a
    stand-in that records its inputs) and scores the training pairs with it."""
    from dns_jax.app import build as build_lib
    from dns_jax.training.pairs import read_pairs
    root, info, videos, nets = setup
    folder = _folder_of(tmp_path / "videos", videos[:5])
    work = tmp_path / "work"
    run_build(_opts(folder, work, nets))
    calls = {}

    def fake_teacher(vids, features, out_dir, recipe=None, seed=0, progress=True, log=print, backbone=None, pca=None):
        calls.update(videos=[v for v, _ in vids], features=features, recipe=recipe, pca=pca)
        net = pretrained.init_network("s2vs", jax.random.PRNGKey(5), dims=DIMS, indexing="att")
        checkpoint.save_network(out_dir, "s2vs", net.config, net.variables)
        return out_dir

    monkeypatch.setattr(build_lib, "train_s2vs_teacher", fake_teacher)
    opts = BuildOptions(videos=str(folder), workdir=str(work), dims=DIMS, teacher="s2vs", progress=False)
    wd = Workdir(str(work))
    info_ = build_lib.stage_teacher(opts, opts.config(), wd, lambda *_: None, build_lib.SourceChanges(current={}))
    assert sorted(calls["videos"]) == sorted(v.stem for v in videos[:5])
    assert calls["pca"] == wd.pca and calls["recipe"] == {"num_train_steps": 300}
    pairs = read_pairs(wd.pairs("teacher"))
    assert pairs.meta["teacher"] == "s2vs" and info_["teacher"] == "s2vs" and info_["pairs"] > 0
