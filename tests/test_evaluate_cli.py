"""evaluate.py end to end on a tiny synthetic FIVR-format benchmark (random networks, D=64 features):
the table, sweep.csv / sweep.json / PNGs, missing videos counted as officially, and resuming."""
import csv
import json
import os
import sys

import jax
import numpy as np
import pytest

from dns_jax import checkpoint, pretrained
from dns_jax.evaluation import run as run_lib
from dns_jax.datasets.stores import write_hdf5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluate  # noqa: E402

D = 64
BUDGETS = [0.0, 0.5, 1.0]


def _random_variables(name, config, seed):
    """Random weights of the right shapes (module.init runs op by op: seconds per network here)."""
    rng = np.random.default_rng(seed)
    abstract = pretrained.abstract_variables(pretrained.build_module(name, config))

    def fill(path, leaf):
        key = jax.tree_util.keystr(path)
        if key.endswith("['scale']") or key.endswith("['var']"):
            return np.ones(leaf.shape, leaf.dtype)
        if key.endswith("['bias']") or key.endswith("['mean']"):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module", autouse=True)
def load_once():
    """Each checkpoint is restored for real once, then shared by the later runs of this module (orbax
    restores take ~1 s each here, and shared networks keep their compiled functions)."""
    real, cache = pretrained.load, {}

    def load(name, path, **overrides):
        key = (name, str(path), tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = real(name, path, **overrides)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrained, "load", load)
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    configs = {
        "fine_att": ("fg_att_student", {}),
        "fine_bin": ("fg_bin_student", {"indexing": "bin"}),
        "coarse": ("cg_student", {"transformer_heads": 4, "transformer_feedforward_dims": 32,
                                  "netvlad_clusters": 4, "netvlad_outdims": 32}),
        "sel_att": ("selector", {"hidden_size": 8}),
        "sel_bin": ("selector", {"hidden_size": 8}),
    }
    paths = {}
    for seed, (k, (name, config)) in enumerate(configs.items()):
        paths[k] = str(d / k)
        checkpoint.save_network(paths[k], name, dict(config, dims=D), _random_variables(name, dict(config, dims=D), seed))
    nets = {k: pretrained.load(configs[k][0], paths[k]) for k in configs}
    rng = np.random.default_rng(0)
    queries = {f"q{i}": rng.standard_normal((4 + i, 9, D)).astype(np.float32) for i in range(3)}
    videos, annotation = dict(queries), {}
    for i, (q, x) in enumerate(queries.items()):
        videos[f"nd{i}"] = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
        videos[f"cs{i}"] = rng.standard_normal((3, 9, D)).astype(np.float32)
        annotation[q] = {"ND": [f"nd{i}"], "CS": [f"cs{i}"]}
    for j in range(3):
        videos[f"x{j}"] = rng.standard_normal((1 + 2 * j, 9, D)).astype(np.float32)   # 1, 3, 5 frames
    database = [v for v in videos if not v.startswith("q")] + ["absent"]
    bench = str(d / "bench.json")
    with open(bench, "w") as f:
        json.dump({"format": "dns_jax.evaluation/fivr/1", "name": "toy", "queries": list(queries) + ["q_absent"],
                   "database": database, "annotation": annotation}, f)
    features = write_hdf5(videos, str(d / "features.hdf5"))
    return d, paths, bench, features, videos, nets


def _args(setup, out, *extra):
    d, p, bench, features, _, _ = setup
    return ["--benchmark", bench, "--features", features, "--output_dir", str(out),
            "--fine", p["fine_att"], "--selector", p["sel_att"], "--fine", p["fine_bin"], "--selector", p["sel_bin"],
            "--coarse", p["coarse"], "--teacher", "visil_f", "--budgets", ",".join(map(str, BUDGETS)),
            "--query_batch", "1", "--quiet"] + list(extra)


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    """An interrupted run (killed after its first query) resumed to the end."""
    out = tmp_path_factory.mktemp("evaluate_out")
    original = run_lib.EvaluationRun._compute_group
    calls = []

    def failing(self, queries, offset, total):
        calls.append(list(queries))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, queries, offset, total)

    run_lib.EvaluationRun._compute_group = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate.main(_args(setup, out))
    finally:
        run_lib.EvaluationRun._compute_group = original
    first = run_lib.row_path(str(out), "q0")
    stamp = os.stat(first).st_mtime_ns
    resumed = []

    def counting(self, queries, offset, total):
        resumed.append(list(queries))
        return original(self, queries, offset, total)

    run_lib.EvaluationRun._compute_group = counting
    try:
        assert evaluate.main(_args(setup, out)) == 0
    finally:
        run_lib.EvaluationRun._compute_group = original
    return out, calls, resumed, stamp


