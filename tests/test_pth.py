"""Tests for ``dns_jax.pth``: reading torch.save files without torch.

Fixtures under ``tests/data/pth/`` were written by real torch 2.13 with
``make_fixtures.py``; ``expected.npz`` holds torch's own values for every
tensor, so these tests compare our reader against torch, never against
itself.  Malicious files are written here with plain ``pickle`` / hand-made
pickle opcodes, no torch needed.
"""

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from dns_jax import pth
from dns_jax.pth import ArgsNamespace, PthError, PthFileNotFoundError

DATA = Path(__file__).parent / "data" / "pth"
FORMATS = ["zip", "legacy"]
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STATE_DICT_KEYS = [
    "float32", "float64", "int64", "int32", "int8", "uint8", "uint16", "float16",
    "bool", "bfloat16", "float8_e4m3fn", "scalar", "empty", "transposed", "strided",
    "expanded", "shared_a", "shared_b", "param", "param_with_state", "complex_conj",
    "neg_bit",
]
# torch has these dtypes natively; the rest are checked against torch's float32 widening.
TORCH_DTYPES = {
    "float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32,
    "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "float16": np.float16,
    "bool": np.bool_, "bfloat16": np.float32, "float8_e4m3fn": np.float32,
    "complex_conj": np.complex64,
}


@pytest.fixture(scope="module")
def expected():
    """Torch's values, keyed ``<fixture stem>/<name>``."""
    with np.load(DATA / "expected.npz") as npz:
        return {key: npz[key] for key in npz.files}


def _expected_under(expected, prefix):
    """The expected arrays whose key starts with ``prefix/``, prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in expected.items() if k.startswith(prefix + "/")}


def _assert_same(actual, wanted, name):
    """Same dtype, shape and values (NaNs equal) as torch's array."""
    assert isinstance(actual, np.ndarray), f"{name}: {type(actual)}"
    assert actual.dtype == wanted.dtype, f"{name}: {actual.dtype} != {wanted.dtype}"
    assert actual.shape == wanted.shape, f"{name}: {actual.shape} != {wanted.shape}"
    np.testing.assert_array_equal(actual, wanted, err_msg=name)


# ---------------------------------------------------------------------------
# Real torch fixtures
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_matches_torch(fmt, expected):
    loaded = pth.load(DATA / f"state_dict_{fmt}.pth")
    wanted = _expected_under(expected, "state_dict")
    assert list(loaded) == STATE_DICT_KEYS
    assert sorted(wanted) == sorted(STATE_DICT_KEYS)
    for name in STATE_DICT_KEYS:
        _assert_same(loaded[name], wanted[name], name)
    for name, dtype in TORCH_DTYPES.items():
        assert loaded[name].dtype == dtype, name
    assert loaded["scalar"].shape == () and loaded["scalar"] == np.float32(3.25)


@pytest.mark.parametrize("fmt", FORMATS)
def test_arrays_are_contiguous_owned_and_independent(fmt, expected):
    loaded = pth.load(DATA / f"state_dict_{fmt}.pth")
    for name, value in loaded.items():
        assert value.flags.c_contiguous and value.flags.writeable, name
    # shared_a = storage[2:6], shared_b = storage[4:10]: they overlap in torch.
    loaded["shared_a"][:] = -1.0
    _assert_same(loaded["shared_b"], expected["state_dict/shared_b"], "shared_b")
    loaded["transposed"][:] = -1.0
    _assert_same(loaded["strided"], expected["state_dict/strided"], "strided")


def test_zip_fixture_really_shares_storages():
    """Guard that the fixture exercises shared storages and the conj/neg bits."""
    with zipfile.ZipFile(DATA / "state_dict_zip.pth") as zf:
        records = [n for n in zf.namelist() if "/data/" in n]
        pickled = zf.read("state_dict_zip/data.pkl")
    assert len(records) < len(STATE_DICT_KEYS) - 1  # 'empty' still gets a record
    assert b"neg" in pickled and b"conj" in pickled


