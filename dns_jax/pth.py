"""Read PyTorch ``.pth`` files into numpy arrays without torch and without
running pickled code.

The official DnS / ViSiL weights are ``torch.save`` files: dicts such as
``{'model': state_dict, ...}``, bare state dicts, ``{'proj': tensor}`` (ITQ),
``{'mean', 'V', 'd'}`` (PCA) and torchvision's ResNet-50 state dict.  Some of
them predate torch 1.6 and use the legacy (non-zip) layout.  This module reads
both layouts:

* **zip format** (torch >= 1.6): a zip archive holding ``<prefix>/data.pkl``
  (the pickled object graph), ``<prefix>/data/<key>`` (one raw byte record per
  storage), ``<prefix>/byteorder`` and ``<prefix>/version``.
* **legacy format**: five pickles and raw bytes back to back -- a magic
  number, the protocol version (1001), a system-info dict, the main pickle,
  the list of storage keys -- then, for each key in that order, an int64
  element count followed by the storage's raw bytes.

Pickles are read with a restricted unpickler whose ``find_class`` knows only
the globals needed to rebuild tensors and plain containers, each mapped to a
stand-in written here, so nothing from torch (or anywhere else) is imported
or executed:

* ``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``,
  ``_rebuild_tensor_v3``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``;
* ``torch.<X>Storage`` / ``torch.cuda.<X>Storage`` for the dense dtypes,
  ``torch.storage.UntypedStorage`` and the dtype objects (``torch.uint16``...);
* ``collections.OrderedDict``, ``argparse.Namespace``, ``torch.Size``,
  ``torch.device``, ``builtins.set`` / ``frozenset`` / ``complex`` and
  ``_codecs.encode`` (latin1 only; how protocol 2 pickles ``bytes``).

Any other global (``os.system``, ``builtins.eval``, a custom class, a
quantized tensor, a whole pickled ``nn.Module``, ...) makes :func:`load`
raise :class:`PthError` before it can be called.

What comes back
---------------
* Tensors and ``nn.Parameter`` s become C-contiguous numpy arrays that own
  their memory (views, transposes and tensors sharing a storage are copied
  out, so changing one array never changes another).  ``requires_grad`` and
  backward hooks are dropped; conj / neg bits are applied.
* ``bfloat16`` and ``float8`` tensors come back as **float32** -- numpy has no
  such dtypes and the widening is exact.  bfloat16 needs nothing beyond
  numpy; float8 uses ``ml_dtypes`` (installed with jax).
* ``OrderedDict`` stays an ``OrderedDict`` (a ``dict``); lists, tuples, sets,
  numbers, strings and ``None`` are unchanged.
* ``argparse.Namespace`` (DnS checkpoints store the training ``args``)
  becomes an :class:`ArgsNamespace`, a ``dict`` whose keys can also be read
  as attributes (``ckpt['args'].lr``).
* ``torch.Size`` becomes a ``tuple``, ``torch.device`` a ``str`` such as
  ``'cuda:0'``, and a dtype object a :class:`TorchDtype`.

Memory limits
-------------
A hostile file must not make loading allocate much more than the tensor
data it really declares, so every size is checked against the file and a
budget *before* anything is allocated:

* **Views**: a tensor may cover at most ``MAX_VIEW_REPEAT`` (8) times the
  elements of its storage.  A transpose or a slice never exceeds 1x; a
  stride-0 (``expand``) or overlapping view beyond 8x is refused.
* **Zip records**: torch never compresses them, so a compressed record (a
  possible zip bomb) is refused unread; a storage record must hold exactly
  the bytes its pickle declares, and no record may claim more bytes than the
  file holds.
* **Legacy storages**: the sizes the pickle declares must fit in the bytes
  that follow the pickles.
* **Pickles**: each pickle's opcodes are walked (``pickletools``) before it
  is unpickled; a length prefix or frame longer than the data, or a memo
  index no genuine pickle could use, is refused (Python 3.11's unpickler
  would allocate them first).
* **Total**: pickle bytes + storage bytes read + bytes of the arrays built
  may not exceed ``max_bytes``: the keyword argument of :func:`load` /
  :func:`load_state_dict`, else the ``DNS_JAX_PTH_MAX_BYTES`` environment
  variable (bytes, or with a binary suffix: ``512M``, ``4GiB``), else
  ``DEFAULT_MAX_BYTES`` (1 GiB).  A file without repeating views needs at
  most about twice its own size; the official DnS / ViSiL / ResNet-50
  files (100-200 MB) fit the default.  Transient copies (byte swapping,
  widening) add at most a few times the largest single tensor.

Errors are one-line :class:`PthError` s naming the file and the problem.

Limitations: sparse, quantized, nested and complex32 tensors, TorchScript
archives and the pre-0.4 tar format are refused with a clear error; a
storage pickled on its own (not inside a tensor) comes back as an internal
``_Storage`` record; expanded (stride-0) tensors are materialised in full
(within the view limit above).

This module only reads; it deliberately has no ``save``: dns-jax never
writes ``.pth`` files.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "MAX_VIEW_REPEAT",
    "ArgsNamespace",
    "PthError",
    "PthFileNotFoundError",
    "TorchDtype",
    "load",
    "load_state_dict",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_TAR_MAGIC_OFFSET = 257

DEFAULT_MAX_BYTES = 1 << 30  # pickles + storages + arrays of one load
MAX_BYTES_ENV = "DNS_JAX_PTH_MAX_BYTES"
MAX_VIEW_REPEAT = 8  # a tensor may cover at most this many times its storage


class PthError(ValueError):
    """A file could not be read as a safe PyTorch ``torch.save`` file."""


class PthFileNotFoundError(PthError, FileNotFoundError):
    """The ``.pth`` path does not exist (also a ``FileNotFoundError``)."""


class ArgsNamespace(dict):
    """Stand-in for a pickled ``argparse.Namespace``.

    A plain ``dict`` of the namespace's attributes whose keys can also be
    read as attributes, so both ``args['lr']`` and ``args.lr`` work.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:
        """Fill from the pickled ``__dict__`` (pickle's BUILD step)."""
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"argparse.Namespace state must be a dict, got {type(state).__name__}")
        self.update(state)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.items())
        return f"ArgsNamespace({items})"


