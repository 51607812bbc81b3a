"""Hostile ``.pth`` files must not exhaust memory (issue #17, item 4).

Every hostile file is written here (``pth_craft``, no torch).  The
findings reproduced: a stride-0 view that expands a few bytes into gigabytes,
a compressed zip record that inflates a thousandfold, records and legacy
storages that declare more bytes than the file holds, and two pickle
opcodes (a huge length prefix, a huge memo index) that make Python 3.11's
unpickler allocate gigabytes before it notices anything wrong.  The memory
tests measure the peak with ``tracemalloc`` (numpy, bytes and the C
unpickler's memo are all traced) and hold it to the stated bounds:
``HOSTILE_PEAK`` for a refused file, ``max_bytes`` for one that loads.
"""

import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from dns_jax import pth
from dns_jax.pth import PthError
from pth_craft import Tensor, floats, write_legacy, write_zip, zip_with_pickle

FORMATS = ["zip", "legacy"]
MiB = 1 << 20
HOSTILE_PEAK = 1 * MiB  # a refused hostile file: nothing big may be allocated
DATA = Path(__file__).parent / "data" / "pth"


def _write(fmt, path, obj, records):
    """``obj`` with float32 storages ``records`` (key -> bytes) in either format."""
    if fmt == "zip":
        return write_zip(path, obj, records)
    return write_legacy(path, obj, {k: (len(v) // 4, v) for k, v in records.items()})


def _peak_of(fn):
    """Run ``fn``; return (its result or the exception it raised, peak traced bytes)."""
    tracemalloc.start()
    try:
        outcome = fn()
    except Exception as exc:  # noqa: BLE001 - the caller inspects it
        outcome = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, peak


def _assert_refused(outcome, pattern):
    """``outcome`` is a one-line PthError matching ``pattern``."""
    assert isinstance(outcome, PthError), f"not refused: {outcome!r}"
    assert re.search(pattern, str(outcome)), str(outcome)
    assert "\n" not in str(outcome)


# ---------------------------------------------------------------------------
# Stride-0 and overlapping views
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_stride0_view_is_refused(tmp_path, fmt):
    """A 4-byte storage viewed 4M times (the 634-byte -> 2.9 GB finding, scaled down)."""
    path = _write(fmt, tmp_path / "s0.pth", {"w": Tensor("0", 1, (1 << 22,), (0,))},
                  {"0": floats([1.0])})
    with pytest.raises(PthError, match=r"s0\.pth'.*4194304 elements, more than 8x its "
                                       r"1-element storage"):
        pth.load(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_overlapping_view_is_refused(tmp_path, fmt):
    """No zero stride, but every row starts one element after the last: 256x the storage."""
    path = _write(fmt, tmp_path / "lap.pth", {"w": Tensor("0", 1024, (512, 512), (1, 1))},
                  {"0": floats(np.arange(1024))})
    with pytest.raises(PthError, match=r"lap\.pth'.*262144 elements, more than 8x its "
                                       r"1024-element storage"):
        pth.load(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_within_bounds_still_load(tmp_path, fmt):
    """Transposes, slices, strided and expanded views up to the factor load unchanged."""
    grid = np.arange(12, dtype=np.float32)
    obj = {
        "transposed": Tensor("a", 12, (4, 3), (1, 4)),
        "slice": Tensor("a", 12, (5,), (1,), offset=6),
        "strided": Tensor("a", 12, (3, 2), (4, 2)),
        "expanded_8x": Tensor("b", 2, (8, 2), (0, 1)),
        "scalar": Tensor("b", 2, (), (), offset=1),
    }
    loaded = pth.load(_write(fmt, tmp_path / "ok.pth", obj,
                             {"a": floats(grid), "b": floats([100, 101])}))
    np.testing.assert_array_equal(loaded["transposed"], grid.reshape(3, 4).T)
    np.testing.assert_array_equal(loaded["slice"], grid[6:11])
    np.testing.assert_array_equal(loaded["strided"], grid.reshape(3, 4)[:, ::2])
    np.testing.assert_array_equal(loaded["expanded_8x"], [[100, 101]] * 8)
    assert loaded["scalar"].shape == () and loaded["scalar"] == 101


def test_repeat_factor_boundary(tmp_path):
    """8x the storage loads (above), 9x is refused."""
    path = _write("zip", tmp_path / "nine.pth", {"w": Tensor("b", 2, (9, 2), (0, 1))},
                  {"b": floats([1, 2])})
    with pytest.raises(PthError, match="18 elements, more than 8x its 2-element storage"):
        pth.load(path)


# ---------------------------------------------------------------------------
# Zip records: compressed, oversized, beyond the file
# ---------------------------------------------------------------------------


def test_compressed_storage_record_is_refused(tmp_path):
    """8 MiB of zeros deflate to ~8 KiB; torch never compresses, so refuse unread."""
    numel = 2 * MiB
    path = write_zip(tmp_path / "z.pth", {"w": Tensor("0", numel, (numel,), (1,))},
                     {"0": bytes(4 * numel)}, compress=["0"])
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(PthError, match=r"z\.pth': zip record 'archive/data/0' is compressed "
                                       r"\(deflate\)"):
        pth.load(path)


def test_compressed_pickle_record_is_refused(tmp_path):
    path = write_zip(tmp_path / "zp.pth", {"a": 1}, {}, compress=["data.pkl"])
    with pytest.raises(PthError, match=r"zip record 'archive/data.pkl' is compressed"):
        pth.load(path)


def test_storage_record_larger_than_declared_is_refused(tmp_path):
    """The pickle declares 1 element; the record holds 4 MiB that would be read for nothing."""
    path = write_zip(tmp_path / "big.pth", {"w": Tensor("0", 1, (1,), (1,))},
                     {"0": bytes(4 * MiB)})
    with pytest.raises(PthError, match=r"big\.pth': storage record 'archive/data/0' has "
                                       r"4194304 bytes, expected 4"):
        pth.load(path)


def _patch_central_sizes(path, name, size):
    """Make the central directory claim ``size`` bytes for stored record ``name``."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_len] == name.encode():
            struct.pack_into("<II", data, at + 20, size, size)  # compressed, uncompressed
            break
        at = data.find(b"PK\x01\x02", at + 4)
    assert at >= 0, name
    path.write_bytes(bytes(data))


def test_record_claiming_more_than_the_file_is_refused(tmp_path):
    """A central directory that claims 1 GiB for a record of a 1 KiB file."""
    path = write_zip(tmp_path / "claim.pth", {"w": Tensor("0", 1 << 28, (1,), (1,))},
                     {"0": floats([1.0])})
    _patch_central_sizes(path, "archive/data/0", 1 << 30)
    outcome, peak = _peak_of(lambda: pth.load(path))
    _assert_refused(outcome, r"claim\.pth': zip record 'archive/data/0' claims 1073741824 "
                             r"bytes.*beyond the end of the \d+-byte file")
    assert peak < HOSTILE_PEAK


# ---------------------------------------------------------------------------
# Legacy storages that the file does not hold
# ---------------------------------------------------------------------------


def test_legacy_storage_sizes_are_checked_against_the_file(tmp_path):
    """Pickle and size header both say 2^28 floats (1 GiB); 16 bytes follow."""
    numel = 1 << 28
    path = write_legacy(tmp_path / "lie.pth", {"w": Tensor("0", numel, (4,), (1,))},
                        {"0": (numel, floats([1, 2, 3, 4]))})
    outcome, peak = _peak_of(lambda: pth.load(path))
    _assert_refused(outcome, r"lie\.pth' is truncated: storages need 1073741832 bytes, "
                             r"only 24 follow")
    assert peak < HOSTILE_PEAK


# ---------------------------------------------------------------------------
# Pickle opcodes that allocate before they fail
# ---------------------------------------------------------------------------


def _in_format(fmt, path, pickled):
    return zip_with_pickle(path, pickled) if fmt == "zip" else write_legacy(path, None, {},
                                                                            main=pickled)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickle_length_prefix_beyond_the_data_is_refused(tmp_path, fmt):
    """BINBYTES8 claiming 1 GiB: the unpickler allocates it before reading 2 bytes."""
    pickled = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 30) + b"xx."
    outcome, peak = _peak_of(lambda: pth.load(_in_format(fmt, tmp_path / "len.pth", pickled)))
    _assert_refused(outcome, r"len\.pth' is truncated: a pickle ends early")
    assert peak < HOSTILE_PEAK


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickle_memo_index_out_of_range_is_refused(tmp_path, fmt):
    """LONG_BINPUT 2^26 in a 12-byte pickle: the unpickler grows its memo to 1 GiB."""
    pickled = b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 26) + b"."
    outcome, peak = _peak_of(lambda: pth.load(_in_format(fmt, tmp_path / "memo.pth", pickled)))
    _assert_refused(outcome, r"memo\.pth': pickle memo index 67108864 .*out of range")
    assert peak < HOSTILE_PEAK


def test_pickle_frame_longer_than_the_data_is_refused(tmp_path):
    pickled = b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N."
    with pytest.raises(PthError, match=r"pickle frame of 1099511627776 bytes .* longer than"):
        pth.load(zip_with_pickle(tmp_path / "frame.pth", pickled))


# ---------------------------------------------------------------------------
# The total-size cap
# ---------------------------------------------------------------------------


def _three_views(tmp_path, fmt="zip"):
    """Three full views of one 1 MiB storage: about 4 MiB of tensor data in all."""
    n = MiB // 4
    values = np.arange(n, dtype=np.float32)
    obj = {name: Tensor("0", n, (n,), (1,)) for name in ("a", "b", "c")}
    return _write(fmt, tmp_path / "three.pth", obj, {"0": floats(values)}), values


@pytest.mark.parametrize("fmt", FORMATS)
def test_cap_keyword(tmp_path, fmt):
    path, values = _three_views(tmp_path, fmt)
    with pytest.raises(PthError, match=r"three\.pth': .*over the 3145728-byte limit "
                                       r"\(max_bytes= or DNS_JAX_PTH_MAX_BYTES\)"):
        pth.load(path, max_bytes=3 * MiB)
    loaded = pth.load(path, max_bytes=5 * MiB)
    for name in "abc":
        np.testing.assert_array_equal(loaded[name], values)
    assert pth.load_state_dict(path, max_bytes=5 * MiB).keys() == {"a", "b", "c"}
    with pytest.raises(PthError, match="over the 3145728-byte limit"):
        pth.load_state_dict(path, max_bytes=3 * MiB)


def test_cap_environment_variable(tmp_path, monkeypatch):
    path, _ = _three_views(tmp_path)
    monkeypatch.setenv("DNS_JAX_PTH_MAX_BYTES", "3M")
    with pytest.raises(PthError, match="over the 3145728-byte limit"):
        pth.load(path)
    assert pth.load(path, max_bytes=5 * MiB).keys() == {"a", "b", "c"}  # keyword wins
    monkeypatch.setenv("DNS_JAX_PTH_MAX_BYTES", "5MiB")
    assert pth.load(path).keys() == {"a", "b", "c"}
    monkeypatch.setenv("DNS_JAX_PTH_MAX_BYTES", str(5 * MiB))
    assert pth.load(path).keys() == {"a", "b", "c"}


@pytest.mark.parametrize("value", ["lots", "", "0", "-5", "1.5G", "3X"])
def test_cap_environment_variable_must_be_a_size(tmp_path, monkeypatch, value):
    path, _ = _three_views(tmp_path)
    monkeypatch.setenv("DNS_JAX_PTH_MAX_BYTES", value)
    with pytest.raises(ValueError, match=r"DNS_JAX_PTH_MAX_BYTES=.* is not a size"):
        pth.load(path)


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "1G"])
def test_cap_keyword_must_be_a_positive_int(tmp_path, value):
    path, _ = _three_views(tmp_path)
    with pytest.raises((TypeError, ValueError), match="max_bytes"):
        pth.load(path, max_bytes=value)


def test_default_cap_fits_real_checkpoints(monkeypatch):
    """Generous for 100-200 MB official files, and every fixture needs < 2x its size."""
    monkeypatch.delenv("DNS_JAX_PTH_MAX_BYTES", raising=False)
    assert pth.DEFAULT_MAX_BYTES >= 2 * 200 * 10**6
    fixtures = sorted(DATA.glob("*.pth"))
    assert len(fixtures) >= 8
    for path in fixtures:
        pth.load(path, max_bytes=2 * path.stat().st_size)


# ---------------------------------------------------------------------------
# Memory: full-size hostile files stay under HOSTILE_PEAK, legit loads under max_bytes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_full_size_stride0_file(tmp_path, fmt):
    """The finding at full size: under a kilobyte of file declaring a 2.9 GB tensor."""
    numel = 725_000_000
    path = _write(fmt, tmp_path / "huge.pth", {"w": Tensor("0", 1, (numel,), (0,))},
                  {"0": floats([1.0])})
    assert path.stat().st_size < 1024
    outcome, peak = _peak_of(lambda: pth.load(path))
    _assert_refused(outcome, r"huge\.pth'.*725000000 elements, more than 8x")
    assert peak < HOSTILE_PEAK


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory):
    """A ~1 MiB deflated record that inflates to 1 GiB, declared consistently."""
    numel = 1 << 28
    chunk = bytes(16 * MiB)
    path = tmp_path_factory.mktemp("bomb") / "bomb.pth"
    return write_zip(path, {"w": Tensor("0", numel, (numel,), (1,))},
                     {"0": (chunk for _ in range(64))}, compress=["0"])


def test_memory_zip_bomb(zip_bomb):
    assert zip_bomb.stat().st_size < 2 * MiB
    outcome, peak = _peak_of(lambda: pth.load(zip_bomb))
    _assert_refused(outcome, r"bomb\.pth': zip record 'archive/data/0' is compressed")
    assert peak < HOSTILE_PEAK


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_record_over_the_cap_is_refused_unread(tmp_path, fmt):
    """A legitimate 16 MiB storage with a 4 MiB cap: refused before reading it."""
    n = 4 * MiB
    path = _write(fmt, tmp_path / "large.pth", {"w": Tensor("0", n, (n,), (1,))},
                  {"0": bytes(4 * n)})
    outcome, peak = _peak_of(lambda: pth.load(path, max_bytes=4 * MiB))
    _assert_refused(outcome, r"large\.pth'.*over the 4194304-byte limit")
    assert peak < HOSTILE_PEAK


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_legit_load_stays_within_the_cap(tmp_path, fmt):
    """4 MiB storage, a full view and a transpose: loads in ~12 MiB, peak <= max_bytes."""
    side = 1024
    values = np.arange(side * side, dtype=np.float32)
    obj = {"w": Tensor("0", side * side, (side, side), (side, 1)),
           "wt": Tensor("0", side * side, (side, side), (1, side))}
    path = _write(fmt, tmp_path / "legit.pth", obj, {"0": floats(values)})
    cap = 13 * MiB
    loaded, peak = _peak_of(lambda: pth.load(path, max_bytes=cap))
    assert isinstance(loaded, dict), loaded
    np.testing.assert_array_equal(loaded["wt"], values.reshape(side, side).T)
    assert 12 * MiB <= peak <= cap
