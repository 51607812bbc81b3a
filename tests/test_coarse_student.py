"""CG student against the official reference outputs (reduced config: FF 1024, 16 clusters, 256-d)."""
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import network
from reference import assert_close, pad_batch

NAMES = ["q0", "q1", "d0", "d1", "d2"]


def _videos(ref):
    return dict(zip(NAMES, ref.videos("q") + ref.videos("d")))


def test_config_inferred_from_weight_shapes():
    _, net = network("cg_student")
    assert net.config["transformer_feedforward_dims"] == 1024
    assert net.config["netvlad_clusters"] == 16 and net.config["netvlad_outdims"] == 256
    assert net.config["transformer_layers"] == 1 and net.config["dims"] == 512


@pytest.mark.parametrize("name", NAMES)
def test_intermediates_and_index(name):
    ref, net = network("cg_student")
    x = jnp.asarray(_videos(ref)[name])
    out, state = net.module.apply(net.variables, x, method="index_video", mutable=["intermediates"])
    inter = state["intermediates"]
    assert_close(inter["transformer_out"][0], ref.out[f"transformer_out_{name}"], 1e-5, "transformer")
    assert_close(inter["netvlad_out"][0], ref.out[f"netvlad_out_{name}"], 1e-4, "netvlad")
    if f"attention_out_{name}" in ref.out:
        assert_close(inter["attention_out"][0], ref.out[f"attention_out_{name}"], 1e-5, "attention")
    if f"index_{name}" in ref.out:
        assert_close(out, ref.out[f"index_{name}"], 1e-5, "index")


def test_padded_batch_and_similarities():
    ref, net = network("cg_student")
    (qp, qm), (dp, dm) = pad_batch(ref.videos("q")), pad_batch(ref.videos("d"))
    q = net.index_video(qp, qm)
    d, state = net.module.apply(net.variables, jnp.asarray(dp), jnp.asarray(dm), method="index_video",
                                mutable=["intermediates"])
    assert_close(state["intermediates"]["netvlad_out"][0], ref.out["netvlad_out_dpad"], 1e-4)
    assert_close(net.calculate_video_similarity(q, d), ref.out["sim_batched_masked"], 1e-5)
    qu = np.concatenate([net.index_video(v) for v in ref.videos("q")])
    du = np.concatenate([net.index_video(v) for v in ref.videos("d")])
    assert_close(net.calculate_video_similarity(qu, du), ref.out["sim_unbatched"], 1e-5)
    # padding does not change a video's vector (the official code agrees to 1e-7)
    assert_close(d, du, 1e-5)


def test_training_forward():
    ref, net = network("cg_student")
    (qp, qm), (dp, dm) = pad_batch(ref.videos("q")), pad_batch(ref.videos("d"))
    q, d = net.index_video(qp, qm), net.index_video(dp, dm)
    pos, neg, reg = net.apply("__call__", q, d[:2], d[np.array([1, 1])])
    assert reg is None
    assert_close(pos, ref.out["train_pos"], 1e-5)
    assert_close(neg, ref.out["train_neg"], 1e-5)