@dataclass(frozen=True)
class TorchDtype:
    """A torch dtype as stored in a pickle (e.g. ``torch.float32``).

    ``raw`` is the numpy dtype of the bytes on disk (little-endian);
    ``widen`` names the exact conversion applied to dtypes numpy lacks
    (``'bfloat16'`` or an ``ml_dtypes`` float8 name), else ``None``.
    """

    name: str
    raw: str
    widen: str | None = None

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_DTYPES = {
    d.name: d
    for d in (
        TorchDtype("float32", "<f4"),
        TorchDtype("float64", "<f8"),
        TorchDtype("float16", "<f2"),
        TorchDtype("bfloat16", "<u2", "bfloat16"),
        TorchDtype("int64", "<i8"),
        TorchDtype("int32", "<i4"),
        TorchDtype("int16", "<i2"),
        TorchDtype("int8", "i1"),
        TorchDtype("uint8", "u1"),
        TorchDtype("uint16", "<u2"),
        TorchDtype("uint32", "<u4"),
        TorchDtype("uint64", "<u8"),
        TorchDtype("bool", "?"),
        TorchDtype("complex64", "<c8"),
        TorchDtype("complex128", "<c16"),
        TorchDtype("float8_e4m3fn", "u1", "float8_e4m3fn"),
        TorchDtype("float8_e5m2", "u1", "float8_e5m2"),
        TorchDtype("float8_e4m3fnuz", "u1", "float8_e4m3fnuz"),
        TorchDtype("float8_e5m2fnuz", "u1", "float8_e5m2fnuz"),
        TorchDtype("float8_e8m0fnu", "u1", "float8_e8m0fnu"),
    )
}

_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co. and ``UntypedStorage``."""

    name: str
    dtype: TorchDtype


@dataclass
class _Storage:
    """A storage's elements: a 1-D numpy array in the file's byte order."""

    data: np.ndarray
    dtype: TorchDtype
    byteorder: str  # '<' or '>'


# ---------------------------------------------------------------------------
# Memory limits: the byte budget and the pickle pre-scan
# ---------------------------------------------------------------------------

_SIZE_SUFFIXES = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def _parse_size(text: str) -> int | None:
    """``'123'``, ``'512M'``, ``'4GiB'`` (binary suffixes) as bytes; None if malformed."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:([kmgtKMGT])(?:i?[bB])?)?\s*", text)
    if match is None:
        return None
    return int(match.group(1)) << _SIZE_SUFFIXES[(match.group(2) or "").lower()]


