"""Training end to end on small synthetic collections: a fine-grained student distilled from the
project's ViSiL_f learns the teacher, a selector learns a separable label, the workdir loads with
dns_jax.pretrained, and bad inputs give clear errors."""
import logging
import os

import jax
import numpy as np
import pytest

from dns_jax import checkpoint, pretrained
from dns_jax.training import (ConfigError, PairFileError, PairSet, TrainingError, default_config,
                              override, train_and_evaluate, write_pairs)
from dns_jax.datasets import synthetic
from dns_jax.training.evaluators import SyntheticEvaluator
from dns_jax.datasets.stores import MemoryFeatures
from dns_jax.training.metric_writers import read_jsonl
from dns_jax.training.step import init_state, make_optimizer
from dns_jax.models.registry import NetworkSpecError
from dns_jax.pretrained import load_teacher
from dns_jax.training.teacher import select_pairs, teacher_scorer

DIMS, REGIONS = 32, 4
SYNTHETIC = {"synthetic.dims": DIMS, "synthetic.regions": REGIONS, "synthetic.num_families": 16,
             "synthetic.family_size": 4, "synthetic.num_distractors": 24, "synthetic.min_frames": 6,
             "synthetic.max_frames": 16, "synthetic.holdout_families": 4, "model.dims": DIMS}
FAST = {"length_buckets": (16,), "max_augmented_frames": 16, "progress_bar": False,
        "checkpoint_every_steps": 100, "log_every_steps": 50, "batch_size": 8, "learning_rate": 1e-3}
GHOSTS = ["ghost_a", "ghost_b"]


def _collection():
    c = default_config("fg_att_student").synthetic
    return synthetic.make_collection(**{k.split(".")[1]: v for k, v in SYNTHETIC.items()
                                        if k.startswith("synthetic.")}, seed=c.seed)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def fg_run(tmp_path_factory):
    """FG-Att student, 300 steps on the synthetic collection, with a pair file that also names two
    videos the collection lacks."""
    root = tmp_path_factory.mktemp("fg")
    col = _collection()
    store = MemoryFeatures(col.videos)
    pairs = select_pairs(store, teacher_scorer("visil_f", dims=DIMS), col.train_ids, num_candidates=24,
                         num_positives=4, num_negatives=8, log=lambda *a: None)
    n = len(pairs.index)
    index = pairs.index + GHOSTS
    pairs.pairs[0]["negatives"][n] = 0.05        # pairs that name missing videos
    pairs.pairs[n + 1] = {"positives": {1: 0.5}, "negatives": {2: 0.1}}
    pair_file = write_pairs(PairSet(index, pairs.pairs, pairs.meta), str(root / "pairs.json"))
    config = override(default_config("fg_att_student"), **SYNTHETIC, **FAST, pairs=pair_file,
                      num_train_steps=300, **{"validation.dataset": "synthetic",
                                              "validation.every_steps": 150})
    records = _Records()
    logging.getLogger("dns_jax.training").addHandler(records)
    try:
        result = train_and_evaluate(config, str(root / "work"))
    finally:
        logging.getLogger("dns_jax.training").removeHandler(records)
    return dict(result=result, workdir=str(root / "work"), config=config, col=col, store=store,
                warnings=records.messages)