@pytest.mark.parametrize("fmt", FORMATS)
def test_dns_checkpoint_matches_torch(fmt, expected):
    ckpt = pth.load(DATA / f"dns_checkpoint_{fmt}.pth")
    assert sorted(ckpt) == ["args", "global_step", "model", "optimizer"]
    assert ckpt["global_step"] == 5
    model = _expected_under(expected, "dns_checkpoint/model")
    assert sorted(ckpt["model"]) == sorted(model)
    for name, value in model.items():
        _assert_same(ckpt["model"][name], value, name)
    assert isinstance(ckpt["model"], OrderedDict)
    assert "norm" in ckpt["model"]._metadata  # torch's state_dict metadata survives
    state = _expected_under(expected, "dns_checkpoint/optimizer/state")
    assert state, "fixture must hold optimizer state"
    for name, value in state.items():
        index, field = name.split("/")
        _assert_same(ckpt["optimizer"]["state"][int(index)][field], value, name)
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["lr"] == 1e-4 and group["betas"] == (0.9, 0.999)
    assert group["params"] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("fmt", FORMATS)
def test_argparse_namespace_becomes_plain_data(fmt):
    args = pth.load(DATA / f"dns_checkpoint_{fmt}.pth")["args"]
    assert isinstance(args, ArgsNamespace) and isinstance(args, dict)
    assert args.lr == 1e-4 and args["batch_sz"] == 64
    assert dict(args) == {
        "lr": 1e-4, "batch_sz": 64, "student_type": "fine-grained", "attention": True,
        "dims": 512, "experiment_path": "experiments/DnS_students", "weight_decay": 0.0,
        "teacher": None,
    }
    with pytest.raises(AttributeError):
        args.missing


def test_bare_parameter_and_itq_like(expected):
    _assert_same(pth.load(DATA / "parameter.pth"), expected["parameter"], "parameter")
    itq = pth.load(DATA / "itq_like.pth")
    assert list(itq) == ["proj"]
    _assert_same(itq["proj"], expected["itq_like/proj"], "proj")