def _resolve_max_bytes(max_bytes: Any) -> int:
    """The keyword if given, else ``$DNS_JAX_PTH_MAX_BYTES``, else the default."""
    if max_bytes is None:
        text = os.environ.get(MAX_BYTES_ENV)
        if text is None:
            return DEFAULT_MAX_BYTES
        value = _parse_size(text)
        if not value:
            raise ValueError(f"{MAX_BYTES_ENV}={text!r} is not a size: expected a positive "
                             "number of bytes, optionally with K, M, G or T (binary) suffix")
        return value
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
        raise TypeError(f"max_bytes must be an int number of bytes, got {max_bytes!r}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    return max_bytes


class _Budget:
    """The bytes one load may still allocate for pickles, storages and arrays."""

    def __init__(self, source: str, limit: int):
        self.source, self.limit, self.used = source, limit, 0

    def charge(self, nbytes: int, what: str) -> None:
        """Account for ``nbytes`` about to be allocated; PthError if over the limit."""
        if self.used + nbytes > self.limit:
            raise PthError(
                f"{self.source}: {what} needs {nbytes} bytes, taking the load to "
                f"{self.used + nbytes} bytes, over the {self.limit}-byte limit "
                f"(max_bytes= or {MAX_BYTES_ENV})")
        self.used += nbytes


class _Window:
    """Read-only view of the next ``length`` bytes of a file; reads never go past it."""

    def __init__(self, f: Any, length: int):
        self._f, self._start, self._length = f, f.tell(), length

    def tell(self) -> int:
        return self._f.tell() - self._start

    def _left(self, n: int | None) -> int:
        left = max(self._length - self.tell(), 0)
        return left if n is None or n < 0 else min(n, left)

    def read(self, n: int | None = -1) -> bytes:
        return self._f.read(self._left(n))

    def readline(self, n: int | None = -1) -> bytes:
        return self._f.readline(self._left(n))


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _scan_pickle(stream: Any, length: int, source: str) -> int:
    """Walk one pickle's opcodes without building anything; return its byte length.

    ``stream`` is positioned at the pickle and reads at most ``length``
    bytes (a ``BytesIO`` or a ``_Window``).  Refuses what would make the C
    unpickler allocate more than the data: a length prefix or frame longer
    than the data, or a memo index beyond the opcodes seen so far (a genuine
    pickler numbers its memo 0, 1, 2, ...).
    """
    ops = 0
    try:
        for opcode, arg, pos in pickletools.genops(stream):
            ops += 1
            if opcode.name in _MEMO_PUTS and arg > ops:
                raise PthError(f"{source}: pickle memo index {arg} at byte {pos} is out of "
                               f"range after {ops} opcodes (corrupt or hostile pickle)")
            if opcode.name == "FRAME" and arg > length:
                raise PthError(f"{source}: pickle frame of {arg} bytes at byte {pos} is "
                               f"longer than the {length}-byte data (corrupt or hostile pickle)")
    except PthError:
        raise
    except Exception as exc:  # genops raises ValueError (and kin) for malformed opcodes
        text = str(exc)
        if any(s in text for s in ("exhausted", "but only", "no newline found")):
            raise PthError(f"{source} is truncated: a pickle ends early ({text})") from exc
        raise PthError(f"{source} is corrupt or not a torch.save file: {text}") from exc
    return stream.tell()


# ---------------------------------------------------------------------------
# Turning (storage, offset, size, stride) into an owned numpy array
# ---------------------------------------------------------------------------


def _raw_dtype(dtype: TorchDtype, byteorder: str) -> np.dtype:
    """numpy dtype of ``dtype``'s on-disk elements in ``byteorder``."""
    raw = np.dtype(dtype.raw)
    return raw.newbyteorder(byteorder) if raw.itemsize > 1 else raw


def _check_shape(what: str, values: Any) -> tuple[int, ...]:
    """Validate a size or stride tuple from the pickle."""
    if not isinstance(values, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise pickle.UnpicklingError(
            f"tensor {what} must be a tuple of non-negative ints, got {values!r}")
    return tuple(values)


def _strided_copy(data: np.ndarray, offset: Any, size: Any, stride: Any,
                  check_numel: Callable[[int], None]) -> np.ndarray:
    """Copy the (offset, size, stride) view of 1-D ``data`` into a new array.

    Bounds are checked first, so a malicious file cannot make
    ``as_strided`` read outside the storage; then ``check_numel(numel)``
    may refuse the view before its copy is allocated.
    """
    size = _check_shape("size", size)
    stride = _check_shape("stride", stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in rank")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise pickle.UnpicklingError(f"tensor storage offset must be an int >= 0, got {offset!r}")
    if 0 in size:
        return np.empty(size, dtype=data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.shape[0]:
        raise pickle.UnpicklingError(
            f"tensor (offset {offset}, size {size}, stride {stride}) reaches element "
            f"{last} of a storage with only {data.shape[0]} elements")
    check_numel(math.prod(size))
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=[s * item for s in stride], writeable=False)
    return view.copy(order="C")


def _widen(array: np.ndarray, dtype: TorchDtype) -> np.ndarray:
    """Native byte order, and exact float32 for bfloat16 / float8."""
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    if dtype.widen is None:
        return array
    if dtype.widen == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - ml_dtypes ships with jax
        raise pickle.UnpicklingError(
            f"reading torch.{dtype.name} tensors needs the ml_dtypes package") from exc
    return array.view(getattr(ml_dtypes, dtype.widen)).astype(np.float32)


def _apply_metadata(array: np.ndarray, metadata: Any) -> np.ndarray:
    """Resolve torch's lazy conj / neg bits (``metadata`` of v2/v3 tensors)."""
    if not metadata:
        return array
    if not isinstance(metadata, dict):
        raise pickle.UnpicklingError(f"tensor metadata must be a dict, got {metadata!r}")
    unknown = set(metadata) - {"conj", "neg"}
    if unknown:
        raise pickle.UnpicklingError(f"unsupported tensor metadata {sorted(unknown)}")
    if metadata.get("conj"):
        array = np.conj(array)
    if metadata.get("neg"):
        array = np.negative(array)
    return array


def _view_limit(budget: _Budget, storage_numel: int, dtype: TorchDtype,
                size: tuple, stride: tuple) -> Callable[[int], None]:
    """``check_numel`` for one view: the repeat factor, then the budget."""
    out_itemsize = 4 if dtype.widen else np.dtype(dtype.raw).itemsize

    def check(numel: int) -> None:
        if numel > MAX_VIEW_REPEAT * storage_numel:
            raise PthError(
                f"{budget.source}: a tensor of shape {tuple(size)} with strides "
                f"{tuple(stride)} has {numel} elements, more than {MAX_VIEW_REPEAT}x its "
                f"{storage_numel}-element storage (stride-0 or overlapping view); refused "
                "before allocating it")
        budget.charge(numel * out_itemsize, f"a tensor of shape {tuple(size)}")

    return check


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, budget: _Budget,
            dtype: TorchDtype | None = None, metadata: Any = None) -> np.ndarray:
    """Build the numpy value of one tensor from its storage and geometry."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor storage must be a storage record, got {storage!r}")
    data = storage.data
    if dtype is None:
        dtype = storage.dtype
    elif dtype != storage.dtype:
        if storage.data.dtype.itemsize != 1:
            raise pickle.UnpicklingError(
                f"cannot view a torch.{storage.dtype.name} storage as torch.{dtype.name}")
        raw = _raw_dtype(dtype, storage.byteorder)
        usable = data.shape[0] - data.shape[0] % raw.itemsize
        data = data[:usable].view(raw)
    check = _view_limit(budget, data.shape[0], dtype, size, stride)
    array = _strided_copy(data, offset, size, stride, check)
    return _apply_metadata(_widen(array, dtype), metadata)


# ---------------------------------------------------------------------------
# Stand-ins for the allowed globals
# ---------------------------------------------------------------------------


def _rebuild_parameter(data: Any, requires_grad: Any = None, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    """``torch._utils._rebuild_parameter[_with_state]``: the data itself."""
    return data


def _device(kind: Any, index: Any = None) -> str:
    """``torch.device(kind[, index])`` as a string such as ``'cuda:0'``."""
    if not isinstance(kind, str):
        raise pickle.UnpicklingError(f"torch.device type must be a str, got {kind!r}")
    return kind if index is None else f"{kind}:{int(index)}"


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 bytes")
    return text.encode("latin1")


def _allowed_globals(rebuild: Callable[..., Any]) -> dict[tuple[str, str], Any]:
    """The complete allow-list: ``(module, name) -> harmless stand-in``."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _latin1_encode,
        ("argparse", "Namespace"): ArgsNamespace,
        ("torch", "Size"): tuple,
        ("torch", "device"): _device,
        ("torch._utils", "_rebuild_tensor"): lambda *a: rebuild("v1", a),
        ("torch._utils", "_rebuild_tensor_v2"): lambda *a: rebuild("v2", a),
        ("torch._utils", "_rebuild_tensor_v3"): lambda *a: rebuild("v3", a),
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }
    untyped = _StorageType("UntypedStorage", _DTYPES["uint8"])
    allowed[("torch", "UntypedStorage")] = untyped
    allowed[("torch.storage", "UntypedStorage")] = untyped
    for name, dtype_name in _STORAGE_DTYPES.items():
        storage_type = _StorageType(name, _DTYPES[dtype_name])
        allowed[("torch", name)] = storage_type
        allowed[("torch.cuda", name)] = storage_type
    for name, dtype in _DTYPES.items():
        allowed[("torch", name)] = dtype
    return allowed


# torch dtypes / storages that exist but that this reader deliberately refuses.
_UNSUPPORTED_DTYPES = frozenset({
    "complex32", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "float4_e2m1fn_x2",
    "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16"})


class _Unpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals in ``_allowed_globals``.

    ``load_storage(rest)`` receives a persistent id minus its leading
    ``'storage'`` tag and returns a ``_Storage``.  With ``dry_run`` tensors
    are not materialised (used to skim a legacy file for its storages).
    """

    def __init__(self, file: Any, *, budget: _Budget,
                 load_storage: Callable[[tuple], _Storage], dry_run: bool = False):
        super().__init__(file, encoding="utf-8")
        self._budget = budget
        self._source = budget.source
        self._load_storage = load_storage
        self._dry_run = dry_run
        self._allowed = _allowed_globals(self._rebuild)

    def find_class(self, module: str, name: str) -> Any:
        """Return the stand-in for an allowed global, refuse anything else."""
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        if module == "torch" and (name.endswith("Storage") or name in _UNSUPPORTED_DTYPES):
            raise PthError(
                f"refusing to load {self._source}: it holds torch.{name} data, which "
                "this reader does not support (only plain dense tensors are)")
        raise PthError(
            f"refusing to load {self._source}: it asks for {module}.{name}; "
            "only tensors and containers are allowed")

    def persistent_load(self, pid: Any) -> Any:
        """Resolve a ``('storage', ...)`` persistent id to a ``_Storage``."""
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        tag = _text(pid[0])
        if tag == "module":
            raise PthError(
                f"refusing to load {self._source}: it holds a pickled nn.Module with its "
                "source code; only tensors and containers are allowed (save state_dict())")
        if tag != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id tag {tag!r}")
        return self._load_storage(pid[1:])

    def _rebuild(self, version: str, args: tuple) -> np.ndarray | None:
        """Shared body of the ``_rebuild_tensor*`` stand-ins."""
        arity = {"v1": (4, 4), "v2": (6, 7), "v3": (7, 8)}[version]
        if not arity[0] <= len(args) <= arity[1]:
            name = "_rebuild_tensor" + ("" if version == "v1" else "_" + version)
            raise pickle.UnpicklingError(f"{name} got {len(args)} arguments")
        if self._dry_run:
            return None
        storage, offset, size, stride = args[:4]
        dtype = metadata = None
        if version == "v2" and len(args) == 7:
            metadata = args[6]
        elif version == "v3":
            dtype = args[6]
            metadata = args[7] if len(args) == 8 else None
            if not isinstance(dtype, TorchDtype):
                raise pickle.UnpicklingError(
                    f"_rebuild_tensor_v3 dtype must be a torch dtype, got {dtype!r}")
        return _tensor(storage, offset, size, stride, self._budget, dtype, metadata)


def _text(value: Any) -> str:
    """A pickled str (bytes in Python 2 era files) as str."""
    if isinstance(value, bytes):
        return value.decode("ascii")
    if not isinstance(value, str):
        raise pickle.UnpicklingError(f"expected a string in a storage record, got {value!r}")
    return value


def _storage_type(value: Any) -> _StorageType:
    """Validate the storage-type slot of a persistent id."""
    if not isinstance(value, _StorageType):
        raise pickle.UnpicklingError(f"expected a torch storage type, got {value!r}")
    return value


def _count(value: Any) -> int:
    """Validate an element count from a persistent id."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise pickle.UnpicklingError(f"storage size must be an int >= 0, got {value!r}")
    return value


def _unpickle(data: bytes, budget: _Budget, load_storage: Callable[[tuple], _Storage],
              dry_run: bool = False) -> Any:
    """Run the restricted unpickler over one scanned pickle, failures as PthError."""
    source = budget.source
    try:
        return _Unpickler(io.BytesIO(data), budget=budget, load_storage=load_storage,
                          dry_run=dry_run).load()
    except PthError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, EOFError) or "truncated" in str(exc):
            raise PthError(f"{source} is truncated: a pickle ends early") from exc
        raise PthError(f"{source} is corrupt or not a torch.save file: {exc}") from exc
    except Exception as exc:  # malformed pickles raise all kinds of errors
        raise PthError(f"{source} is corrupt or not a torch.save file: "
                       f"{type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------
# Zip format
# ---------------------------------------------------------------------------


def _archive_prefix(zf: zipfile.ZipFile, source: str) -> str:
    """The ``<prefix>/`` that holds ``data.pkl`` in a torch zip archive."""
    names = zf.namelist()
    prefixes = sorted({n[: -len("data.pkl")] for n in names
                       if n.endswith("/data.pkl") and n.count("/") == 1})
    if not prefixes:
        hint = ""
        if any(n.endswith(".npy") for n in names):
            hint = "; it looks like a NumPy .npz archive (use numpy.load)"
        raise PthError(f"{source} is a zip archive but not a torch.save file: expected a "
                       f"'<name>/data.pkl' record{hint}")
    if len(prefixes) > 1:
        raise PthError(f"{source} holds several torch archives {prefixes}; expected one")
    prefix = prefixes[0]
    if prefix + "constants.pkl" in names:
        raise PthError(f"{source} is a TorchScript archive (torch.jit.save), not a torch.save "
                       "file; save the model's state_dict() with torch.save instead")
    return prefix


_COMPRESSION_NAMES = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                      zipfile.ZIP_LZMA: "lzma"}


