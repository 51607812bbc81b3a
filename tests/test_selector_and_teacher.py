"""Selector network and ViSiL head (symmetric with comparator, ViSiL_f) against the reference."""
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import network, pairs
from reference import assert_close, pad_batch


def test_selector_self_similarity_and_index():
    ref, net = network("selector")
    q, d = ref.videos("q"), ref.videos("d")
    assert_close(net.index_video(q[0]), ref.out["index_q0"], 1e-5)
    assert_close(net.index_video(d[0]), ref.out["index_d0"], 1e-5)
    for i in range(2):
        f2f = net.apply("frame_to_frame_similarity", jnp.asarray(q[i])[None])[0]
        assert_close(f2f, ref.out[f"selfsim_f2f_q{i}"], 1e-5)


def test_selector_mlp_input_and_output():
    ref, net = network("selector")
    q, d = ref.videos("q"), ref.videos("d")
    coarse = ref.inp["coarse_sim_used"]
    z = np.array([[float(net.index_video(q[i])[0, 0]), float(net.index_video(d[j])[0, 0]), coarse[i, j]]
                  for i, j in pairs()], np.float32)
    assert_close(z, ref.out["mlp_in"], 1e-5)
    assert_close(net(z), ref.out["mlp_out"], 1e-5)


def test_selector_masked_batch_equals_single_for_unpadded_video():
    ref, net = network("selector")
    x, m = pad_batch(ref.videos("d"))
    batched = net.index_video(x, m)
    assert_close(batched[0], ref.out["index_d0"][0], 1e-5)  # d0 is the longest: not padded


def test_selector_rejects_wrong_mlp_input():
    _, net = network("selector")
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        net(np.zeros((4, 2), np.float32))


@pytest.mark.parametrize("name", ["visil_head_sym512", "visil_head_f512"])
def test_visil_prepare_f2f_and_similarity(name):
    ref, net = network(name)
    q = [net.index_video(v) for v in ref.videos("q")]
    d = [net.index_video(v) for v in ref.videos("d")]
    assert_close(q[0], ref.out["prepared_q0"], 1e-5)
    assert_close(d[0], ref.out["prepared_d0"], 1e-5)
    for i, j in pairs():
        assert_close(net.frame_to_frame_similarity(q[i], d[j]), ref.out[f"f2f_q{i}_d{j}"], 1e-5, f"{i}{j}")
        key = f"visil_raw_q{i}_d{j}"
        if key in ref.out:
            raw = net.apply("visil_output", net.frame_to_frame_similarity(q[i], d[j]))
            assert_close(raw, ref.out[key], 1e-5, key)
    sims = np.array([[float(net.calculate_video_similarity(q[i], d[j])) for j in range(3)] for i in range(2)])
    assert_close(sims, ref.out["sim"], 1e-5)


def test_visil_configs_from_names():
    ref, sym = network("visil_head_sym512")
    assert sym.config == {"symmetric": True, "video_comparator": True, "attention": True, "dims": 512}
    _, f = network("visil_head_f512")
    assert f.config["video_comparator"] is False and f.config["symmetric"] is False