def test_big_endian_zip(tmp_path, expected):
    """A zip whose byteorder record says 'big' (written by a big-endian host)."""
    target = tmp_path / "big.pth"
    with zipfile.ZipFile(DATA / "itq_like.pth") as src, zipfile.ZipFile(target, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name and not name.endswith("serialization_id"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(name, data)
    proj = pth.load(target)["proj"]
    _assert_same(proj, expected["itq_like/proj"], "proj")
    assert proj.dtype.isnative


def test_accepts_str_paths(expected):
    loaded = pth.load(str(DATA / "itq_like.pth"))
    _assert_same(loaded["proj"], expected["itq_like/proj"], "proj")


# ---------------------------------------------------------------------------
# load_state_dict
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_state_dict_unwraps_model(fmt, expected):
    sd = pth.load_state_dict(DATA / f"dns_checkpoint_{fmt}.pth")
    model = _expected_under(expected, "dns_checkpoint/model")
    assert type(sd) is dict and sorted(sd) == sorted(model)
    for name, value in model.items():
        _assert_same(sd[name], value, name)


def test_load_state_dict_bare_and_from_object(expected):
    sd = pth.load_state_dict(DATA / "state_dict_zip.pth")
    assert list(sd) == STATE_DICT_KEYS
    _assert_same(sd["bfloat16"], expected["state_dict/bfloat16"], "bfloat16")
    wrapped = {"state_dict": {"w": np.ones(2)}, "epoch": 3}
    assert list(pth.load_state_dict(wrapped)) == ["w"]
    itq = pth.load_state_dict(DATA / "itq_like.pth")
    _assert_same(itq["proj"], expected["itq_like/proj"], "proj")


def test_load_state_dict_explicit_key(expected):
    ckpt = pth.load(DATA / "dns_checkpoint_zip.pth")
    sd = pth.load_state_dict(ckpt, key="model")
    _assert_same(sd["proj.weight"], expected["dns_checkpoint/model/proj.weight"], "proj.weight")
    with pytest.raises(PthError, match=r"no entry 'nope'.*keys \['args', 'global_step'"):
        pth.load_state_dict(ckpt, key="nope")
    with pytest.raises(PthError, match="entry 'optimizer'.*holds no state dict"):
        pth.load_state_dict(ckpt, key="optimizer")


def test_load_state_dict_refuses_non_state_dicts():
    with pytest.raises(PthError, match=r"parameter.pth'.*holds no state dict.*ndarray"):
        pth.load_state_dict(DATA / "parameter.pth")
    with pytest.raises(PthError, match="holds no state dict.*'global_step'"):
        pth.load_state_dict({"global_step": 5, "model": {"w": "not an array"}})
    with pytest.raises(PthError, match="holds no state dict"):
        pth.load_state_dict({})


# ---------------------------------------------------------------------------
# Helpers that write torch-shaped files without torch
# ---------------------------------------------------------------------------


def _write_zip(path, pickled, records=(), prefix="archive"):
    """A zip laid out like torch's: data.pkl, data/<key>, byteorder, version."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", pickled)
        zf.writestr(f"{prefix}/byteorder", b"little")
        for key, data in records:
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", b"3\n")
    return path


def _write_legacy(path, main_pickle, keys=(), storages=b"", magic=None):
    """The legacy layout: magic, protocol, sys info, main pickle, keys, storages."""
    header = magic if magic is not None else pickle.dumps(LEGACY_MAGIC, protocol=2)
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    body = (header + pickle.dumps(1001, protocol=2) + pickle.dumps(sys_info, protocol=2)
            + main_pickle + pickle.dumps(list(keys), protocol=2) + storages)
    path.write_bytes(body)
    return path


def _unicode(text):
    """BINUNICODE opcode."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    """BININT opcode (signed 32-bit)."""
    return b"J" + struct.pack("<i", value)


def _tuple(values):
    """MARK ... TUPLE of ints."""
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _tensor_pickle(offset, size, stride, numel, key="0", legacy=False):
    """Hand-written pickle of ``{'w': tensor}`` as torch writes it (protocol 2)."""
    pid = (b"(" + _unicode("storage") + b"ctorch\nFloatStorage\n" + _unicode(key)
           + _unicode("cpu") + _int(numel) + (b"N" if legacy else b"") + b"t")
    args = (b"(" + pid + b"Q" + _int(offset) + _tuple(size) + _tuple(stride)
            + b"\x89" + b"ccollections\nOrderedDict\n)R" + b"t")
    return (b"\x80\x02}" + _unicode("w") + b"ctorch._utils\n_rebuild_tensor_v2\n"
            + args + b"Rs.")


def _storage_bytes(values):
    """Raw little-endian float32 storage bytes."""
    return np.asarray(values, "<f4").tobytes()


def test_hand_written_helpers_match_torch_layout(tmp_path):
    """Positive control: our hand-made files load, so the refusals below are meaningful."""
    values = np.arange(6, dtype=np.float32)
    zipped = _write_zip(tmp_path / "ok.pth", _tensor_pickle(1, (2, 2), (1, 2), 6),
                        [("0", _storage_bytes(values))])
    np.testing.assert_array_equal(pth.load(zipped)["w"], [[1, 3], [2, 4]])
    legacy = _write_legacy(tmp_path / "ok_legacy.pth",
                           _tensor_pickle(0, (3,), (2,), 6, legacy=True), ["0"],
                           struct.pack("<q", 6) + _storage_bytes(values))
    np.testing.assert_array_equal(pth.load(legacy)["w"], [0, 2, 4])


# ---------------------------------------------------------------------------
# Malicious files
# ---------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``; nothing of this class is in the pickle."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    """Pickled objects that would create ``marker`` if unpickled naively."""
    import subprocess

    touch = f"touch {marker}"
    return {
        "os.system": (_Reduce(os.system, touch), "system"),
        "builtins.eval": (_Reduce(eval, f"__import__('os').system({touch!r})"), "builtins.eval"),
        "builtins.exec": (_Reduce(exec, f"import os; os.system({touch!r})"), "builtins.exec"),
        "subprocess.Popen": (_Reduce(subprocess.Popen, ["touch", str(marker)]),
                             "subprocess.Popen"),
    }


PAYLOAD_NAMES = ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen"]


def test_payloads_are_live(tmp_path):
    """Positive control: plain pickle really runs the os.system payload."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_payloads(marker)["os.system"][0], protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_reduce_is_refused(tmp_path, fmt, payload):
    marker = tmp_path / "pwned"
    evil, forbidden = _payloads(marker)[payload]
    obj = {"model": OrderedDict(w=1.0), "args": evil}
    pickled = pickle.dumps(obj, protocol=2)
    path = tmp_path / "evil.pth"
    if fmt == "zip":
        _write_zip(path, pickled)
    else:
        _write_legacy(path, pickled)
    with pytest.raises(PthError, match=r"refusing to load '.*evil\.pth': it asks for "
                                       + r"[\w.]*" + forbidden.split(".")[-1]) as info:
        pth.load(path)
    assert "only tensors and containers are allowed" in str(info.value)
    assert not marker.exists()


def test_malicious_legacy_magic_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_payloads(marker)["os.system"][0], protocol=2)
    path = _write_legacy(tmp_path / "evil.pth", pickle.dumps({}), magic=evil)
    with pytest.raises(PthError, match=r"it asks for (posix|os|nt)\.system"):
        pth.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", [
    b"torch\nload\n", b"torch._utils\n_rebuild_qtensor\n", b"torch.storage\n_load_from_bytes\n",
    b"builtins\ngetattr\n", b"__builtin__\neval\n", b"copyreg\n_reconstructor\n",
    b"numpy.core.multiarray\n_reconstruct\n", b"torch\nQInt8Storage\n",
])
def test_other_globals_are_refused(tmp_path, global_name):
    pickled = b"\x80\x02c" + global_name + b")R."
    path = _write_zip(tmp_path / "g.pth", pickled)
    module, name = global_name.decode().split()
    with pytest.raises(PthError, match=rf"refusing to load .*{module}\.{name}"):
        pth.load(path)