def _check_zip_records(zf: zipfile.ZipFile, file_size: int, source: str) -> None:
    """Refuse compressed records and records claiming bytes the file does not hold.

    torch.save stores every record uncompressed, so a compressed one can
    only be a re-packed or hostile file (a zip bomb inflates ~1000x).
    """
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            method = _COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise PthError(f"{source}: zip record {info.filename!r} is compressed ({method}); "
                           "torch.save never compresses its records, so it is refused "
                           "unread (possible zip bomb)")
        if (info.file_size != info.compress_size
                or info.header_offset + info.compress_size > file_size):
            raise PthError(f"{source}: zip record {info.filename!r} claims {info.file_size} "
                           f"bytes ({info.compress_size} stored) at offset {info.header_offset}, "
                           f"beyond the end of the {file_size}-byte file (corrupt or hostile "
                           "archive)")


def _record_info(zf: zipfile.ZipFile, name: str, source: str, what: str) -> zipfile.ZipInfo:
    """The zip entry ``name``, or PthError naming the missing record."""
    try:
        return zf.getinfo(name)
    except KeyError:
        raise PthError(f"{source} is missing the {what} record '{name}' "
                       "(truncated or corrupt file?)") from None


def _read_record(zf: zipfile.ZipFile, name: str, source: str, what: str,
                 budget: _Budget | None = None) -> bytes:
    """Read one (checked, uncompressed) zip record, charging ``budget`` first."""
    info = _record_info(zf, name, source, what)
    if budget is not None:
        budget.charge(info.file_size, f"record '{name}'")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise PthError(f"{source}: cannot read record '{name}' "
                       f"(truncated or corrupt file?): {exc}") from exc


