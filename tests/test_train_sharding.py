"""The training step sharded over 8 (fake CPU) devices equals the single-device step.

The comparison runs in a subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=8
(the device count is fixed when jax starts). Plain SGD keeps parameter differences proportional to
gradient differences (Adam's normalised update would turn rounding noise in near-zero gradients
into differences of the size of the learning rate).
"""
import json
import os
import subprocess
import sys

import numpy as np

NETWORKS = {
    "fg_att_student": dict(dims=32, indexing="att"),
    # no Transformer: it triples the compile time; dropout under sharding is covered by the selector
    "cg_student": dict(dims=32, transformer=False, netvlad_clusters=8, netvlad_outdims=32),
    "selector": dict(dims=32, hidden_size=16),
}


def _batch(network, n, seed, t=16, r=4, d=32):
    rng = np.random.default_rng(seed)
    k = 2 if network == "selector" else 3
    videos = rng.standard_normal((n, k, t, r, d)).astype(np.float32)
    lengths = rng.integers(5, t + 1, (n, k))
    masks = (np.arange(t)[None, None] < lengths[..., None]).astype(np.float32)
    weights = np.ones(n, np.float32)
    weights[-1] = 0.0                                  # a padding row, as in an epoch's last batch
    batch = dict(videos=videos * masks[..., None, None], masks=masks, weights=weights)
    if network == "selector":
        batch["coarse"] = rng.uniform(0, 1, n).astype(np.float32)
        batch["labels"] = (rng.uniform(size=n) > 0.5).astype(np.float32)
    else:
        batch["targets"] = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return batch


def _random_state(module, tx):
    """A TrainState with random parameters of the module's shapes (skips compiling the threefry
    initialisers, which takes seconds per network on CPU and is not what is tested here)."""
    import jax
    import jax.numpy as jnp
    from dns_jax import pretrained
    from dns_jax.training.step import TrainState

    rng = np.random.default_rng(0)
    abstract = dict(pretrained.abstract_variables(module))
    params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype),
                          abstract.pop("params"))
    model_state = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract)   # BatchNorm stats
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params))


def _compare():
    import jax
    import optax
    from dns_jax import pretrained
    from dns_jax.training import step as S

    assert jax.device_count() == 8, jax.devices()
    out = {}
    for network, cfg in NETWORKS.items():
        module = pretrained.build_module(network, cfg)
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
        init = _random_state(module, tx)
        runs = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = S.make_mesh(devices)
            state = jax.device_put(init, S.shardings(mesh)[0])
            step = S.make_train_step(S.make_loss_fn(network, module, 1e-3), tx, mesh)
            losses = []
            for i in range(2):
                state, metrics = step(state, S.global_batch(_batch(network, 8, i), mesh), jax.random.PRNGKey(1))
                losses.append(float(metrics["loss"]))
            if len(devices) == 8:
                sharding = S.global_batch(_batch(network, 8, 0), mesh)["videos"].sharding
                assert len(sharding.device_set) == 8 and not sharding.is_fully_replicated
            runs.append((losses, jax.device_get(state.variables())))
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), runs[0][1], runs[1][1]))
        scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(runs[0][1]))
        out[network] = {"losses_1": runs[0][0], "losses_8": runs[1][0], "max_param_diff": max(diffs),
                        "param_scale": scale}
    print("RESULT " + json.dumps(out))


def test_sharded_step_equals_single_device_step():
    # optimisation level 0 halves the compile time; both sides of the comparison use it
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    results = json.loads(line[len("RESULT "):])
    assert set(results) == set(NETWORKS)
    for network, r in results.items():
        np.testing.assert_allclose(r["losses_8"], r["losses_1"], rtol=2e-5, err_msg=network)
        assert r["losses_1"][0] != r["losses_1"][1], network        # the step did change something
        assert r["max_param_diff"] < 2e-5 * max(1.0, r["param_scale"]), (network, r)


if __name__ == "__main__":
    _compare()
