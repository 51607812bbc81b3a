"""Building blocks: Chamfer, comparator padding modes, binarization, regulariser, attention forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dns_jax import layers, losses, similarity
from helpers import reference
from reference import assert_close


def test_chamfer_matches_numpy_definition():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 5, 7)).astype(np.float32)
    got = similarity.chamfer(jnp.asarray(s), max_axis=2, mean_axis=1)
    assert_close(got, s.max(axis=2).mean(axis=1), 1e-6)
    got = similarity.symmetric_chamfer(jnp.asarray(s), 2, 1)
    assert_close(got, (s.max(2).mean(1) + s.max(1).mean(1)) / 2, 1e-6)


def test_masked_chamfer_ignores_masked_cells_and_rows():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((6, 8)).astype(np.float32)
    mask = np.zeros_like(s)
    mask[:4, :5] = 1
    s_masked = s.copy()
    s_masked[mask == 0] = 1e9  # would dominate the max if masking failed
    got = similarity.chamfer(jnp.asarray(s_masked), 1, 0, jnp.asarray(mask))
    assert_close(got, s[:4, :5].max(1).mean(), 1e-6)


@pytest.mark.parametrize("padding", ["zero", "replicate"])
def test_comparator_lengths_mode_equals_unpadded_for_any_length(padding):
    comp = layers.VideoComparator(padding)
    rng = np.random.default_rng(2)
    variables = comp.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8)))
    # perturb biases so that padding mistakes cannot hide behind zeros
    variables = jax.tree_util.tree_map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), variables)
    size = (17, 19)
    for tq, tt in [(4, 4), (5, 7), (6, 13), (9, 19), (17, 5), (16, 16)]:
        s = rng.uniform(-1, 1, (tq, tt)).astype(np.float32)
        want, _ = comp.apply(variables, jnp.asarray(s)[None])
        padded = np.full(size, 7.0, np.float32)  # garbage outside the valid corner
        padded[:tq, :tt] = s
        got, valid = comp.apply(variables, jnp.asarray(padded)[None], lengths=jnp.array([[tq, tt]]))
        h, w = want.shape[1:]
        assert np.asarray(valid)[0].sum() == h * w
        assert_close(np.asarray(got)[0, :h, :w], want[0], 1e-5, f"{padding} {tq}x{tt}")


def test_comparator_official_mask_rule_pools_mask_with_any():
    comp = layers.VideoComparator("zero")
    variables = comp.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8)))
    mask = np.zeros((1, 10, 10), np.float32)
    mask[0, :5, :6] = 1
    _, pooled = comp.apply(variables, jnp.zeros((1, 10, 10)), jnp.asarray(mask))
    # 5 rows -> ceil(5/2)=3 -> ceil(3/2)=2 ; 6 cols -> 3 -> 2 (a cell is valid if any input was)
    expected = np.zeros((2, 2), np.float32)
    expected[:2, :2] = 1
    np.testing.assert_array_equal(np.asarray(pooled)[0], expected)


def test_similarity_regularization_loss_reference():
    ref = reference("fg_att_student")
    got = losses.similarity_regularization_loss(jnp.asarray(ref.inp["reg_loss_input"]))
    assert float(ref.out["reg_loss_synthetic"]) > 0
    assert_close(got, ref.out["reg_loss_synthetic"], 1e-6)


def test_binarization_sign_at_inference_erf_in_training():
    b = layers.Binarization(dims=8)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32))
    v = b.init(jax.random.PRNGKey(0), x)
    codes = b.apply(v, x)
    assert set(np.unique(np.asarray(codes))) <= {-1.0, 1.0}
    soft = b.apply(v, x, train=True)
    assert np.all(np.abs(np.asarray(soft)) < 1 + 1e-6)
    np.testing.assert_array_equal(np.sign(np.asarray(soft)), np.asarray(codes))


def test_visil_attention_weights_are_in_unit_interval_for_unit_vectors():
    att = layers.ViSiLAttention(dims=16)
    x = np.random.default_rng(4).standard_normal((7, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    v = att.init(jax.random.PRNGKey(1), jnp.asarray(x))
    kernel = np.asarray(v["params"]["context_vector"]["kernel"])
    assert abs(np.linalg.norm(kernel) - 1) < 1e-5
    _, w = att.apply(v, jnp.asarray(x))
    assert np.all((np.asarray(w) >= 0) & (np.asarray(w) <= 1))


def test_l2_normalize_uses_torch_eps():
    z = layers.l2_normalize(jnp.zeros((2, 3)))
    assert np.all(np.isfinite(np.asarray(z))) and float(jnp.abs(z).max()) == 0.0


def test_l2_normalize_gradient_of_zero_vector_is_finite():
    g = jax.grad(lambda x: layers.l2_normalize(x).sum())(jnp.zeros((3,)))
    assert np.all(np.isfinite(np.asarray(g)))