def _zip_byteorder(zf: zipfile.ZipFile, prefix: str, source: str) -> str:
    """``'<'`` or ``'>'`` from the ``byteorder`` record (little if absent)."""
    if prefix + "byteorder" not in zf.namelist():
        return "<"
    text = _read_record(zf, prefix + "byteorder", source, "byteorder").decode("ascii", "replace")
    orders = {"little": "<", "big": ">"}
    if text.strip() not in orders:
        raise PthError(f"{source}: byteorder record says {text!r}; expected 'little' or 'big'")
    return orders[text.strip()]


def _load_zip(path: str, budget: _Budget) -> Any:
    """Read a zip-format (torch >= 1.6) ``torch.save`` file."""
    source = budget.source
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise PthError(f"{source} starts like a zip archive but cannot be opened "
                       f"(truncated or corrupt file?): {exc}") from exc
    with zf:
        _check_zip_records(zf, os.path.getsize(path), source)
        prefix = _archive_prefix(zf, source)
        byteorder = _zip_byteorder(zf, prefix, source)
        records: dict[str, bytes] = {}

        def load_storage(rest: tuple) -> _Storage:
            if len(rest) != 4:
                raise pickle.UnpicklingError(f"unexpected storage record {rest!r}")
            storage_type, key, numel = _storage_type(rest[0]), _text(rest[1]), _count(rest[3])
            name = f"{prefix}data/{key}"
            raw = _raw_dtype(storage_type.dtype, byteorder)
            size = _record_info(zf, name, source, "storage").file_size
            if size != numel * raw.itemsize:  # checked before the record is read
                raise PthError(f"{source}: storage record '{name}' has {size} bytes, "
                               f"expected {numel * raw.itemsize}")
            if name not in records:
                records[name] = _read_record(zf, name, source, "storage", budget)
            data = np.frombuffer(records[name], dtype=raw, count=numel)
            return _Storage(data, storage_type.dtype, byteorder)

        pickled = _read_record(zf, prefix + "data.pkl", source, "data.pkl", budget)
        _scan_pickle(io.BytesIO(pickled), len(pickled), source)
        return _unpickle(pickled, budget, load_storage)


