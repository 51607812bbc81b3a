"""float64 runs against the official float64 outputs (out64/*), to 1e-6: the port computes the same
function, not just something within float32 noise of it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dns_jax import pretrained
from helpers import REFERENCE_NETWORKS, pairs, reference
from reference import assert_close


def _load64(name):
    ref = reference(name)
    state = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in ref.state.items()}
    net = pretrained.load(REFERENCE_NETWORKS[name], state)
    net.variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), net.variables)
    return ref, net


def _x(v):
    return jnp.asarray(v, jnp.float64)


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student", "fg_none_student"])
def test_fine_students_float64(name):
    with jax.enable_x64(True):
        ref, net = _load64(name)
        m = net.module
        q = [m.apply(net.variables, _x(v), method="index_video") for v in ref.videos("q")]
        d = [m.apply(net.variables, _x(v), method="index_video") for v in ref.videos("d")]
        for i, j in pairs():
            f2f = m.apply(net.variables, q[i], d[j], method="frame_to_frame_similarity")
            assert f2f.dtype == jnp.float64
            assert_close(f2f, ref.out64[f"f2f_q{i}_d{j}"], 1e-6)
            assert_close(m.apply(net.variables, q[i], d[j], method="similarity_matrix"),
                         ref.out64[f"simmat_q{i}_d{j}"], 1e-6)
        sims = np.array([[float(m.apply(net.variables, a, b, method="calculate_video_similarity")[0, 0])
                          for b in d] for a in q])
        assert_close(sims, ref.out64["sim_unbatched"], 1e-6)


def test_cg_student_float64():
    with jax.enable_x64(True):
        ref, net = _load64("cg_student")
        m = net.module
        for k, v in zip(["q0", "q1", "d0", "d1", "d2"], ref.videos("q") + ref.videos("d")):
            out, st = m.apply(net.variables, _x(v), method="index_video", mutable=["intermediates"])
            assert_close(st["intermediates"]["transformer_out"][0], ref.out64[f"transformer_out_{k}"], 1e-6)
            assert_close(st["intermediates"]["netvlad_out"][0], ref.out64[f"netvlad_out_{k}"], 1e-6)


def test_selector_float64():
    with jax.enable_x64(True):
        ref, net = _load64("selector")
        m = net.module
        assert_close(m.apply(net.variables, _x(ref.inp["q0"]), method="index_video"), ref.out64["index_q0"], 1e-6)
        assert_close(m.apply(net.variables, _x(ref.out64["mlp_in"])), ref.out64["mlp_out"], 1e-6)


@pytest.mark.parametrize("name", ["visil_head_sym512", "visil_head_f512"])
def test_visil_float64(name):
    with jax.enable_x64(True):
        ref, net = _load64(name)
        m = net.module
        q = [m.apply(net.variables, _x(v), method="prepare_tensor") for v in ref.videos("q")]
        d = [m.apply(net.variables, _x(v), method="prepare_tensor") for v in ref.videos("d")]
        sims = np.array([[float(m.apply(net.variables, a, b)) for b in d] for a in q])
        assert_close(sims, ref.out64["sim"], 1e-6)