def test_student_learns_the_teacher(fg_run):
    result, config, col = fg_run["result"], fg_run["config"], fg_run["col"]
    module = pretrained.build_module("fg_att_student", {"dims": DIMS, "indexing": "att"})
    evaluator = SyntheticEvaluator("fg_att_student", module, fg_run["store"], col.holdout_ids, col.family,
                                   teacher_scorer("visil_f", dims=DIMS))
    init = init_state(module, make_optimizer(1e-3), jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
    before = evaluator.run(init.variables())
    after = result.validation
    assert result.step == 300
    assert after["l1_to_teacher"] < 0.35 * before["l1_to_teacher"], (before, after)
    assert after["spearman"] > before["spearman"] + 0.1 and after["spearman"] > 0.75, (before, after)
    losses = [m["distillation_loss"] for m in read_jsonl(fg_run["workdir"]) if "distillation_loss" in m]
    assert losses[-1] < 0.5 * losses[0]
    assert [h["step"] for h in result.history] == [150, 300]


def test_missing_videos_are_reported_and_skipped(fg_run):
    msg = " ".join(fg_run["warnings"])
    assert "2 of" in msg and "ghost_a" in msg and "skipping 3 pairs and 1 queries" in msg
    with open(os.path.join(fg_run["workdir"], "missing_videos.txt")) as f:
        assert f.read().split() == GHOSTS


def test_workdir_loads_with_pretrained(fg_run):
    result, workdir = fg_run["result"], fg_run["workdir"]
    net = pretrained.load("fg_att_student", workdir)
    assert net.config["dims"] == DIMS
    for a, b in zip(jax.tree.leaves(net.variables["params"]), jax.tree.leaves(result.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    video = fg_run["store"][fg_run["col"].holdout_ids[0]]
    x = net.index_video(video)
    assert float(net.calculate_video_similarity(x, x)) > 0.5
    best = pretrained.load("fg_att_student", os.path.join(workdir, "best"))
    assert checkpoint.read_meta(os.path.join(workdir, "best"))[1]["validation"]["metric"] == "spearman"
    assert best.config == net.config
    assert sorted(int(d) for d in os.listdir(workdir) if d.isdigit()) == [100, 200, 300][-3:]
    logged = read_jsonl(workdir)
    assert {"loss", "learning_rate", "triplets_per_second", "val/spearman"} <= set().union(*logged)
    import importlib.util
    if importlib.util.find_spec("tensorboardX") is None:   # optional: events only when installed
        return
    assert any(f.startswith("events.") for f in os.listdir(os.path.join(workdir, "tensorboard")))


def test_trained_student_is_the_next_teacher(fg_run):
    """Iterative distillation: a training workdir is a teacher; its padded batched scores equal
    the official one-pair evaluation."""
    name, net = load_teacher(fg_run["workdir"])
    assert name == "fg_att_student"
    scorer = teacher_scorer(fg_run["workdir"], batch_size=4)
    store, ids = fg_run["store"], fg_run["col"].train_ids
    pairs = [(ids[0], ids[1]), (ids[1], ids[0]), (ids[2], ids[-1]), (ids[-1], ids[-1])]
    got = scorer.score(store, pairs)
    want = [float(net.calculate_video_similarity(net.index_video(store[q]), net.index_video(store[t])))
            for q, t in pairs]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_checkpoint_of_another_network(fg_run, tmp_path):
    config = override(default_config("cg_student"), **SYNTHETIC, **FAST, num_train_steps=2)
    with pytest.raises(TrainingError, match="'fg_att_student' network.*trains 'cg_student'"):
        train_and_evaluate(config, fg_run["workdir"])
    with pytest.raises(checkpoint.CheckpointError, match="fg_att_student"):
        pretrained.load("cg_student", fg_run["workdir"])
    other = override(fg_run["config"], **{"model.dims": 16, "synthetic.dims": 16})
    with pytest.raises(TrainingError, match="other options.*dims"):
        train_and_evaluate(other, fg_run["workdir"])


def test_init_from_a_trained_workdir(fg_run, tmp_path):
    """config.init_from = a training workdir: the run starts from its latest parameters (with a
    learning rate of 1e-12 one step leaves them as they were, far from a fresh initialisation)."""
    config = override(fg_run["config"], init_from=fg_run["workdir"], num_train_steps=1, learning_rate=1e-12,
                      **{"validation.dataset": ""})
    result = train_and_evaluate(config, str(tmp_path / "finetune"))
    assert result.step == 1
    trained = pretrained.load("fg_att_student", fg_run["workdir"]).variables["params"]
    module = pretrained.build_module("fg_att_student", {"dims": DIMS, "indexing": "att"})
    fresh = init_state(module, make_optimizer(1e-3), jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
    far = 0.0
    for got, want, rand in zip(*(jax.tree.leaves(t) for t in (result.state.params, trained, fresh.params))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-9)
        far = max(far, float(np.max(np.abs(np.asarray(want) - np.asarray(rand)))))
    assert far > 1e-3                       # the trained parameters are not the fresh ones
    narrow = override(config, **{"model.dims": 16, "synthetic.dims": 16})
    with pytest.raises(ConfigError, match="holds a fg_att_student of another shape"):
        train_and_evaluate(narrow, str(tmp_path / "narrow"))
    other = override(default_config("cg_student"), **SYNTHETIC, **FAST, num_train_steps=1,
                     pairs=fg_run["config"].pairs, init_from=fg_run["workdir"])
    with pytest.raises(checkpoint.CheckpointError, match="'fg_att_student' network, not 'cg_student'"):
        train_and_evaluate(other, str(tmp_path / "cg"))


def test_empty_pair_file_and_dimension_mismatch(tmp_path):
    empty = tmp_path / "empty.pk"
    empty.write_bytes(b"")
    config = override(default_config("fg_att_student"), **SYNTHETIC, **FAST, pairs=str(empty))
    with pytest.raises(PairFileError, match="empty"):
        train_and_evaluate(config, str(tmp_path / "w1"))
    with pytest.raises(ConfigError, match="synthetic collection is 32-d but model.dims is 512"):
        train_and_evaluate(override(config, **{"model.dims": 512}), str(tmp_path / "w2"))


@pytest.fixture(scope="module")
def selector_run(tmp_path_factory):
    """Selector on pair files whose label is 'coarse similarity > 0.5' (separable)."""
    root = tmp_path_factory.mktemp("sel")
    col = _collection()
    rng = np.random.default_rng(0)
    ids = col.train_ids
    fine, coarse = {}, {}
    for q in range(len(ids)):
        for t in rng.choice(len(ids), 12, replace=False):
            if t == q:
                continue
            c = float(rng.uniform(0.0, 1.0))
            f_unit = c - 0.4 if c > 0.5 else c + float(rng.uniform(-0.1, 0.1))
            kind = "positives" if c > 0.5 else "negatives"
            fine.setdefault(q, {"positives": {}, "negatives": {}})[kind][int(t)] = 2 * f_unit - 1
            coarse.setdefault(q, {"positives": {}, "negatives": {}})[kind][int(t)] = c
    fine_file = write_pairs(PairSet(list(ids), fine), str(root / "fine.json"))
    coarse_file = write_pairs(PairSet(list(ids), coarse), str(root / "coarse.npz"))
    config = override(default_config("selector"), **{
        **SYNTHETIC, **FAST, "num_train_steps": 150, "batch_size": 16, "selector.fine_pairs": fine_file,
        "selector.coarse_pairs": coarse_file, "selector.val_size": 0.2, "validation.every_steps": 1000})
    return dict(result=train_and_evaluate(config, str(root / "work")), workdir=str(root / "work"))


def test_selector_learns_a_separable_label(selector_run):
    result = selector_run["result"]
    assert result.validation["accuracy"] > 0.9, result.validation
    assert result.validation["f1"] > 0.85, result.validation
    net = pretrained.load("selector", selector_run["workdir"])
    assert set(net.variables) == {"params", "batch_stats"}
    col = _collection()
    s = float(np.asarray(net.index_video(col.videos[col.train_ids[0]]))[0, 0])
    probs = np.asarray(net(np.array([[s, s, 0.95], [s, s, 0.05]], np.float32)))[:, 0]
    assert probs[0] > 0.5 > probs[1]


def test_selector_is_no_teacher(selector_run):
    with pytest.raises(NetworkSpecError, match="'selector' network"):
        load_teacher(selector_run["workdir"])


@pytest.mark.filterwarnings("ignore::dns_jax.evaluation.EvaluationWarning")  # 48 of 50 queries absent
def test_fivr_validation_on_a_tiny_feature_file(tmp_path):
    """FIVR-5K validation with the user's features: two queries, each with a near copy among ten
    database videos; an identity-like student ranks the copies first (DSVR > 0)."""
    from dns_jax.evaluation import FIVR
    from dns_jax.training.evaluators import FIVREvaluator
    from dns_jax.datasets.stores import write_hdf5

    fivr = FIVR("5k")
    db = set(fivr.get_database())
    queries = fivr.get_queries()[:2]
    rng = np.random.default_rng(0)
    videos, database = {}, []
    for q in queries:
        videos[q] = rng.standard_normal((12, 2, 8)).astype(np.float32)
        copy = sorted(v for v in fivr.annotation[q]["ND"] if v in db)[0]
        videos[copy] = videos[q] + 0.05 * rng.standard_normal((12, 2, 8)).astype(np.float32)
        database.append(copy)
    for v in sorted(db - set(database))[:8]:
        videos[v] = rng.standard_normal((10, 2, 8)).astype(np.float32)
    path = write_hdf5(videos, str(tmp_path / "fivr5k.hdf5"))
    module = pretrained.build_module("fg_student", {"dims": 8, "indexing": "none"})
    variables = module.init(jax.random.PRNGKey(0), method="init_all")
    result = FIVREvaluator("fg_student", module, path, batch_size=8).run(variables)
    assert set(result) == {"DSVR", "CSVR", "ISVR"}
    assert 0.0 < result["DSVR"] <= 1.0


def test_teacher_job_command_line(tmp_path):
    """`dns-jax pairs` writes a pair file the trainer reads."""
    import subprocess
    import sys
    from dns_jax.training import read_pairs
    from dns_jax.datasets.stores import write_hdf5

    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 9, 2, 16)).astype(np.float32)
    videos = {f"v{i}": base[i // 2] + 0.1 * rng.standard_normal((9, 2, 16)).astype(np.float32) for i in range(12)}
    features = write_hdf5(videos, str(tmp_path / "f.hdf5"))
    out = str(tmp_path / "pairs.npz")
    proc = subprocess.run([sys.executable, "-m", "dns_jax.cli", "pairs", f"--features={features}",
                           f"--output={out}", "--num-candidates=3", "--num-positives=1", "--num-negatives=2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ps = read_pairs(out)
    assert ps.meta["teacher"] == "visil_f" and len(ps.pairs) == 12
    for q, pools in ps.pairs.items():        # each video's copy is its positive
        (t,) = pools["positives"]
        assert int(ps.index[t][1:]) // 2 == int(ps.index[q][1:]) // 2
        assert len(pools["negatives"]) == 4
