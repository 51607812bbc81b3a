"""`dns-jax query` never loses results: bad queries are reported and the others written, options are
checked before anything is touched, ids stay distinct, reported times stay inside the videos.

The work directory here is assembled from the reference networks (no training), so the module
runs in seconds; `_extract` is replaced by one that decodes the file with the real decoder (so an
unreadable video fails as it would) and turns its frames into features without the backbone.
"""
import json
import os

import numpy as np
import pytest

from dns_jax import checkpoint
from dns_jax.app import query as app_query
from dns_jax.app.query import Searcher, run_query
from dns_jax.app.workdir import Workdir
from dns_jax.datasets.stores import write_hdf5
from dns_jax.index import build_index
from helpers import network
from media import write_audio, write_video

pytest.importorskip("av")

DIMS = 512


def _video_features(seed, frames):
    x = np.random.default_rng(seed).standard_normal((frames, 9, DIMS)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _fake_extract(self, path):
    """Decode with the real decoder (its errors are the real ones), features from the frame count
    and the mean level of the first frame (so two different files give different features)."""
    from dns_jax.features.video import load_video
    frames = load_video(path)
    return _video_features(int(frames[0].mean()), len(frames))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A work directory as `dns-jax build` leaves it, made of the reference networks: videos
    'a'..'d', a 1-frame 'one', a 2-frame 'two' and 'sub/e', 'sub/f' in a subfolder."""
    root = tmp_path_factory.mktemp("query")
    wd = Workdir(str(root / "work"))
    videos = {name: _video_features(i, t) for i, (name, t) in enumerate(
        [("a", 6), ("b", 7), ("c", 5), ("d", 8), ("one", 1), ("two", 2), ("sub/e", 5), ("sub/f", 6)])}
    os.makedirs(os.path.dirname(wd.features))
    write_hdf5(videos, wd.features)
    nets = {}
    for stage, ref in (("fine", "fg_att_student"), ("coarse", "cg_student"), ("selector", "selector")):
        _, net = network(ref)
        path = checkpoint.save_network(wd.model(net.name), net.name, net.config, net.variables)
        nets[stage] = net
        wd.mark_done(stage, {"network": net.name, "path": os.path.dirname(path), "trained": False})
    build_index(wd.index, [wd.features], nets["fine"], nets["coarse"], nets["selector"], progress=False,
                log=lambda *_: None)
    wd.mark_done("index", {"videos": len(videos)})
    state = wd.read_state()
    state["settings"] = {"dims": DIMS}
    wd.write_state(state)
    return root, wd.root, videos


@pytest.fixture
def searcher_extracts(monkeypatch):
    monkeypatch.setattr(Searcher, "_extract", _fake_extract)


def _quiet(*_):
    pass


def test_one_unreadable_query_does_not_lose_the_others(workdir, tmp_path, searcher_extracts):
    root, work, videos = workdir
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    audio = write_audio(tmp_path / "sound.m4a")
    good = write_video(tmp_path / "clip.mp4", n=30, level=40)
    out = tmp_path / "scores.json"
    failures = []
    results = run_query(work, [str(empty), "a", str(text), str(audio), str(good)], stage="fine",
                        output=str(out), log=_quiet, warn=failures.append)
    saved = json.loads(out.read_text())
    assert set(saved) == set(results) == {"a", "clip"}
    assert set(saved["a"]) == set(videos)
    assert all(np.isfinite(list(saved["clip"].values())))
    assert len(failures) == 3 + 1                       # one line per failed query, then the count
    for bad in (empty, text, audio):
        assert any(str(bad) in line for line in failures)


def test_a_query_naming_a_subfolder_is_reported(workdir, tmp_path):
    _, work, _ = workdir
    failures = []
    results = run_query(work, ["sub", "sub/e"], stage="coarse", output=str(tmp_path / "r.json"), log=_quiet,
                        warn=failures.append)
    assert set(results) == {"sub/e"}
    assert any("'sub'" in line and "folder" in line for line in failures)


def test_query_files_with_one_name_keep_distinct_ids(workdir, tmp_path, searcher_extracts):
    _, work, _ = workdir
    first = write_video(tmp_path / "x" / "clip.mp4", n=20, level=10)
    second = write_video(tmp_path / "y" / "clip.mp4", n=40, level=90)
    out = tmp_path / "r.json"
    results = run_query(work, [str(first), str(second), "clip"], stage="coarse", output=str(out), log=_quiet,
                        warn=_quiet)
    saved = json.loads(out.read_text())
    assert len(saved) == 2 and set(saved) == set(results)          # 'clip' (an unknown id) fails
    a, b = saved.values()
    assert a != b                                                  # two queries, two score lists


@pytest.mark.parametrize("option", [{"budget": 2.0}, {"budget": -1.0}, {"budget": float("nan")},
                                    {"top": -3}, {"stage": "exact"}])
def test_bad_options_are_refused_before_anything_is_touched(workdir, tmp_path, option):
    _, work, _ = workdir
    out = tmp_path / "r.json"
    out.write_text('{"kept": {}}')
    with pytest.raises(ValueError):
        run_query(work, ["a"], output=str(out), log=_quiet, warn=_quiet, **option)
    assert out.read_text() == '{"kept": {}}'


def test_output_is_never_replaced_by_an_empty_result(workdir, tmp_path):
    _, work, _ = workdir
    out = tmp_path / "r.json"
    out.write_text('{"kept": {}}')
    results = run_query(work, ["no_such_video"], output=str(out), log=_quiet, warn=_quiet)
    assert results == {} and out.read_text() == '{"kept": {}}'


def test_reported_times_never_exceed_a_video(workdir):
    """The fine student repeats videos shorter than 4 frames; the reported segments must not."""
    _, work, videos = workdir
    searcher = Searcher(work)
    for query, target in (("one", "one"), ("two", "two"), ("one", "a"), ("a", "two"), ("two", "one")):
        segments = searcher._segments(videos[query], target)
        assert segments or query != target, (query, target)     # unrelated videos may match nowhere
        for s in segments:
            assert 0 <= s.query_start < s.query_end <= len(videos[query]), (query, target, str(s))
            assert 0 <= s.target_start < s.target_end <= len(videos[target]), (query, target, str(s))
    assert str(searcher._segments(videos["one"], "one")[0]).startswith("query 0-1s ~ target 0-1s")
    # and through a search: every segment printed for the 1-frame query stays inside it
    res = searcher.search("one", stage="fine", top=3)
    assert all(s.query_end <= 1 for _, _, segs in res.top for s in segs)
    assert len(searcher.search("a", stage="coarse", top=0, segments=0).top) == len(videos)   # 0: all


def test_cli_exit_codes_and_one_line_errors(workdir, tmp_path, capsys):
    from dns_jax import cli
    _, work, _ = workdir
    out = tmp_path / "r.json"
    out.write_text('{"kept": {}}')
    for bad in (["--budget", "nan"], ["--budget", "1.5"], ["--budget", "-1"], ["--budget", "5 videos"], ["--top", "-3"],
                ["--output", str(tmp_path / "missing" / "r.json")]):
        assert cli.main(["query", "--workdir", work, "--output", str(out), *bad, "a"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("dns-jax query: error:"), err
        assert out.read_text() == '{"kept": {}}'
    assert cli.main(["query", "--workdir", work, "--stage", "coarse", "--output", str(out), "--quiet",
                     "a", "no_such_video"]) == 1
    err = capsys.readouterr().err
    assert "no_such_video" in err and "Traceback" not in err
    assert set(json.loads(out.read_text())) == {"a"}
    assert cli.main(["query", "--workdir", work, "--stage", "coarse", "--output", str(out), "--quiet", "b"]) == 0
    assert set(json.loads(out.read_text())) == {"b"}


def test_option_checks_refuse_nan():
    from dns_jax.index.search import check_search_options
    for budget in (float("nan"), float("inf"), 1.5, -0.1):
        with pytest.raises(ValueError, match="budget"):
            check_search_options("dns", budget, 10)
    check_search_options("dns", 0.0, 0)
    assert app_query.unique_query_ids(["x", "x", "y", "x"]) == ["x", "x#2", "y", "x#3"]


def test_segments_and_the_vsc22_csv(workdir, tmp_path):
    """--segments writes every top result's copied segments with the scores; --format vsc the
    VSC22 matching CSV (one row per segment); segments lie inside both videos."""
    from dns_jax.app.query import answer_queries
    from dns_jax.evaluation.vsc import read_matches
    _, work, videos = workdir
    out = tmp_path / "seg.json"
    answer_queries(work, ["a", "one"], "fine", 0.05, str(out), top=0, log=_quiet, warn=_quiet, segments=True)
    doc = json.loads(out.read_text())
    assert set(doc) == {"a", "one"} and set(doc["a"]["scores"]) == set(videos)
    assert doc["a"]["segments"]["a"], "a video matches itself"
    for q, d in doc.items():
        assert set(d["segments"]) <= set(videos)
        for vid, segs in d["segments"].items():
            for s in segs:
                assert 0 <= s["query_start"] < s["query_end"] <= len(videos[q])
                assert 0 <= s["target_start"] < s["target_end"] <= len(videos[vid])
    csv_out = tmp_path / "m.csv"
    answer_queries(work, ["a"], "fine", 0.05, str(csv_out), top=0, log=_quiet, warn=_quiet, output_format="vsc")
    rows = read_matches(str(csv_out))
    want = sum(len(v) for v in doc["a"]["segments"].values())
    assert len(rows) == want and {r.query_id for r in rows} == {"a"}
    assert csv_out.read_text().splitlines()[0] == "query_id,ref_id,query_start,query_end,ref_start,ref_end,score"
    with pytest.raises(ValueError, match="output format"):
        answer_queries(work, ["a"], output_format="xml", log=_quiet, warn=_quiet)


def test_app_segments_are_the_search_results_segments(workdir):
    """`dns-jax query --segments` shows the segments the search itself localized on its fine stage's
    matrices (`search_index(segments=...)`), equal to localizing the pair on its own; results left
    to the coarse stage are marked by the search, and the app localizes them on their pair's matrix."""
    from dns_jax.index.search import search_index
    from dns_jax.localization import COARSE_ONLY, NotLocalized
    _, work, videos = workdir
    searcher = Searcher(work)
    n = len(videos)
    res = searcher.search("a", stage="dns", budget=0.5, top=0, segments=n)
    marked = searcher.search("a", stage="dns", budget=0.5, top=0, segments=n, pair_matrices=False)
    reps = searcher.dns.index([videos["a"]], ["a"])
    api = search_index(searcher.dns, searcher.index, reps, "dns", 0.5, topk=None, segments=n,
                       fine_mapping=searcher.fine_mapping())
    assert api.reranked[0].sum() == 4 and len(res.top) == n
    for rank, ((vid, _, segs), (_, _, only)) in enumerate(zip(res.top, marked.top)):
        assert searcher.index.ids[api.ranking[0][rank]] == vid
        assert [str(s) for s in only] == [str(s) for s in api.segments[0][rank]]
        assert [str(s) for s in segs] == [str(s) for s in searcher._segments(videos["a"], vid)], vid
        if not api.reranked[0][rank]:
            assert isinstance(only, NotLocalized) and only.reason == COARSE_ONLY
