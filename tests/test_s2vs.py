"""S2VS network, weights and losses against outputs of the official S2VS code
(tests/data/reference/s2vs/README.md): every network option, float32 and float64, batched path with
masks, the training forward, official-format .pth by name, convert round trip, bad input."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dns_jax import convert, losses, pretrained, pth
from dns_jax.models import conversion
from dns_jax.models import S2VS, FineGrainedStudent
from helpers import reference
from reference import assert_close, pad_batch

S2VS_DIR = pathlib.Path(__file__).parent / "data" / "reference" / "s2vs"
CASES = ["att_sym", "attnorm_bn", "bin", "none"]            # dims 64, made by make_fixtures.py
PAIRS = [(q, d) for q in ("q0", "q1") for d in ("d0", "d1")]
PTH_FILE = S2VS_DIR / "s2vs_d64_attnorm_bn_ref.pth"


def _case(name):
    return reference(f"s2vs/s2vs_d64_{name}")


def _expected_config(ctor):
    """The S2VS options the official constructor arguments stand for (what loading must infer;
    without an indexing layer no weight depends on the feature dims)."""
    cfg = {"indexing": "att" if ctor.get("attention") else "bin" if ctor.get("binarization") else "none"}
    if cfg["indexing"] != "none":
        cfg["dims"] = ctor["dims"]
    if ctor.get("binarization"):
        cfg["bits"] = ctor["binary_bits"]
    cfg.update({k: True for k in ("attention_norm", "batch_norm") if ctor.get(k)})
    return cfg


def _load(ref, dtype=np.float32):
    """pretrained.load('s2vs', state) with the options weights cannot tell (symmetric; dims when
    there is no indexing layer)."""
    ctor = ref.meta["ctor"]
    state = {k: (v.astype(dtype) if v.dtype == np.float32 else v) for k, v in ref.state.items()}
    overrides = {"symmetric": True} if ctor.get("symmetric") else {}
    if not (ctor.get("attention") or ctor.get("binarization")):
        overrides["dims"] = ctor["dims"]
    net = pretrained.load("s2vs", state, **overrides)
    if dtype == np.float64:
        net.variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), net.variables)
    return net


def _outputs(net, ref, keys, dtype=jnp.float32):
    """Our value for each official output in `keys`, computed in one jitted call (compiling every
    method and shape separately would take minutes on a small CPU)."""
    inputs = {k: jnp.asarray(x, dtype) for k, x in ref.inp.items() if k[0] in "qd" and k[1:].isdigit()}
    if ref.meta["batched"]:
        for side, names in zip("qt", ref.meta["batched"]):
            inputs[f"{side}_pad"], inputs[f"{side}_mask"] = map(jnp.asarray, pad_batch([ref.inp[k] for k in names]))
    x, mask = pad_batch(ref.videos("q") + ref.videos("d"))
    inputs["all_pad"], inputs["all_mask"] = jnp.asarray(x, dtype), jnp.asarray(mask, dtype)

    def compute(variables, inp):
        m = net.module.bind(variables)
        idx = {k: m.index_video(inp[k]) for k in ref.inp if k in inp}
        methods = {
            "f2f": lambda a, b: m.similarity_matrix(a, b, apply_visil=False),
            "sim_matrix": lambda a, b: m.similarity_matrix(a, b),
            "sim_matrix_nopool": lambda a, b: m.similarity_matrix(a, b, pooling=False),
            "sim": lambda a, b: m.calculate_video_similarity(a, b),
            "sim_nopool": lambda a, b: m.calculate_video_similarity(a, b, pooling=False),
            "sim_f2f": lambda a, b: m.calculate_video_similarity(a, b, apply_visil=False),
        }
        options = {"sim": {}, "sim_nopool": {"pooling": False}, "sim_f2f": {"apply_visil": False}}
        got = {}
        for key in keys:
            kind, _, arg = key.partition("/")
            if kind == "index":
                got[key] = idx[arg]
            elif kind == "batch":
                qm, tm = inp["q_mask"].astype(dtype), inp["t_mask"].astype(dtype)
                qi, ti = m.index_video(inp["q_pad"].astype(dtype), qm), m.index_video(inp["t_pad"].astype(dtype), tm)
                got[key] = m.calculate_video_similarity(qi, ti, qm, tm, **options[arg])
            elif kind.startswith("forward"):
                sim, loss = m(inp["all_pad"], inp["all_mask"] if ref.meta["batched"] else None,
                              kind == "forward_train")
                got[key] = sim if arg == "sim" else loss
            else:
                q, d = arg.split("_")
                got[key] = methods[kind](idx[q], idx[d])
        return got

    return {k: np.asarray(v) for k, v in jax.jit(compute)(net.variables, inputs).items()}


def _compare(got, out, atol):
    for key, actual in got.items():
        expected = np.asarray(out[key])
        if expected.ndim == 4:                         # official [1, 1, H, W]
            expected = expected[0, 0]
        if expected.size == 1 and key.startswith(("sim", "batch", "forward")) and actual.size == 1:
            actual, expected = actual.reshape(()), expected.reshape(())
        elif key.startswith("batch/"):                 # official [(A B), 1] -> [A, B]
            expected = expected.reshape(actual.shape[0], -1)
        assert_close(actual, expected, atol, key)


def _keys(ref, out, pairs):
    """The outputs of `out` for the given video pairs, plus index, batch and forward outputs."""
    return [k for k in out if k.split("/")[0] in ("index", "batch", "forward", "forward_train")
            or k.split("/")[-1] in pairs]


# -- parity, dims 64: every option ------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_options_are_inferred_from_weights(case):
    ref = _case(case)
    net = _load(ref)
    cfg = {k: v for k, v in net.config.items() if k not in ("symmetric", "dims")}
    _expected = _expected_config(ref.meta["ctor"])
    assert net.module.dims == ref.meta["ctor"]["dims"]
    assert cfg == {k: v for k, v in _expected.items() if k != "dims"}
    assert pretrained.infer_config("s2vs", ref.state) == _expected
    assert isinstance(net.module, S2VS) and isinstance(net.module, FineGrainedStudent)


@pytest.mark.parametrize("case", CASES)
def test_parity_float32(case):
    ref = _case(case)
    keys = _keys(ref, ref.out, ("q0_d0", "q1_d1"))   # 9x13 and 6x7 frames
    assert len(keys) >= 4 + 2 * 6 + 2 + (3 if ref.meta["batched"] else 0)
    got = _outputs(_load(ref), ref, keys)
    _compare(got, ref.out, 1e-5)
    if case == "bin":
        np.testing.assert_array_equal(got["index/q0"], ref.out["index/q0"])  # codes compare exactly


@pytest.mark.parametrize("case", ["att_sym", "attnorm_bn"])   # bin, none: FG students' float64 code
def test_parity_float64(case):
    ref = _case(case)
    with jax.enable_x64(True):
        got = _outputs(_load(ref, np.float64), ref, _keys(ref, ref.out64, ("q0_d1",)), jnp.float64)
        assert got["sim/q0_d1"].dtype == np.float64
        _compare(got, ref.out64, 1e-6)


def test_batch_norm_grows_the_matrix_by_two_per_conv():
    ref = _case("attnorm_bn")
    net = _load(ref)
    q, d = net.index_video(ref.inp["q0"]), net.index_video(ref.inp["d0"])   # 9 and 13 frames
    assert net.similarity_matrix(q, d, pooling=False).shape == (9 + 6, 13 + 6)
    assert net.similarity_matrix(q, d).shape == (((9 + 2) // 2 + 2) // 2 + 2, ((13 + 2) // 2 + 2) // 2 + 2)
    with pytest.raises(ValueError, match="frame mask"):
        net.apply("calculate_video_similarity", q[None], d[None], jnp.ones((1, 9)), jnp.ones((1, 13)))


@pytest.mark.parametrize("case", ["att_sym", "none"])
def test_exact_padded_path_equals_unpadded_with_and_without_pooling(case):
    ref = _case(case)
    net = _load(ref)
    qs, ds = ref.videos("q"), ref.videos("d")
    (qp, qm), (dp, dm) = pad_batch(qs), pad_batch(ds)
    qi = net.apply("index_video", jnp.asarray(qp), jnp.asarray(qm))
    di = net.apply("index_video", jnp.asarray(dp), jnp.asarray(dm))
    qlen, dlen = jnp.array([len(v) for v in qs]), jnp.array([len(v) for v in ds])
    for pooling, key in ((False, "sim_nopool"), (True, "sim")):
        pair = lambda a, b, la, lb: net.module.apply(net.variables, a, b, la, lb, pooling,
                                                     method="padded_pair_similarity")
        got = jax.jit(jax.vmap(jax.vmap(pair, (None, 0, None, 0)), (0, None, 0, None)))(qi, di, qlen, dlen)
        want = [[ref.out[f"{key}/q{i}_d{j}"] for j in range(len(ds))] for i in range(len(qs))]
        assert_close(got, np.array(want), 1e-5, key)


def test_forward_ignores_padded_cells():
    """Four more padded frames (on a multiple of 4: the pooling grid stays) change neither the forward's
    similarities nor its loss, even with a comparator bias (what padded cells hold) outside [-1, 1]."""
    ref = _case("none")
    net = _load(ref)
    variables = jax.tree_util.tree_map(lambda a: a, net.variables)
    variables["params"]["visil_head"]["fconv"]["bias"] = jnp.full((1,), 3.0)
    x, mask = pad_batch(ref.videos("q") + ref.videos("d"))       # 13 frames
    pad = lambda a, n: np.concatenate([a, np.zeros((a.shape[0], n - a.shape[1]) + a.shape[2:], a.dtype)], 1)
    forward = jax.jit(net.module.apply)
    sim, loss = forward(variables, jnp.asarray(pad(x, 16)), jnp.asarray(pad(mask, 16)))
    sim4, loss4 = forward(variables, jnp.asarray(pad(x, 20)), jnp.asarray(pad(mask, 20)))
    assert float(loss) > 0
    assert_close(loss4, loss, 1e-5)
    assert_close(sim4, sim, 1e-5)


def test_fine_scorer_takes_the_s2vs_options_or_refuses_them():
    from dns_jax.retrieval.fine import FineScorer
    ref = _case("att_sym")
    net = _load(ref)
    sc = FineScorer(net)
    got = sc.similarities(sc.index(ref.videos("q")), sc.index(ref.videos("d")))
    want = [[ref.out[f"sim/q{i}_d{j}"] for j in range(2)] for i in range(2)]
    np.testing.assert_allclose(got, np.array(want), atol=2e-6, rtol=0)     # symmetric Chamfer kept
    with pytest.raises(ValueError, match="batch-norm comparator"):
        FineScorer(_load(_case("attnorm_bn")))
    with pytest.raises(ValueError, match="binary='float'"):
        FineScorer(pretrained.load("s2vs", _case("bin").state, symmetric=True))


# -- parity, dims 512: the project's shared reference (plain attention, the published layout) -----

def _shared_att_outputs(net, ref, dtype):
    """Our values of the shared file's outputs (q0 against d1 and d2, the padded batches)."""
    def compute(variables, inp):
        m = net.module.bind(variables)
        idx = {k: m.index_video(inp[k]) for k in ("q0", "d1", "d2")}
        got = {"index/q0": idx["q0"], "index/d2": idx["d2"]}
        for d in ("d1", "d2"):
            a, b = idx["q0"], idx[d]
            got.update({f"f2f/q0_{d}": m.similarity_matrix(a, b, apply_visil=False),
                        f"sim_matrix/q0_{d}": m.similarity_matrix(a, b),
                        f"sim_matrix_nopool/q0_{d}": m.similarity_matrix(a, b, pooling=False),
                        f"sim/q0_{d}": m.calculate_video_similarity(a, b),
                        f"sim_nopool/q0_{d}": m.calculate_video_similarity(a, b, pooling=False)})
        qi, ti = m.index_video(inp["qp"], inp["qm"]), m.index_video(inp["tp"], inp["tm"])
        got["batch/sim"] = m.calculate_video_similarity(qi, ti, inp["qm"], inp["tm"])
        got["batch/sim_nopool"] = m.calculate_video_similarity(qi, ti, inp["qm"], inp["tm"], pooling=False)
        return got

    (qp, qm), (tp, tm) = pad_batch([ref.inp["q0"], ref.inp["d2"]]), pad_batch([ref.inp["d1"], ref.inp["d2"]])
    inp = {k: jnp.asarray(ref.inp[k], dtype) for k in ("q0", "d1", "d2")}
    inp.update({k: jnp.asarray(v, dtype) for k, v in dict(qp=qp, qm=qm, tp=tp, tm=tm).items()})
    return {k: np.asarray(v) for k, v in jax.jit(compute)(net.variables, inp).items()}


