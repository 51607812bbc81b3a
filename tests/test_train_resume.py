"""Preemption: `train.py` killed with SIGKILL midway, stopped with SIGTERM, then rerun with the same
command, ends with exactly the parameters of an uninterrupted run with the same seed.

The runs train on an official-layout HDF5 feature file with an official-layout pickled pair file.
All runs are subprocesses sharing a persistent compilation cache, so only the first one compiles.
"""
import os
import pickle
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dns_jax import pretrained
from dns_jax.datasets import synthetic
from dns_jax.datasets.stores import MemoryFeatures, write_hdf5
from dns_jax.training.teacher import select_pairs, teacher_scorer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 100
SYNTH = dict(dims=32, regions=4, num_families=10, family_size=3, num_distractors=10, min_frames=6,
             max_frames=16, holdout_families=2)


def _steps(workdir):
    if not os.path.isdir(workdir):
        return []
    return sorted(int(d) for d in os.listdir(workdir) if d.isdigit())


def _command(workdir, data):
    features, pairs = data
    return [sys.executable, os.path.join(REPO, "train.py"),
            "--config", os.path.join(REPO, "configs", "fg_att_student.py") + ":synthetic", "--workdir", workdir,
            "--config.dataset=features", f"--config.features={features}", f"--config.pairs={pairs}",
            f"--config.num_train_steps={STEPS}", "--config.model.dims=32",
            "--config.checkpoint_every_steps=10", "--config.keep_checkpoints=2", "--config.batch_size=4",
            "--config.length_buckets=(16,)", "--config.max_augmented_frames=16", "--config.progress_bar=False",
            "--config.learning_rate=0.001", "--config.log_every_steps=40", "--config.seed=7"]


def _start(workdir, pairs, env):
    return subprocess.Popen(_command(workdir, pairs), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _interrupt_when(proc, workdir, min_step, sig, timeout=300):
    """Send `sig` once a checkpoint of step >= min_step is committed; return the exit code."""
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if any(s >= min_step for s in _steps(workdir)):
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(HDF5 features, official pickled pair file: {'index': [...], 'pairs': {q: {'positives':
    {t: sim}, 'negatives': {t: sim}}}})."""
    root = tmp_path_factory.mktemp("data")
    col = synthetic.make_collection(**SYNTH, seed=0)
    store = MemoryFeatures(col.videos)
    ps = select_pairs(store, teacher_scorer("visil_f", dims=32), col.train_ids, num_candidates=12,
                      num_positives=3, num_negatives=6, log=lambda *a: None)
    with open(root / "trainset_similarities_teacher.pk", "wb") as f:
        pickle.dump({"index": ps.index, "pairs": ps.pairs}, f)
    features = write_hdf5(col.videos, str(root / "features.hdf5"))
    return features, str(root / "trainset_similarities_teacher.pk")


def test_killed_and_stopped_runs_resume_to_the_uninterrupted_result(tmp_path, data):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
               XLA_FLAGS="--xla_backend_optimization_level=0",   # compiles twice as fast
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    reference = str(tmp_path / "reference")
    done = subprocess.run(_command(reference, data), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(reference)[-1] == STEPS

    work = str(tmp_path / "work")
    rc, err = _interrupt_when(_start(work, data, env), work, 10, signal.SIGKILL)
    assert rc == -signal.SIGKILL, err[-2000:]
    killed_at = _steps(work)
    assert killed_at and killed_at[-1] < STEPS, "the run finished before it could be killed"

    rc, err = _interrupt_when(_start(work, data, env), work, killed_at[-1] + 10, signal.SIGTERM)
    assert rc == 0, err[-3000:]
    assert f"resumed {work} from step {killed_at[-1]}" in err
    stopped_at = _steps(work)[-1]
    assert stopped_at < STEPS, "the run finished before SIGTERM arrived"
    assert "stop requested" in err

    done = subprocess.run(_command(work, data), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"from step {stopped_at}" in done.stderr
    assert _steps(work)[-1] == STEPS

    a = pretrained.load("fg_att_student", work).variables
    b = pretrained.load("fg_att_student", reference).variables
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
