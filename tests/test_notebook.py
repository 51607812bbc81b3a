"""The quickstart notebook runs: every code cell is executed in order (no Jupyter needed)."""
import json
import pathlib
import subprocess
import sys

from dns_jax import checkpoint, pretrained
from helpers import reference

NOTEBOOK = pathlib.Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_loads_a_checkpoint_and_ranks_the_database(tmp_path, monkeypatch, capsys):
    ref = reference("fg_att_student")
    net = pretrained.load("fg_att_student", ref.state)
    ckpt = tmp_path / "ckpt"
    checkpoint.save_network(str(ckpt), net.name, net.config, net.variables)
    monkeypatch.setenv("DNS_CHECKPOINT", str(ckpt))
    monkeypatch.delenv("DNS_FEATURES", raising=False)
    namespace = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    # (the reference weights are random, so the order itself means nothing; the scores must be the
    # official per-pair ones)
    model, query, database = namespace["model"], namespace["query"], namespace["database"]
    expected = [float(model.calculate_video_similarity(model.index_video(query), model.index_video(t)))
                for t in database]
    got = dict(namespace["ranking"])
    assert sorted(got) == sorted(namespace["ids"])
    for vid, e in zip(namespace["ids"], expected):
        assert abs(got[vid] - e) < 1e-5, vid
    out = capsys.readouterr().out
    assert "fg_att_student" in out and " 6. " in out
