"""FG-Att, FG-Bin, FG (no indexing) students against the official reference outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import network, pairs, train_batch
from reference import assert_close, pad_batch

FINE = ["fg_att_student", "fg_bin_student", "fg_none_student", "fg_bin_student_trainmode"]


def _index(net, ref, videos):
    train = ref.meta["train_mode"]
    return [net.apply("index_video", jnp.asarray(v), None, train=train) for v in videos]


@pytest.mark.parametrize("name", FINE)
def test_index_features(name):
    ref, net = network(name)
    q, d = _index(net, ref, ref.videos("q")), _index(net, ref, ref.videos("d"))
    tol = 1e-4 if ref.meta["train_mode"] else 1e-5
    assert_close(q[0], ref.out["index_q0"], tol, "index_q0")
    assert_close(d[0], ref.out["index_d0"], tol, "index_d0")
    if "bin" in name and not ref.meta["train_mode"]:
        np.testing.assert_array_equal(np.asarray(q[0]), ref.out["index_q0"])  # codes compare exactly


def test_attention_weights():
    ref, net = network("fg_att_student")
    for k, v in zip(["q0", "q1"], ref.videos("q")):
        assert_close(net.apply("attention_weights", jnp.asarray(v)), ref.out[f"attention_weights_{k}"], 1e-5, k)
    for k, v in zip(["d0", "d1", "d2"], ref.videos("d")):
        assert_close(net.apply("attention_weights", jnp.asarray(v)), ref.out[f"attention_weights_{k}"], 1e-5, k)


@pytest.mark.parametrize("name", FINE)
def test_frame_to_frame_and_similarity_matrices(name):
    ref, net = network(name)
    q, d = _index(net, ref, ref.videos("q")), _index(net, ref, ref.videos("d"))
    for i, j in pairs():
        assert_close(net.frame_to_frame_similarity(q[i], d[j]), ref.out[f"f2f_q{i}_d{j}"], 1e-5, f"f2f {i}{j}")
        assert_close(net.similarity_matrix(q[i], d[j]), ref.out[f"simmat_q{i}_d{j}"], 1e-5, f"simmat {i}{j}")


@pytest.mark.parametrize("name", FINE)
def test_unbatched_video_similarity(name):
    ref, net = network(name)
    q, d = _index(net, ref, ref.videos("q")), _index(net, ref, ref.videos("d"))
    got = np.array([[float(net.calculate_video_similarity(q[i], d[j])) for j in range(3)] for i in range(2)])
    assert_close(got, ref.out["sim_unbatched"], 1e-5)


@pytest.mark.parametrize("name", FINE)
def test_batched_masked_similarity_official_rule(name):
    ref, net = network(name)
    train = ref.meta["train_mode"]
    (qp, qm), (dp, dm) = pad_batch(ref.videos("q")), pad_batch(ref.videos("d"))
    qi = net.apply("index_video", jnp.asarray(qp), jnp.asarray(qm), train=train)
    di = net.apply("index_video", jnp.asarray(dp), jnp.asarray(dm), train=train)
    got = net.apply("calculate_video_similarity", qi, di, jnp.asarray(qm), jnp.asarray(dm))
    assert_close(got, ref.out["sim_batched_masked"], 1e-5)
    # official rule: equal to the unpadded path only where no video is padded (q0 9 frames, d0 13)
    assert_close(np.asarray(got)[0, 0], ref.out["sim_unbatched"][0, 0], 1e-5)


@pytest.mark.parametrize("name", FINE)
def test_exact_padded_path_equals_unpadded_for_every_pair(name):
    ref, net = network(name)
    train = ref.meta["train_mode"]
    qs, ds = ref.videos("q"), ref.videos("d")
    (qp, qm), (dp, dm) = pad_batch(qs), pad_batch(ds)
    qi = net.apply("index_video", jnp.asarray(qp), jnp.asarray(qm), train=train)
    di = net.apply("index_video", jnp.asarray(dp), jnp.asarray(dm), train=train)
    fn = jax.jit(jax.vmap(jax.vmap(lambda v, a, b, la, lb: net.module.apply(
        v, a, b, la, lb, method="padded_pair_similarity"), (None, None, 0, None, 0)), (None, 0, None, 0, None)))
    got = fn(net.variables, qi, di, jnp.array([len(v) for v in qs]), jnp.array([len(v) for v in ds]))
    assert_close(got, ref.out["sim_unbatched"], 1e-5)


@pytest.mark.parametrize("name", FINE)
def test_training_forward_and_losses(name):
    ref, net = network(name)
    x, mask = train_batch(ref)
    xi = net.apply("index_video", jnp.asarray(x), jnp.asarray(mask), train=ref.meta["train_mode"])
    m = jnp.asarray(mask)
    pos, neg, reg = net.apply("__call__", xi[0:2], xi[2:4], xi[4:6], m[0:2], m[2:4], m[4:6])
    assert_close(pos, ref.out["train_pos"], 1e-5, "pos")
    assert_close(neg, ref.out["train_neg"], 1e-5, "neg")
    assert_close(reg, ref.out["train_reg_loss"], 1e-5, "reg")
    from dns_jax.losses import distillation_l1
    teacher = ref.inp["train_fake_teacher_pos_neg"]
    l1 = distillation_l1(pos, neg, teacher[:, 0], teacher[:, 1])
    assert_close(l1, ref.out["train_distill_l1"], 1e-5, "l1")
    assert_close(l1 + 1e-3 * reg, ref.out["train_total_loss_r1e-3"], 1e-5, "total")


def test_simmat_batched_cells():
    ref, net = network("fg_att_student")
    (qp, qm), (dp, dm) = pad_batch(ref.videos("q")), pad_batch(ref.videos("d"))
    qi = net.apply("index_video", jnp.asarray(qp), jnp.asarray(qm))
    di = net.apply("index_video", jnp.asarray(dp), jnp.asarray(dm))

    def simmats(v, q, t, qmask, tmask):
        a, b = q.shape[0], t.shape[0]
        m = net.module.bind(v)
        f2f = jax.vmap(jax.vmap(m.frame_to_frame_similarity, (None, 0)), (0, None))(q, t)
        f2f = f2f.reshape((a * b,) + f2f.shape[2:])
        mask = (qmask[:, None, :, None] * tmask[None, :, None, :]).reshape(f2f.shape)
        out, out_mask = m.visil_head(jnp.where(mask > 0, f2f, 0), mask)
        return jnp.clip(out, -1, 1), out_mask  # masked cells hold the fconv bias, as officially

    got, got_mask = simmats(net.variables, qi, di, jnp.asarray(qm), jnp.asarray(dm))
    np.testing.assert_array_equal(np.asarray(got_mask), ref.out["simmat_batched_mask"])
    assert_close(got, ref.out["simmat_batched"], 1e-5)


def test_jit_equals_eager():
    ref, net = network("fg_att_student")
    q, d = jnp.asarray(ref.inp["q0"]), jnp.asarray(ref.inp["d0"])
    apply = lambda v, a, b: net.module.apply(v, net.module.apply(v, a, method="index_video"),
                                             net.module.apply(v, b, method="index_video"),
                                             method="calculate_video_similarity")
    with jax.disable_jit():
        eager = apply(net.variables, q, d)
    assert_close(jax.jit(apply)(net.variables, q, d), eager, 1e-6)
    assert_close(eager, ref.out["sim_unbatched"][0:1, 0:1], 1e-5)
