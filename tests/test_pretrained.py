"""pretrained.load from .pth / orbax / state dicts, the convert CLI, evaluation-path rules, bad input."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dns_jax import checkpoint, pretrained
from dns_jax.models import conversion as convert
from dns_jax.validation import FeatureError
from helpers import network, reference
from reference import assert_close

PTH = pathlib.Path(__file__).parent / "data" / "pth"


def _sims(net, ref):
    q = [net.index_video(v) for v in ref.videos("q")]
    d = [net.index_video(v) for v in ref.videos("d")]
    return np.array([[float(net.calculate_video_similarity(a, b)) for b in d] for a in q])


def test_load_official_training_checkpoint_pth():
    ref = reference("fg_none_student")
    net = pretrained.load("fg_student", PTH / "dns_fg_student_ref.pth")
    assert net.config["indexing"] == "none"
    assert_close(_sims(net, ref), ref.out["sim_unbatched"], 1e-5)


def test_load_legacy_format_visil_head():
    ref = reference("visil_head_f512")
    net = pretrained.load("visil_f", str(PTH / "visil_f512_ref_legacy.pth"))
    assert_close(_sims(net, ref), ref.out["sim"], 1e-5)


def test_convert_cli_then_load_orbax(tmp_path):
    out = tmp_path / "ckpt"
    res = subprocess.run([sys.executable, "-m", "dns_jax.convert", str(PTH / "dns_fg_student_ref.pth"), str(out),
                          "--network", "fg_student"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "fg_student" in res.stdout
    assert checkpoint.is_checkpoint_dir(str(out))
    ref = reference("fg_none_student")
    net = pretrained.load("fg_student", str(out))
    assert_close(_sims(net, ref), ref.out["sim_unbatched"], 1e-5)
    # refuses to overwrite without --force
    res = subprocess.run([sys.executable, "-m", "dns_jax.convert", str(PTH / "dns_fg_student_ref.pth"), str(out),
                          "--network", "fg_student"], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "already exists" in res.stderr


def test_orbax_round_trip_keeps_config_and_values(tmp_path):
    ref, net = network("cg_student")
    checkpoint.save_network(str(tmp_path), net.name, net.config, net.variables)
    back = pretrained.load("cg_student", str(tmp_path))
    assert back.config == net.config
    for a, b in zip(jax.tree_util.tree_leaves(net.variables), jax.tree_util.tree_leaves(back.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(checkpoint.CheckpointError, match="holds a 'cg_student'"):
        pretrained.load("selector", str(tmp_path))


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student", "cg_student", "selector",
                                  "visil_head_sym512"])
def test_state_dict_round_trip_is_lossless(name):
    ref, net = network(name)
    back = convert.variables_to_state_dict(net.variables)
    expected = {k: v for k, v in ref.state.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_wrong_network_is_named():
    ref = reference("cg_student")
    with pytest.raises(convert.ConversionError) as e:
        pretrained.load("fg_att_student", ref.state)
    msg = str(e.value)
    assert "coarse-grained student" in msg and "missing keys" in msg and "netvlad.centroids" in msg


def test_wrong_shape_is_named():
    ref = reference("fg_att_student")
    state = dict(ref.state)
    state["visil_head.conv2.weight"] = state["visil_head.conv2.weight"][:, :16]
    with pytest.raises(convert.ConversionError, match="visil_head.conv2.weight"):
        pretrained.load("fg_att_student", state)


def test_unknown_name_and_missing_file():
    with pytest.raises(ValueError, match="unknown network"):
        pretrained.load("fg_student_v2", {})
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pretrained.load("fg_att_student", "nope.pth")


def test_guess_network_name():
    assert pretrained.guess_network_name("x/dns_selector_cg-fg_bin.pth") == "selector"
    assert pretrained.guess_network_name("visil_symmetric.pth") == "visil_symmetric"
    assert pretrained.guess_network_name("visil.pth") == "visil"
    assert pretrained.guess_network_name("dns_cg_student.pth") == "cg_student"
    assert pretrained.guess_network_name("weights.pth") is None


def test_short_videos_are_repeated_to_four_frames():
    ref, net = network("fg_att_student")
    v = ref.inp["q1"][:3]
    assert net.index_video(v).shape[0] == 6
    np.testing.assert_allclose(np.asarray(net.index_video(v)), np.asarray(net.index_video(np.concatenate([v, v]))))
    d = net.index_video(ref.inp["d0"])
    assert np.isfinite(float(net.calculate_video_similarity(net.index_video(ref.inp["q0"][:1]), d)))


def test_long_targets_are_scored_by_chunks_of_2048():
    ref, net = network("fg_att_student")
    rng = np.random.default_rng(0)
    target = rng.standard_normal((2048 + 5, 9, 512)).astype(np.float32)
    target[:13] = ref.inp["d0"]
    target /= np.linalg.norm(target, axis=-1, keepdims=True)
    q, t = net.index_video(ref.inp["q0"]), net.index_video(target)
    whole = float(net.calculate_video_similarity(q, t))
    first = float(net.apply("calculate_video_similarity", q, t[:2048])[0, 0])
    last = float(net.apply("calculate_video_similarity", q, t[2048:])[0, 0])
    assert abs(whole - (first + last) / 2) < 1e-6
    # a trailing chunk under 4 frames is skipped
    t2 = t[:2048 + 3]
    assert abs(float(net.calculate_video_similarity(q, t2)) - first) < 1e-6


@pytest.mark.parametrize("bad,match", [
    (np.zeros((5, 9, 256), np.float32), "512-d"),
    (np.zeros((5, 9, 512, 1), np.float32), "512-d"),
    (np.zeros((5, 9, 4, 2, 512), np.float32), r"\[T, R, D\]"),
    (np.zeros((0, 9, 512), np.float32), "empty video"),
    (np.full((5, 9, 512), np.nan, np.float32), "NaN"),
    (np.array(["a", "b"]), "dtype"),
])
def test_bad_features_get_clear_errors(bad, match):
    _, net = network("fg_att_student")
    with pytest.raises(FeatureError, match=match):
        net.index_video(bad)


def test_two_dimensional_features_become_one_region():
    _, net = network("cg_student")
    x = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    assert net.index_video(x).shape == (1, 256)


def test_init_network_gives_trainable_fresh_weights():
    net = pretrained.init_network("fg_att_student", jax.random.PRNGKey(0))
    x = np.random.default_rng(1).standard_normal((6, 9, 512)).astype(np.float32)
    s = float(net.calculate_video_similarity(net.index_video(x), net.index_video(x)))
    assert -1.0 <= s <= 1.0