def test_resume_skips_done_queries(finished):
    out, calls, resumed, stamp = finished
    assert calls == [["q0"], ["q1"]]
    assert resumed == [["q1"], ["q2"]]               # q0 was not recomputed
    assert os.stat(run_lib.row_path(str(out), "q0")).st_mtime_ns == stamp
    assert sorted(os.listdir(os.path.join(out, "rows"))) == sorted(
        os.path.basename(run_lib.row_path(str(out), q)) for q in ("q0", "q1", "q2"))


def test_outputs_table_csv_json_png(finished, setup, capsys):
    out = finished[0]
    res = json.load(open(os.path.join(out, "sweep.json")))
    assert res["queries"] == {"total": 4, "evaluated": 3}
    assert res["database"] == {"total": 10, "available": 9}
    assert any("q_absent" in n for n in res["notes"]) and any("'absent'" in n for n in res["notes"])
    methods = [r["method"] for r in res["rows"]]
    assert methods[:4] == ["teacher (visil_f)", "fine student (FG-Att)", "fine student (FG-Bin)", "coarse student"]
    assert len(methods) == 4 + 2 * len(BUDGETS)
    by = {m: r for m, r in zip(methods, res["rows"])}
    for label in ("FG-Att", "FG-Bin"):
        # official mixing: budget 0 is the coarse ranking, budget 1 the fine one
        assert by[f"DnS ({label}) 0%"]["mAP"] == by["coarse student"]["mAP"]
        assert by[f"DnS ({label}) 100%"]["mAP"] == by[f"fine student ({label})"]["mAP"]
        t = [by[f"DnS ({label}) {p:.0%}"]["seconds_per_query"] for p in BUDGETS]
        assert t[0] < t[1] < t[2]
    assert set(by["coarse student"]["mAP"]) == {"DSVR", "CSVR", "ISVR"}
    # storage, official accounting: videos under 4 frames count as repeated to 4
    _, _, _, _, videos, _ = setup
    frames = [{1: 4, 3: 6}.get(v.shape[0], v.shape[0]) for k, v in videos.items() if not k.startswith("q")]
    assert by["fine student (FG-Att)"]["bytes_per_video"] == pytest.approx(np.mean(frames) * 9 * D * 4)
    assert by["fine student (FG-Bin)"]["bytes_per_video"] == pytest.approx(np.mean(frames) * 9 * D / 8)
    assert by["coarse student"]["bytes_per_video"] == 32 * 4
    assert by["DnS (FG-Bin) 50%"]["bytes_per_video"] == pytest.approx(np.mean(frames) * 9 * D / 8 + 128 + 4)
    rows = list(csv.DictReader(open(os.path.join(out, "sweep.csv"))))
    assert [r["method"] for r in rows] == methods and rows[-1]["budget"] == "1.00"
    assert float(rows[3]["mAP_DSVR"]) == pytest.approx(by["coarse student"]["mAP"]["DSVR"], abs=1e-6)
    for name in ("sweep_time.png", "sweep_storage.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rows_match_direct_scoring(finished, setup):
    from dns_jax import retrieval
    out = finished[0]
    _, _, _, _, videos, nets = setup
    db = sorted(v for v in videos if not v.startswith("q"))     # the benchmark's database order
    with np.load(run_lib.row_path(str(out), "q1")) as z:
        vectors = retrieval.coarse_index(nets["coarse"], [videos["q1"]] + [videos[v] for v in db])
        np.testing.assert_allclose(z["coarse"], vectors[1:] @ vectors[0], atol=1e-5)
        assert z["fine/FG-Att"].shape == (len(db),) and z["seconds/fine/FG-Att"] > 0


def test_table_printed_and_rerun_is_idempotent(finished, setup, capsys):
    out = finished[0]
    assert evaluate.main(_args(setup, out, "--noplots")) == 0         # everything done: evaluation only
    text = capsys.readouterr().out
    assert "3 of 3 queries already done" in text
    assert "DnS (FG-Bin) 50%" in text and "DSVR" in text and "KB / video" in text
    assert "left out of the mAP, as the official code does" in text


def test_other_networks_refused(finished, setup, capsys):
    out = finished[0]
    _, p, _, _, _, _ = setup
    args = _args(setup, out)
    args[args.index(p["fine_att"])] = p["fine_bin"]
    args[args.index(p["sel_att"])] = p["sel_bin"]
    assert evaluate.main(args) == 2
    assert "holds results of another run" in capsys.readouterr().err


def test_bad_inputs(setup, tmp_path, capsys):
    args = _args(setup, tmp_path / "o")
    args[args.index("--benchmark") + 1] = "nope"
    assert evaluate.main(args) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    partial = write_hdf5({"q0": setup[4]["q0"]}, str(tmp_path / "teacher.hdf5"))
    assert evaluate.main(_args(setup, tmp_path / "t", "--teacher_features", partial)) == 2
    assert "missing from the teacher's features" in capsys.readouterr().err
    args = _args(setup, tmp_path / "o")
    del args[args.index("--coarse"):args.index("--coarse") + 2]
    with pytest.raises(SystemExit) as e:
        evaluate.main(args)
    assert e.value.code == 2 and "--coarse" in capsys.readouterr().err


def test_tfds_features_give_the_same_results(finished, setup, tmp_path):
    from dns_jax.datasets import convert_features
    convert_features(setup[3], str(tmp_path / "tfds"), name="toy", progress=False, log=lambda m: None)
    args = _args(setup, tmp_path / "o", "--noplots")
    args[args.index("--features") + 1] = str(tmp_path / "tfds")
    assert evaluate.main(args) == 0
    got = json.load(open(tmp_path / "o" / "sweep.json"))
    want = json.load(open(os.path.join(finished[0], "sweep.json")))
    assert [r["mAP"] for r in got["rows"]] == [r["mAP"] for r in want["rows"]]
    assert got["database"] == want["database"]


def test_dns_rows_follow_the_official_mixing(finished, setup):
    """DnS at 50 % recomputed from the saved rows as evaluation_dns.py does it: arrays aligned with
    the benchmark database (0 for a missing video), the top int(p * N_available) videos by selector
    score take fine / 2 + 0.5."""
    out = finished[0]
    bench = run_lib.load_benchmark(setup[2])
    database = bench.get_database()
    available = sorted(v for v in setup[4] if not v.startswith("q"))
    mask = np.array([v in available for v in database])
    sims = {}
    for q in ("q0", "q1", "q2"):
        with np.load(run_lib.row_path(str(out), q)) as z:
            full = {k: np.zeros(len(database)) for k in ("coarse", "fine/FG-Att", "selector/FG-Att")}
            for k in full:
                full[k][mask] = z[k]
        order = np.argsort(-full["selector/FG-Att"][mask], kind="stable")[:int(0.5 * mask.sum())]
        mixed = full["coarse"].copy()
        part = mixed[mask]
        part[order] = full["fine/FG-Att"][mask][order] / 2 + 0.5
        mixed[mask] = part
        sims[q] = mixed
    from dns_jax.evaluation import EvaluationWarning
    with pytest.warns(EvaluationWarning, match="q_absent"):       # the query missing from the features
        want = bench.evaluate(sims, all_db=set(available) | {"q0", "q1", "q2"})
    got = {r["method"]: r for r in json.load(open(os.path.join(out, "sweep.json")))["rows"]}["DnS (FG-Att) 50%"]
    assert got["mAP"] == pytest.approx(want, abs=1e-12)
