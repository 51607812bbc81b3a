"""Write torch-shaped ``.pth`` files without torch, for the ``dns_jax.pth`` tests.

Objects are pickled with Python's own pickler while stand-in ``torch`` and
``torch._utils`` modules are briefly registered in ``sys.modules``, so the
pickle names exactly the globals torch writes (``torch._utils
._rebuild_tensor_v2``, ``torch.FloatStorage`` ...).  A :class:`Tensor` in the
object becomes a tensor whose storage is the persistent id torch uses; the
storage bytes themselves are written by :func:`write_zip` /
:func:`write_legacy`, which may be told to lie (compressed records, short
records, sizes the file does not hold) to build hostile files.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "ByteStorage": 1}


@dataclass(frozen=True)
class Tensor:
    """A tensor to pickle: a view (offset, size, stride) of storage ``key``.

    ``numel`` is the element count the pickle declares for the storage.
    """

    key: str
    numel: int
    size: tuple
    stride: tuple
    offset: int = 0
    storage: str = "FloatStorage"


@contextlib.contextmanager
def _stand_in_torch():
    """Register modules named like torch's for the duration of a pickling."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only pickled by name
        raise AssertionError("stand-in")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in ITEMSIZE:
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Storage:
    """Marker for the storage slot of a tensor; becomes a persistent id."""

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


class _TensorPickler(pickle.Pickler):
    """Pickles :class:`Tensor` as ``_rebuild_tensor_v2(storage, ...)``."""

    def __init__(self, file, torch, legacy: bool):
        super().__init__(file, protocol=2)
        self._torch, self._legacy = torch, legacy

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        t = obj.tensor
        pid = ("storage", getattr(self._torch, t.storage), t.key, "cpu", t.numel)
        return pid + (None,) if self._legacy else pid

    def reducer_override(self, obj):
        if not isinstance(obj, Tensor):
            return NotImplemented
        rebuild = self._torch._utils._rebuild_tensor_v2
        return rebuild, (_Storage(obj), obj.offset, tuple(obj.size), tuple(obj.stride), False,
                         OrderedDict())


def pickle_tensors(obj: Any, legacy: bool = False) -> bytes:
    """Pickle ``obj`` (containers of :class:`Tensor` and plain data) as torch would."""
    buffer = io.BytesIO()
    with _stand_in_torch() as torch:
        _TensorPickler(buffer, torch, legacy).dump(obj)
    return buffer.getvalue()


def floats(values) -> bytes:
    """Raw little-endian float32 bytes."""
    return np.asarray(values, "<f4").tobytes()


Chunks = bytes | Iterable[bytes]


def write_zip(path, obj: Any, records: Mapping[str, Chunks], *,
              compress: Iterable[str] = (), prefix: str = "archive"):
    """A torch zip archive: ``data.pkl``, ``data/<key>`` records, ``byteorder``.

    ``records`` maps storage keys to bytes or an iterable of byte chunks
    (streamed, for records too big to hold); keys named in ``compress``
    (``'data.pkl'`` included) are deflated, which torch itself never does.
    """
    compress = set(compress)
    with zipfile.ZipFile(path, "w") as zf:
        def put(name: str, data: Chunks, key: str) -> None:
            kind = zipfile.ZIP_DEFLATED if key in compress else zipfile.ZIP_STORED
            info = zipfile.ZipInfo(f"{prefix}/{name}")
            info.compress_type = kind
            with zf.open(info, "w", force_zip64=True) as out:
                for chunk in ([data] if isinstance(data, bytes) else data):
                    out.write(chunk)

        put("data.pkl", pickle_tensors(obj), "data.pkl")
        put("byteorder", b"little", "byteorder")
        for key, data in records.items():
            put(f"data/{key}", data, key)
    return path


def write_legacy(path, obj: Any, records: Mapping[str, tuple[int, bytes]],
                 main: bytes | None = None):
    """The legacy layout: magic, protocol, system info, main pickle, keys, storages.

    ``records`` maps a key to ``(count, raw bytes)``; the count is written
    as the storage's int64 size header whether or not the bytes match it.
    ``main`` replaces the pickle of ``obj`` with raw pickle bytes.
    """
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps(sys_info, protocol=2),
             pickle_tensors(obj, legacy=True) if main is None else main,
             pickle.dumps(list(records), protocol=2)]
    for count, data in records.values():
        parts += [struct.pack("<q", count), data]
    path.write_bytes(b"".join(parts))
    return path


def zip_with_pickle(path, pickled: bytes, prefix: str = "archive"):
    """A torch zip archive whose ``data.pkl`` is the given raw pickle bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", pickled)
        zf.writestr(f"{prefix}/byteorder", b"little")
    return path
