"""A refused or wrong weights file is one line on stderr and exit status 2, in `convert`, `index`
(index.py) and `retrieve` (retrieve.py) alike; a weightless network is not a wrong one."""
import pathlib
import shutil

import numpy as np
import pytest

from dns_jax import checkpoint, cli
from helpers import network

PTH = pathlib.Path(__file__).parent / "data" / "pth"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    for ref, name in (("fg_att_student", "fine"), ("cg_student", "coarse"), ("selector", "selector")):
        _, net = network(ref)
        checkpoint.save_network(str(root / name), net.name, net.config, net.variables)
    rng = np.random.default_rng(0)
    np.savez(root / "features.npz", **{f"v{i}": rng.standard_normal((5, 9, 512)).astype(np.float32)
                                       for i in range(3)})
    (root / "x.pth").write_text("not weights\n")
    (root / "empty.pth").write_bytes(b"")
    (root / "not_a_checkpoint").mkdir()
    (root / "not_a_checkpoint" / "notes.txt").write_text("hello\n")
    shutil.copy(PTH / "dns_fg_student_ref.pth", root / "dns_cg_student.pth")   # a fine student, misnamed
    return root


def _nets(root, **wrong):
    nets = {"fine": root / "fine", "coarse": root / "coarse", "selector": root / "selector"}
    nets.update(wrong)
    return [a for k, v in nets.items() for a in (f"--{k}", str(v))]


def _one_line_error(capsys, argv, *needles):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and ": error: " in lines[0], err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_wrong_weights_are_one_line(files, tmp_path, capsys):
    r = files
    index = ["index", "--index", str(tmp_path / "idx"), "--features", str(r / "features.npz"), "--quiet"]
    wrong = [({"fine": "fg_att_student:" + str(r / "x.pth")}, "not a PyTorch file"),
             ({"fine": r / "empty.pth"}, "cannot tell the network"),
             ({"fine": "fg_att_student:" + str(r / "empty.pth")}, "is empty"),
             ({"coarse": r / "not_a_checkpoint"}, "not a dns-jax checkpoint"),
             ({"coarse": r / "dns_cg_student.pth"}, "weights do not fit cg_student"),
             ({"coarse": r / "fine"}, "holds a 'fg_att_student' network"),
             ({"selector": "visil_f"}, "expected selector")]
    for nets, needle in wrong:
        _one_line_error(capsys, index + _nets(r, **nets), needle)
    for argv in (["convert", str(r / "x.pth"), str(tmp_path / "c1")],
                 ["convert", "--network", "cg_student", str(r / "dns_cg_student.pth"), str(tmp_path / "c2")],
                 ["convert", str(r / "not_a_checkpoint"), str(tmp_path / "c3")]):
        _one_line_error(capsys, argv)


def test_weightless_fine_network_indexes_and_retrieves(files, tmp_path, capsys):
    """`--fine visil_f` (no weights at all) used to end in 'error: params'."""
    r = files
    assert cli.main(["index", "--index", str(tmp_path / "idx"), "--features", str(r / "features.npz"), "--quiet"]
                    + _nets(r, fine="visil_f")) == 0
    capsys.readouterr()
    assert cli.main(["retrieve", "--index", str(tmp_path / "idx"), "--query-ids", "v0", "--quiet", "--top", "2"]
                    + _nets(r, fine="visil_f")) == 0
    assert '"id": "v0"' in capsys.readouterr().out
    _one_line_error(capsys, ["retrieve", "--index", str(tmp_path / "idx"), "--query-ids", "v0", "--quiet"]
                    + _nets(r), "is not the one the index")