def test_shared_reference_att_512():
    ref = reference("s2vs/s2vs_att")
    net = _load(ref)
    assert net.config == {"indexing": "att", "dims": 512}
    np.testing.assert_array_equal(pad_batch([ref.inp["q0"], ref.inp["d2"]])[1], ref.inp["batch_q_mask"])
    np.testing.assert_array_equal(pad_batch([ref.inp["d1"], ref.inp["d2"]])[1], ref.inp["batch_t_mask"])
    got = _shared_att_outputs(net, ref, jnp.float32)
    _compare(got, ref.out, 1e-5)
    # the same weights as an FG-Att student: the same network, the same similarity
    fg = pretrained.load("fg_att_student", ref.state)
    q, d = fg.index_video(ref.inp["q0"]), fg.index_video(ref.inp["d1"])
    assert_close(fg.calculate_video_similarity(q, d), ref.out["sim/q0_d1"][0, 0], 1e-5)


def test_shared_reference_att_512_float64():
    ref = reference("s2vs/s2vs_att")
    with jax.enable_x64(True):
        got = _shared_att_outputs(_load(ref, np.float64), ref, jnp.float64)
        assert got["sim/q0_d1"].dtype == np.float64
        _compare({k: v for k, v in got.items() if not k.startswith("index/")}, ref.out64, 1e-6)