# ---------------------------------------------------------------------------
# Legacy format
# ---------------------------------------------------------------------------


def _no_storage(rest: tuple) -> _Storage:
    """``load_storage`` for header pickles, which never hold storages."""
    raise pickle.UnpicklingError("unexpected storage in a legacy header pickle")


def _legacy_pickle(f: Any, file_size: int, budget: _Budget) -> bytes:
    """The bytes of the pickle at ``f``'s position, scanned before they are read."""
    start = f.tell()
    length = _scan_pickle(_Window(f, file_size - start), file_size - start, budget.source)
    budget.charge(length, "a pickle")
    f.seek(start)
    return f.read(length)


def _legacy_header(f: Any, file_size: int, budget: _Budget) -> str:
    """Check the magic number / protocol pickles; return the byte order."""
    source = budget.source
    try:
        data = _legacy_pickle(f, file_size, budget)
    except PthError:  # random bytes rarely scan as a pickle
        data = b""
    try:
        magic = _Unpickler(io.BytesIO(data), budget=budget, load_storage=_no_storage).load()
    except PthError:  # a forbidden global: say so
        raise
    except Exception:  # noqa: BLE001 - any other failure: not a torch file
        magic = None
    if not isinstance(magic, int) or magic != _LEGACY_MAGIC:
        raise PthError(f"{source} is not a PyTorch file: expected a zip archive (torch >= 1.6) "
                       "or the legacy torch.save magic number (is it a plain pickle?)")
    protocol = _unpickle(_legacy_pickle(f, file_size, budget), budget, _no_storage)
    if protocol != _LEGACY_PROTOCOL:
        raise PthError(f"{source}: unsupported legacy protocol version {protocol!r}; "
                       f"expected {_LEGACY_PROTOCOL}")
    sys_info = _unpickle(_legacy_pickle(f, file_size, budget), budget, _no_storage)
    if not isinstance(sys_info, dict):
        raise PthError(f"{source}: legacy system-info record must be a dict, got {sys_info!r}")
    return "<" if sys_info.get("little_endian", True) else ">"


