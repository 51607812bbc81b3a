"""models.chamfer_start: the ViSiL-style network set up to compute ViSiL_f on 4x4 frame blocks."""
import jax
import numpy as np
import pytest

from dns_jax.models import registry
from dns_jax.models.chamfer_start import chamfer_start


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _block_max(x):
    """The comparator's two floored 2x2 max-pools."""
    h, w = x.shape[0] // 4, x.shape[1] // 4
    return x[:4 * h, :4 * w].reshape(h, 4, w, 4).max((1, 3))


def _pooled_visil_f(q, t):
    sim = np.einsum("ard,bsd->abrs", q, t).max(3).mean(2)           # region Chamfer per frame pair
    out = np.clip(_block_max(np.maximum(sim, 0)) - _block_max(np.maximum(-sim, 0)), -1, 1)
    return out.max(1).mean()                                        # video Chamfer


def _network(name="fg_att_student", **config):
    module = registry.build_module(name, dict({"dims": 16, "precision": "highest"}, **config))
    return module, module.init(jax.random.PRNGKey(0), method="init_all")


def _similarity(module, variables, q, t):
    qi, ti = (module.apply(variables, x, method="index_video") for x in (q, t))
    return float(np.asarray(module.apply(variables, qi, ti, method="calculate_video_similarity")).squeeze())


@pytest.mark.parametrize("name", ["fg_att_student", "s2vs"])
def test_it_computes_visil_f_on_frame_blocks(name):
    rng = np.random.default_rng(0)
    module, variables = _network(name)
    q, t = _unit(rng.normal(size=(9, 4, 16))), _unit(rng.normal(size=(13, 4, 16)))
    t[4:8] = _unit(q[0:4] + 0.3 * t[4:8])                          # a copied segment, 4 frames later
    start = chamfer_start(variables, 0.0)
    want = _pooled_visil_f(q, t)
    assert want > 0.3                                               # the copy shows
    np.testing.assert_allclose(_similarity(module, start, q, t), want, rtol=1e-5, atol=1e-6)
    # a random start is not this similarity, and a little noise keeps it close
    assert abs(_similarity(module, variables, q, t) - want) > 0.05
    assert abs(_similarity(module, chamfer_start(variables, 0.1), q, t) - want) < 0.02
    # negative frame similarities go through the second carrying channel: the first 4 query frames
    # face a 5-frame target (one block column) that shows them their opposite
    e = _unit(rng.normal(size=(16,)))
    q2 = _unit(rng.normal(size=(8, 4, 16)))
    q2[:4] = e
    t2 = _unit(-e + 0.05 * rng.normal(size=(5, 4, 16)))
    want = _pooled_visil_f(q2, t2)
    assert want < -0.3                                               # the negative block counts
    np.testing.assert_allclose(_similarity(module, start, q2, t2), want, rtol=1e-5, atol=1e-6)


def test_the_other_weights_are_the_random_ones_scaled():
    _, variables = _network()
    start = chamfer_start(variables, 0.25)
    old, new = variables["params"]["visil_head"], start["params"]["visil_head"]
    np.testing.assert_allclose(new["conv2"]["kernel"][:, :, :, 2:],
                               0.25 * np.asarray(old["conv2"]["kernel"])[:, :, :, 2:])
    np.testing.assert_allclose(start["params"]["attention"]["transform"]["kernel"],
                               0.25 * np.asarray(variables["params"]["attention"]["transform"]["kernel"]))
    assert not np.any(start["params"]["attention"]["context_vector"]["kernel"])
    assert np.asarray(old["conv1"]["kernel"]).any()                 # the input is left as it was


@pytest.mark.parametrize("config", [{"indexing": "bin", "bits": 16}, {"attention_norm": True}])
def test_another_network_is_refused(config):
    name = "fg_bin_student" if config.get("indexing") == "bin" else "s2vs"
    _, variables = _network(name, **config)
    with pytest.raises(ValueError, match="chamfer_start needs"):
        chamfer_start(variables)
    with pytest.raises(ValueError, match="noise_scale"):
        chamfer_start(_network()[1], -1.0)