# -- weights: official files, conversion ------------------------------------------------------

def test_official_checkpoint_loads_by_name():
    ckpt = pth.load(PTH_FILE)                          # the file is laid out like the official ones
    assert set(ckpt) >= {"model", "args", "optimizer"} and ckpt["args"].similarity_network == "ViSiL"
    assert pretrained.guess_network_name("weights/s2vs_dns.pth") == "s2vs"
    assert pretrained.guess_network_name("s2vs_vcdb.pth") == "s2vs"
    name = pretrained.guess_network_name(str(PTH_FILE))
    net = pretrained.load(name, PTH_FILE)
    assert net.config == {"indexing": "att", "attention_norm": True, "dims": 64, "batch_norm": True}
    ref = _case("attnorm_bn")
    q, d = net.index_video(ref.inp["q0"]), net.index_video(ref.inp["d0"])
    assert_close(net.calculate_video_similarity(q, d), ref.out["sim/q0_d0"], 1e-5)
    assert_close(net.calculate_video_similarity(q, d, pooling=False), ref.out["sim_nopool/q0_d0"], 1e-5)


def test_convert_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "s2vs_ckpt"
    assert convert.main([str(PTH_FILE), str(out)]) == 0      # network guessed from the file name
    assert "s2vs" in capsys.readouterr().out
    direct, back = pretrained.load("s2vs", PTH_FILE), pretrained.load("s2vs", str(out))
    assert back.config == direct.config
    for a, b in zip(jax.tree_util.tree_leaves(direct.variables), jax.tree_util.tree_leaves(back.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ref = _case("attnorm_bn")
    q, d = back.index_video(ref.inp["q1"]), back.index_video(ref.inp["d1"])
    assert_close(back.calculate_video_similarity(q, d), ref.out["sim/q1_d1"], 1e-5)


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trip_is_lossless(case):
    ref = _case(case)
    back = conversion.variables_to_state_dict(_load(ref).variables)
    expected = {k: v for k, v in ref.state.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


# -- bad input ------------------------------------------------------------------------------

def test_other_networks_weights_given_as_s2vs_are_named():
    with pytest.raises(conversion.ConversionError) as e:
        pretrained.load("s2vs", reference("cg_student").state)
    assert "as 's2vs'" in str(e.value) and "coarse-grained student" in str(e.value)
    with pytest.raises(conversion.ConversionError, match="ViSiL head"):
        pretrained.load("s2vs", reference("visil_head_sym512").state)


def test_s2vs_weights_given_as_another_network_are_named():
    with pytest.raises(conversion.ConversionError) as e:
        pretrained.load("fg_att_student", PTH_FILE)
    msg = str(e.value)
    assert "batch-norm comparator" in msg and "s2vs" in msg and "visil_head.conv1.0.weight" in msg
    with pytest.raises(conversion.ConversionError, match=r"fg_att_student, or the S2VS network s2vs"):
        pretrained.load("cg_student", reference("s2vs/s2vs_att").state)
    state = dict(_case("att_sym").state)
    state["attention.transform.weight"] = state["attention.transform.weight"][:, :32]
    with pytest.raises(conversion.ConversionError, match="attention.transform.weight"):
        pretrained.load("s2vs", state)


def test_attention_norm_needs_attention():
    with pytest.raises(ValueError, match="attention_norm needs indexing='att'"):
        S2VS(dims=8, indexing="bin", attention_norm=True).init(jax.random.PRNGKey(0), method="init_all")


# -- losses ---------------------------------------------------------------------------------

def test_losses_parity():
    ref = reference("s2vs/s2vs_losses")
    assert json.loads(str(ref.raw["meta"]))["network"] == "S2VS losses"
    for out, dtype, atol in ((ref.out, jnp.float32, 1e-5), (ref.out64, jnp.float64, 1e-6)):
        with jax.enable_x64(dtype == jnp.float64):
            s, labels = jnp.asarray(ref.inp["similarity"], dtype), jnp.asarray(ref.inp["labels"], dtype)
            for t in ("0.03", "0.07"):
                assert_close(losses.infonce_loss(s, labels, float(t)), out[f"infonce_t{t}"], atol, t)
            hardneg, self_sim = losses.sshn_loss(s, labels)
            assert_close(hardneg, out["sshn_hardneg"], atol, "hardneg")
            assert_close(self_sim, out["sshn_self"], atol, "self")
            assert_close(losses.similarity_regularization_loss(s), out["similarity_regularization_sum"], atol)


def test_infonce_stays_finite_where_exp_overflows_float32():
    """temperature 0.01: exp(s / t) overflows float32; the definition evaluated in float64 numpy."""
    s = np.array([[1.0, 0.9, 0.2, 0.5], [0.9, 1.0, 0.1, 0.6], [0.2, 0.1, 1.0, 0.7], [0.5, 0.6, 0.7, 1.0]])
    labels = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0.5], [0, 0, 0.5, 1]])
    t = 0.01
    e = np.exp(s / t)
    partition = e + ((labels == 0) * e).sum(1, keepdims=True) + 1e-6
    positives = labels * (1 - np.eye(4))
    want = np.mean((-np.log(e / partition) * positives).sum(1) / positives.sum(1))
    got = losses.infonce_loss(jnp.asarray(s, jnp.float32), jnp.asarray(labels, jnp.float32), t)
    assert np.isfinite(float(got))
    assert_close(got, want, 1e-5)
    grads = jax.grad(losses.infonce_loss)(jnp.asarray(s, jnp.float32), jnp.asarray(labels, jnp.float32), t)
    assert np.isfinite(np.asarray(grads)).all()
