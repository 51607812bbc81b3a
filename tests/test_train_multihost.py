"""Multi-host training on one machine: two local JAX processes joined by `jax.distributed.initialize`
(coordinator on 127.0.0.1, CPU collectives over gloo), one CPU device each, each loading only its
half of every global batch, train together through `train_and_evaluate`; both end with the same
parameters, equal to those of a single-process run over the same global batches.

Every run is a subprocess executing this file (the process count is fixed when jax starts).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

STEPS = 3
DIMS, REGIONS = 16, 2


def _data(root):
    """(HDF5 features, pair file): 8 random videos, each query with random positives/negatives."""
    from dns_jax.datasets.stores import write_hdf5
    from dns_jax.training.pairs import PairSet, write_pairs

    rng = np.random.default_rng(0)
    videos = {f"v{i}": rng.standard_normal((int(rng.integers(5, 13)), REGIONS, DIMS)).astype(np.float32)
              for i in range(8)}
    pairs = {q: {"positives": {(q + 1) % 8: float(rng.uniform(0.3, 1))},
                 "negatives": {(q + 3) % 8: float(rng.uniform(-1, 0.2)), (q + 5) % 8: 0.0}}
             for q in range(8)}
    return (write_hdf5(videos, os.path.join(root, "features.hdf5")),
            write_pairs(PairSet(sorted(videos), pairs), os.path.join(root, "pairs.json")))


def _run(args):
    """Child process: train, then write this process's final parameters to args['out']."""
    import jax
    from dns_jax.training import default_config, override, train_and_evaluate

    distributed = {}
    if args["num_processes"] > 1:
        distributed = {"distributed.initialize": True,
                       "distributed.coordinator_address": f"127.0.0.1:{args['port']}",
                       "distributed.num_processes": args["num_processes"],
                       "distributed.process_id": args["process_id"]}
    # the coarse student without its Transformer compiles fastest of the students
    config = override(default_config("cg_student"), **distributed, **{
        "dataset": "features", "features": args["features"], "pairs": args["pairs"], "model.dims": DIMS,
        "model.transformer": False, "model.netvlad_clusters": 4, "model.netvlad_outdims": 16,
        "num_train_steps": STEPS, "batch_size": 4, "length_buckets": (16,), "max_augmented_frames": 16,
        "progress_bar": False,
        "learning_rate": 1e-3, "log_every_steps": 1, "checkpoint_every_steps": 1000, "seed": 3})
    result = train_and_evaluate(config, args["workdir"])
    leaves = jax.tree_util.tree_leaves_with_path(result.state.params)
    np.savez(args["out"], **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    print("RESULT " + json.dumps({"process_count": jax.process_count(), "device_count": jax.device_count(),
                                  "step": result.step}), flush=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, data, name, num_processes, process_id, port, workdir, local_devices=1):
    args = dict(features=data[0], pairs=data[1], num_processes=num_processes, process_id=process_id,
                port=port, workdir=str(workdir), out=str(tmp_path / f"{name}.npz"))
    flags = f"--xla_backend_optimization_level=0 --xla_force_host_platform_device_count={local_devices}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, __file__, json.dumps(args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_two_processes_train_like_one(tmp_path):
    data = _data(str(tmp_path))
    port = _free_port()
    procs = [_start(tmp_path, data, f"host{i}", 2, i, port, tmp_path / "multi") for i in range(2)]
    # the single process has 2 devices too, so the gradient is summed in the same order (with 1,
    # Adam turns rounding noise in a near-zero gradient into a difference of the learning rate)
    procs.append(_start(tmp_path, data, "single", 1, 0, 0, tmp_path / "single", local_devices=2))
    done = [_finish(p) for p in procs]
    for rc, out, err in done:
        if rc != 0 and "distributed" in err and ("gloo" in err.lower() or "collective" in err.lower()):
            pytest.skip("JAX CPU multi-process collectives unavailable here: " + err.strip().splitlines()[-1])
        assert rc == 0, err[-4000:]
    info = [json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:]) for _, out, _ in done]
    assert [(i["process_count"], i["device_count"]) for i in info] == [(2, 2), (2, 2), (1, 2)]

    host0, host1, single = (np.load(tmp_path / f"{n}.npz") for n in ("host0", "host1", "single"))
    assert sorted(host0.files) == sorted(single.files) and len(single.files) > 0
    for k in single.files:
        np.testing.assert_array_equal(host0[k], host1[k], err_msg=k)           # one replicated model
        np.testing.assert_allclose(host0[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)
    from dns_jax.training.metric_writers import read_jsonl
    multi, one = read_jsonl(str(tmp_path / "multi")), read_jsonl(str(tmp_path / "single"))
    assert [m["step"] for m in multi] == [1, 2, 3]                               # process 0 alone writes
    np.testing.assert_allclose([m["loss"] for m in multi], [m["loss"] for m in one], rtol=1e-5)
    assert len({m["loss"] for m in one}) == STEPS                                 # training did move


if __name__ == "__main__":
    _run(json.loads(sys.argv[1]))