def _legacy_skim(main: bytes, budget: _Budget) -> dict[str, tuple[TorchDtype, int]]:
    """First pass over the main pickle: the dtype and size of each root storage."""
    roots: dict[str, tuple[TorchDtype, int]] = {}

    def record(rest: tuple) -> _Storage:
        if len(rest) != 5:
            raise pickle.UnpicklingError(f"unexpected storage record {rest!r}")
        storage_type, key, numel = _storage_type(rest[0]), _text(rest[1]), _count(rest[3])
        if roots.setdefault(key, (storage_type.dtype, numel)) != (storage_type.dtype, numel):
            raise pickle.UnpicklingError(f"storage {key!r} is declared twice differently")
        return _Storage(np.empty(0, np.uint8), storage_type.dtype, "<")

    _unpickle(main, budget, record, dry_run=True)
    return roots


def _legacy_storages(f: Any, file_size: int, budget: _Budget,
                     roots: dict[str, tuple[TorchDtype, int]],
                     byteorder: str) -> dict[str, _Storage]:
    """Read the storage-key list and every storage's raw bytes.

    The sizes the pickle declares are checked against the bytes left in
    the file, and charged to ``budget``, before any storage is read.
    """
    source = budget.source
    keys = _unpickle(_legacy_pickle(f, file_size, budget), budget, _no_storage)
    if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise PthError(f"{source}: legacy storage-key record must be a list of strings")
    keys = [_text(k) for k in keys]
    for key in keys:
        if key not in roots:
            raise PthError(f"{source}: storage {key!r} is listed but no tensor declares it")
    if len(set(keys)) != len(keys):
        raise PthError(f"{source}: the legacy storage-key record lists a storage twice")
    nbytes = {k: roots[k][1] * _raw_dtype(roots[k][0], byteorder).itemsize for k in keys}
    needed, left = sum(nbytes.values()) + 8 * len(keys), file_size - f.tell()
    if needed > left:
        raise PthError(f"{source} is truncated: storages need {needed} bytes, "
                       f"only {left} follow the pickles")
    budget.charge(sum(nbytes.values()), f"{len(keys)} storages")
    storages = {}
    for key in keys:
        dtype, numel = roots[key]
        raw = _raw_dtype(dtype, byteorder)
        (count,) = struct.unpack(byteorder + "q", f.read(8))
        if count != numel:
            raise PthError(f"{source}: storage {key!r} header says {count} elements, "
                           f"the pickle says {numel}")
        buffer = f.read(nbytes[key])
        if len(buffer) < nbytes[key]:  # the file shrank while being read
            raise PthError(f"{source} is truncated: storage {key!r} needs "
                           f"{nbytes[key]} bytes, only {len(buffer)} left")
        storages[key] = _Storage(np.frombuffer(buffer, dtype=raw), dtype, byteorder)
    return storages


def _legacy_resolver(source: str, storages: dict[str, _Storage]) -> Callable[[tuple], _Storage]:
    """``load_storage`` for the second pass, including old storage views."""
    views: dict[str, _Storage] = {}

    def resolve(rest: tuple) -> _Storage:
        key, view = _text(rest[1]), rest[4]
        if key not in storages:
            raise PthError(f"{source} is missing the storage record {key!r} "
                           "(truncated or corrupt file?)")
        root = storages[key]
        if view is None:
            return root
        view_key, offset, size = _text(view[0]), _count(view[1]), _count(view[2])
        if offset + size > root.data.shape[0]:
            raise pickle.UnpicklingError(f"storage view {view_key!r} exceeds storage {key!r}")
        return views.setdefault(
            view_key, _Storage(root.data[offset:offset + size], root.dtype, root.byteorder))

    return resolve