def test_pickled_module_source_is_refused(tmp_path):
    class _ModulePickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj == "NET":
                return ("module", "Net", "net.py", "class Net: ...")
            return None

    buffer = io.BytesIO()
    _ModulePickler(buffer, protocol=2).dump({"net": "NET"})
    path = _write_legacy(tmp_path / "module.pth", buffer.getvalue())
    with pytest.raises(PthError, match="pickled nn.Module"):
        pth.load(path)


@pytest.mark.parametrize("offset,size,stride,message", [
    (0, (4, 4), (4, 1), "reaches element 15 of a storage with only 6"),
    (5, (2,), (1,), "reaches element 6"),
    (0, (2,), (-1,), "non-negative ints"),
    (-1, (2,), (1,), "offset must be an int >= 0"),
    (0, (2, 2), (1,), "differ in rank"),
])
def test_out_of_bounds_geometry_is_refused(tmp_path, offset, size, stride, message):
    path = _write_zip(tmp_path / "oob.pth", _tensor_pickle(offset, size, stride, 6),
                      [("0", _storage_bytes(np.zeros(6)))])
    with pytest.raises(PthError, match=message):
        pth.load(path)


# ---------------------------------------------------------------------------
# Not a torch file / damaged files
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(PthFileNotFoundError, match=r"cannot load '.*nope\.pth': no such file"):
        pth.load(path)
    with pytest.raises(FileNotFoundError):
        pth.load_state_dict(path)


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(PthError, match="is a directory"):
        pth.load(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(PthError, match=r"empty\.pth' is empty"):
        pth.load(tmp_path / "empty.pth")


@pytest.mark.parametrize("head", [b"", b"\x80", b"\x80\x02"])
def test_random_bytes(tmp_path, head):
    data = head + np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path = tmp_path / "random.pth"
    path.write_bytes(data)
    with pytest.raises(PthError, match=r"random\.pth.*not a (PyTorch|torch.save) file"):
        pth.load(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some text\n")
    with pytest.raises(PthError, match=r"notes\.txt' is not a PyTorch file"):
        pth.load(path)


def test_plain_pickle(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(PthError, match="legacy torch.save magic number"):
        pth.load(path)


def test_npz_file(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(PthError, match=r"weights\.npz' is a zip archive but not a torch.save "
                                       r"file.*NumPy \.npz"):
        pth.load(path)


def test_torchscript_archive(tmp_path):
    path = tmp_path / "scripted.pt"
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("data.pkl", "constants.pkl", "code/__torch__.py", "version"):
            zf.writestr(f"scripted/{name}", b"")
    with pytest.raises(PthError, match="TorchScript"):
        pth.load(path)


def test_tar_format(tmp_path):
    path = tmp_path / "old.pth"
    path.write_bytes(b"\0" * 257 + b"ustar" + b"\0" * 300)
    with pytest.raises(PthError, match="tar-based torch format"):
        pth.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_zip(tmp_path, keep):
    data = (DATA / "state_dict_zip.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(PthError, match=r"cut\.pth.*truncated or corrupt"):
        pth.load(path)


def test_corrupt_storage_record(tmp_path):
    with zipfile.ZipFile(DATA / "itq_like.pth") as zf:
        record = zf.read("itq_like/data/0")
    data = bytearray((DATA / "itq_like.pth").read_bytes())
    at = bytes(data).find(record)
    data[at] ^= 0xFF
    path = tmp_path / "crc.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(PthError, match=r"cannot read record 'itq_like/data/0'"):
        pth.load(path)


def test_missing_storage_record_zip(tmp_path):
    path = tmp_path / "missing.pth"
    with zipfile.ZipFile(DATA / "state_dict_zip.pth") as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            if name != "state_dict_zip/data/3":
                dst.writestr(name, src.read(name))
    with pytest.raises(PthError, match=r"missing\.pth' is missing the storage record "
                                       r"'state_dict_zip/data/3'"):
        pth.load(path)


def test_short_storage_record_zip(tmp_path):
    path = _write_zip(tmp_path / "short.pth", _tensor_pickle(0, (6,), (1,), 6),
                      [("0", _storage_bytes(np.zeros(3)))])
    with pytest.raises(PthError, match="has 12 bytes, expected 24"):
        pth.load(path)


def test_missing_storage_record_legacy(tmp_path):
    path = _write_legacy(tmp_path / "missing.pth",
                         _tensor_pickle(0, (2,), (1,), 2, key="7", legacy=True), [])
    with pytest.raises(PthError, match=r"missing the storage record '7'"):
        pth.load(path)


@pytest.mark.parametrize("cut,message", [(10, "truncated: storage"),
                                         (-1, "truncated: a pickle ends early")])
def test_truncated_legacy(tmp_path, cut, message):
    data = (DATA / "state_dict_legacy.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:-cut] if cut > 0 else data[:200])
    with pytest.raises(PthError, match=r"cut\.pth' is " + message):
        pth.load(path)


def test_pth_error_is_value_error():
    assert issubclass(PthError, ValueError)
    assert issubclass(PthFileNotFoundError, PthError)
    with pytest.raises(TypeError, match="expected a path"):
        pth.load(b"bytes are not a path")