def _load_legacy(f: Any, budget: _Budget) -> Any:
    """Read a legacy (pre-1.6, non-zip) ``torch.save`` file in two passes."""
    file_size = os.fstat(f.fileno()).st_size
    byteorder = _legacy_header(f, file_size, budget)
    main = _legacy_pickle(f, file_size, budget)
    roots = _legacy_skim(main, budget)
    storages = _legacy_storages(f, file_size, budget, roots, byteorder)
    return _unpickle(main, budget, _legacy_resolver(budget.source, storages))


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def _check_path(path: Any) -> tuple[str, str]:
    """Validate ``path``; return it as ``str`` plus its quoted form for messages."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path to a .pth file, got {type(path).__name__}")
    path = os.fspath(path)
    source = repr(path)
    if not os.path.exists(path):
        raise PthFileNotFoundError(f"cannot load {source}: no such file")
    if os.path.isdir(path):
        raise PthError(f"cannot load {source}: it is a directory, expected a .pth file")
    return path, source


def _sniff(path: str, source: str) -> str:
    """``'zip'`` or ``'legacy'`` from the first bytes; PthError for anything else."""
    with open(path, "rb") as f:
        head = f.read(_TAR_MAGIC_OFFSET + 5)
    if not head:
        raise PthError(f"{source} is empty; expected a torch.save file")
    if head[:4] in _ZIP_MAGICS:
        return "zip"
    if head[_TAR_MAGIC_OFFSET:_TAR_MAGIC_OFFSET + 5] == b"ustar":
        raise PthError(f"{source} uses the tar-based torch format from before torch 0.4, "
                       "which is not supported; re-save it with a newer torch")
    if not head.startswith(b"\x80"):  # every torch.save pickle starts with PROTO
        raise PthError(f"{source} is not a PyTorch file: expected a zip archive "
                       "(torch >= 1.6) or a legacy torch.save pickle stream")
    return "legacy"


def load(path: str | os.PathLike, *, max_bytes: int | None = None) -> Any:
    """Read a ``torch.save`` file (zip or legacy format) without torch.

    Tensors come back as numpy arrays, containers as dicts / lists / tuples;
    see the module docstring for the full mapping.  No pickled code runs:
    anything beyond tensors and containers raises :class:`PthError`, as do
    files that are missing (:class:`PthFileNotFoundError`), not torch files,
    truncated, or missing a storage record.  ``max_bytes`` caps what the
    load may allocate (default: ``$DNS_JAX_PTH_MAX_BYTES``, else
    ``DEFAULT_MAX_BYTES``); hostile sizes are refused before allocation
    (module docstring, "Memory limits").
    """
    limit = _resolve_max_bytes(max_bytes)
    path, source = _check_path(path)
    budget = _Budget(source, limit)
    if _sniff(path, source) == "zip":
        return _load_zip(path, budget)
    with open(path, "rb") as f:
        return _load_legacy(f, budget)


def _is_array_mapping(obj: Any) -> bool:
    """True for a non-empty mapping whose values are all numpy arrays."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(v, np.ndarray) for v in obj.values()))


def _describe(obj: Any) -> str:
    """Short description of a loaded object for error messages."""
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with keys {sorted(map(str, obj))[:10]}"
    return f"a {type(obj).__name__}"


def load_state_dict(path_or_obj: Any, key: str | None = None, *,
                    max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Return a flat ``{name: np.ndarray}`` state dict from a file or loaded object.

    ``path_or_obj`` is a path to a ``.pth`` file (read with :func:`load`) or
    an object :func:`load` returned.  With ``key`` the state dict is
    ``obj[key]``.  Otherwise the object itself is used if it maps names to
    arrays, else its ``'model'`` or ``'state_dict'`` entry (the official DnS
    wrappers).  Raises :class:`PthError` when no mapping of arrays is found.
    ``max_bytes`` is passed to :func:`load`.
    """
    if isinstance(path_or_obj, (str, os.PathLike)):
        obj = load(path_or_obj, max_bytes=max_bytes)
        source = repr(os.fspath(path_or_obj))
    else:
        obj, source = path_or_obj, "the given object"
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise PthError(f"{source} has no entry {key!r}; it holds {_describe(obj)}")
        found = obj[key]
        where = f"entry {key!r} of {source}"
    elif _is_array_mapping(obj):
        found, where = obj, source
    else:
        wrappers = [k for k in ("model", "state_dict")
                    if isinstance(obj, Mapping) and _is_array_mapping(obj.get(k))]
        found = obj[wrappers[0]] if wrappers else None
        where = source
    if not _is_array_mapping(found):
        shown = _describe(obj if found is None else found)
        raise PthError(
            f"{where} holds no state dict: expected a mapping of names to tensors, or a "
            f"dict whose 'model' or 'state_dict' entry is one; found {shown}")
    return {str(name): value for name, value in found.items()}
