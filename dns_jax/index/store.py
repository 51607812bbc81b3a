"""On-disk DnS index: one directory per collection.

Layout (format version FORMAT_VERSION):

    <dir>/index.json            manifest: format, version, networks (name, config, fingerprint),
                                representation kinds, list of committed shards (each with the ids
                                removed from it since), skipped videos
    <dir>/shards/000000/        one immutable shard per commit:
        ids.json                video ids, in order
        coarse.npy   (n, E)     CG vectors, float32
        selfsim.npy  (n,)       selector self-similarities, float32
        lengths.npy  (n,)       frames of each fine representation
        offsets.npy  (n + 1,)   start of each video in fine.npy
        fine.npy     (sum T, R, C)  FG-Att / FG / ViSiL: float32 features (C = dims);
                                    FG-Bin: packed codes, uint8, C = bits / 8 (64 bytes per region)

Atomicity: a shard is written into a temporary directory, flushed, then renamed into place; the
manifest is then replaced atomically (write + fsync + os.replace). A shard is part of the index only
once the manifest lists it, so a process killed at any point leaves the previous, complete index;
leftovers (temporary or unlisted shard directories) are removed when the index is next opened for
writing, and a rebuild resumes by skipping the ids already committed.

Staged shards (distributed builds): worker processes write shards without the writer lock with
`stage_shard` into <dir>/staging/part-<hash>/ (the shard files plus part.json: format version,
networks, fine kind, skipped videos), atomically (temporary directory + rename; a part that exists
already is a retried task's and is kept). `Index.adopt(parts)`, by the lock holder, checks each
part (format version, networks, kind, sizes), moves the good ones under shards/ and lists them all
in one manifest write; a part that cannot be adopted is moved to staging/rejected/ with the reason.
A video already in the index (or in an earlier part) is listed as removed in the later shard, so
nothing is indexed twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import dns_jax
from dns_jax.fileio import LockedError, ProcessLock, atomic_write_json, fsync_dir
from dns_jax.retrieval import Representations

FORMAT = "dns-jax-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
SHARDS = "shards"
STAGING = "staging"
REJECTED = "rejected"
PART_META = "part.json"


class IndexFormatError(ValueError):
    """Not an index, an index written by another format version, or an inconsistent one."""


class NetworkMismatchError(ValueError):
    """The networks given do not match those the index was built with."""


def network_fingerprint(model) -> str:
    """sha1 over the network name, config and every weight (order-independent of dict layout)."""
    import jax
    h = hashlib.sha1()
    h.update(model.name.encode())
    h.update(json.dumps(model.config, sort_keys=True, default=str).encode())
    leaves = jax.tree_util.tree_flatten_with_path(model.variables)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _part_ids(path: str):
    """(ids, skipped) of a staged part (to recompute its name)."""
    meta = read_part(path)
    ids = []
    if meta.get("count"):
        with open(os.path.join(path, "ids.json")) as f:
            ids = json.load(f)
    return ids, meta.get("skipped", {})


def describe_network(model) -> dict:
    return {"name": model.name, "config": json.loads(json.dumps(model.config, default=str)),
            "fingerprint": network_fingerprint(model)}


def _write_json_atomic(path: str, obj):
    atomic_write_json(path, obj, durable=True, indent=1, sort_keys=True)


def _save_npy(path: str, arr: np.ndarray):
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())


def write_shard_files(path: str, ids: Sequence[str], fine: Sequence[np.ndarray], coarse, selfsim, kind: str) -> dict:
    """Write one shard's files into the (new, empty) directory `path`, each flushed to disk; checks
    the fine representations' dtype for the index's `kind`. Returns {'count', 'frames'}."""
    n = len(ids)
    if not (len(fine) == n and np.shape(coarse)[0] == n and np.shape(selfsim)[0] == n):
        raise ValueError("ids, fine, coarse and selfsim must have one entry per video")
    want_dtype = np.uint8 if kind == "packed" else np.float32
    fine = [np.asarray(f) for f in fine]
    for f in fine:
        if f.dtype != want_dtype or f.ndim != 3:
            raise ValueError(f"fine representations of a {kind!r} index must be {np.dtype(want_dtype)} "
                             f"[T, R, C]; got {f.dtype} {f.shape}")
    lengths = np.array([f.shape[0] for f in fine], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with open(os.path.join(path, "ids.json"), "w") as f:
        json.dump([str(i) for i in ids], f)
        f.flush()
        os.fsync(f.fileno())
    _save_npy(os.path.join(path, "coarse.npy"), np.asarray(coarse, np.float32))
    _save_npy(os.path.join(path, "selfsim.npy"), np.asarray(selfsim, np.float32).reshape(-1))
    _save_npy(os.path.join(path, "lengths.npy"), lengths)
    _save_npy(os.path.join(path, "offsets.npy"), offsets)
    _save_npy(os.path.join(path, "fine.npy"), np.concatenate(fine, 0))
    return {"count": n, "frames": int(offsets[-1])}


def part_name(ids: Sequence[str], skipped: Optional[Dict[str, str]] = None) -> str:
    """The staged part's name: a hash of its ids (and skipped ids), so a retried task finds its part."""
    h = hashlib.sha1(json.dumps([list(map(str, ids)), sorted(map(str, skipped or {}))]).encode())
    return f"part-{h.hexdigest()[:20]}"


def stage_shard(directory: str, ids: Sequence[str], fine: Sequence[np.ndarray], coarse, selfsim, *,
                networks: Dict[str, dict], fine_kind: str, fine_dims: int,
                skipped: Optional[Dict[str, str]] = None, zero_codes: int = 0,
                before_rename: Optional[Callable[[str], None]] = None) -> str:
    """Write one immutable shard for a later `Index.adopt` into <directory>/staging/<part_name>,
    atomically (temporary directory, files flushed, renamed into place). Needs no writer lock (many
    workers stage at once). `networks`: {'fine', 'coarse', 'selector': describe_network(model)}.
    A part with no videos records only `skipped` ({id: reason}). If the part exists already (a
    retried task), it is kept as it is. Returns the part's path. `before_rename(tmp)` is a test hook."""
    ids = [str(i) for i in ids]
    skipped = {str(k): str(v) for k, v in (skipped or {}).items()}
    root = os.path.join(directory, STAGING)
    os.makedirs(root, exist_ok=True)
    name = part_name(ids, skipped)
    final = os.path.join(root, name)
    if os.path.exists(os.path.join(final, PART_META)):
        return final
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}-{time.monotonic_ns()}")
    os.makedirs(tmp)
    info = write_shard_files(tmp, ids, fine, coarse, selfsim, fine_kind) if ids else {"count": 0, "frames": 0}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dns_jax_version": dns_jax.__version__,
            "networks": {role: {"name": d["name"], "fingerprint": d["fingerprint"]} for role, d in networks.items()},
            "fine": {"kind": fine_kind, "dims": int(fine_dims)}, "skipped": skipped,
            "zero_codes": int(zero_codes), **info}
    _write_json_atomic(os.path.join(tmp, PART_META), meta)
    fsync_dir(tmp)
    if before_rename is not None:
        before_rename(tmp)
    try:
        os.rename(tmp, final)
    except OSError:                  # the same part, staged meanwhile by a retried task
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(final, PART_META)):
            raise
    fsync_dir(root)
    return final


def read_part(path: str) -> dict:
    """A staged part's part.json (IndexFormatError if unreadable)."""
    try:
        with open(os.path.join(path, PART_META)) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"staged shard {path!r} has no readable {PART_META}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFormatError(f"{path!r} is not a staged dns-jax index shard")
    return meta


def staged_parts(directory: str) -> List[str]:
    """Paths of the complete staged parts of an index directory (sorted by name)."""
    root = os.path.join(directory, STAGING)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, n) for n in sorted(os.listdir(root))
            if n.startswith("part-") and os.path.exists(os.path.join(root, n, PART_META))]


def clean_staging(directory: str) -> None:
    """Remove the temporary directories of staged parts that were never completed (killed workers)."""
    root = os.path.join(directory, STAGING)
    if os.path.isdir(root):
        for n in os.listdir(root):
            if n.startswith(".tmp-"):
                shutil.rmtree(os.path.join(root, n), ignore_errors=True)


class Shard:
    """One committed shard (read-only; fine features memory-mapped)."""

    def __init__(self, path: str):
        self.path = path
        with open(os.path.join(path, "ids.json")) as f:
            self.ids: List[str] = json.load(f)
        self.coarse = np.load(os.path.join(path, "coarse.npy"), mmap_mode="r")   # read when used
        self.selfsim = np.load(os.path.join(path, "selfsim.npy"))
        self.lengths = np.load(os.path.join(path, "lengths.npy"))
        self.offsets = np.load(os.path.join(path, "offsets.npy"))
        self.fine = np.load(os.path.join(path, "fine.npy"), mmap_mode="r")
        n = len(self.ids)
        if not (self.coarse.shape[0] == self.selfsim.shape[0] == self.lengths.shape[0] == n
                and self.offsets.shape[0] == n + 1 and self.offsets[-1] == self.fine.shape[0]):
            raise IndexFormatError(f"shard {path!r} is inconsistent (array sizes do not match its {n} ids)")

    def fine_rep(self, i: int) -> np.ndarray:
        return self.fine[self.offsets[i]:self.offsets[i + 1]]



def read_manifest(directory: str) -> dict:
    """The manifest of the index in `directory` (IndexFormatError if missing, unreadable or of
    another format version)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise IndexFormatError(f"{directory!r} is not a DnS index (no {MANIFEST}); build one with index.py")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"cannot read the index manifest {path!r}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path!r} is not a dns-jax index manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"the index at {directory!r} was written in index format version {version} (by dns_jax "
            f"{manifest.get('dns_jax_version', '?')}); this dns_jax ({dns_jax.__version__}) reads "
            f"version {FORMAT_VERSION} only. Rebuild the index with this version's index.py.")
    return manifest


class Index:
    """A DnS index directory. `Index.open(dir)` to read, `Index.create(dir, ...)` or
    `Index.open(dir, writable=True)` to append with `add(...)`.

    Reading: `ids`, `coarse` (N, E), `selfsim` (N,), `fine_rep(i)`, `position(id)`, `len()`;
    it implements the database protocol of `dns_jax.retrieval.DnS.search`.
    """

    def __init__(self, directory: str, manifest: dict, writable: bool):
        self.directory = directory
        self.manifest = manifest
        self.writable = writable
        self._lock_fd = None
        if writable:
            self._lock()
        self._load()

    def _lock(self):
        """One writer at a time (an advisory lock the OS releases if the writer dies)."""
        try:
            self._lock_fd = ProcessLock(os.path.join(self.directory, ".lock"), f"the index at {self.directory!r}")
        except LockedError as e:
            raise IndexFormatError(f"{e} (another process is writing it)") from None

    def close(self):
        """Release the writer lock (also released when the process exits)."""
        if self._lock_fd is not None:
            self._lock_fd.release()
            self._lock_fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- opening ----------------------------------------------------------------------------
    @staticmethod
    def exists(directory: str) -> bool:
        return os.path.exists(os.path.join(directory, MANIFEST))

    @classmethod
    def create(cls, directory: str, fine_model, coarse_model, selector_model, fine_kind: str,
               fine_dims: int) -> "Index":
        """A new empty index (the directory may exist but must not hold an index)."""
        if cls.exists(directory):
            raise FileExistsError(f"{directory!r} already holds an index; open it to append")
        os.makedirs(os.path.join(directory, SHARDS), exist_ok=True)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dns_jax_version": dns_jax.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "networks": {"fine": describe_network(fine_model), "coarse": describe_network(coarse_model),
                         "selector": describe_network(selector_model)},
            "fine": {"kind": fine_kind, "dims": int(fine_dims)},
            "shards": [], "count": 0, "skipped": {}, "zero_codes": 0,
        }
        _write_json_atomic(os.path.join(directory, MANIFEST), manifest)
        return cls(directory, manifest, writable=True)

    @classmethod
    def open(cls, directory: str, writable: bool = False, shards: Optional[Sequence[str]] = None) -> "Index":
        """The index in `directory`; `shards`: only these shards (by name, read-only), as the
        actors of a sharded search hold them."""
        manifest = read_manifest(directory)
        if shards is not None:
            if writable:
                raise ValueError("an index opened on some of its shards is read-only")
            listed = {s["name"] for s in manifest["shards"]}
            unknown = sorted(set(shards) - listed)
            if unknown:
                raise IndexFormatError(f"the index at {directory!r} has no shard {unknown[0]!r}")
            manifest = dict(manifest, shards=[s for s in manifest["shards"] if s["name"] in set(shards)])
        index = cls(directory, manifest, writable)
        if writable:
            index._clean_leftovers()
        return index

    def _load(self):
        """Read the listed shards; videos a shard entry lists as `removed` are left out."""
        self.shards = [Shard(os.path.join(self.directory, SHARDS, s["name"])) for s in self.manifest["shards"]]
        keep = []
        for entry, shard in zip(self.manifest["shards"], self.shards):
            removed = set(entry.get("removed", ()))
            keep.append(np.array([v not in removed for v in shard.ids], bool))
        self.ids: List[str] = [v for shard, k in zip(self.shards, keep) for v, kept in zip(shard.ids, k) if kept]
        self._where = [(si, li) for si, k in enumerate(keep) for li in np.flatnonzero(k).tolist()]
        self._pos: Dict[str, int] = {v: i for i, v in enumerate(self.ids)}
        self._keep = keep
        self._coarse: Optional[np.ndarray] = None       # every CG vector, read on first use
        self._at: Optional[tuple] = None
        self.selfsim = (np.concatenate([s.selfsim[k] for s, k in zip(self.shards, keep)], 0) if self.ids
                        else np.zeros(0, np.float32))
        self.lengths = (np.concatenate([s.lengths[k] for s, k in zip(self.shards, keep)], 0) if self.ids
                        else np.zeros(0, np.int64))

    def _clean_leftovers(self):
        root = os.path.join(self.directory, SHARDS)
        listed = {s["name"] for s in self.manifest["shards"]}
        for name in os.listdir(root):
            if name not in listed:
                path = os.path.join(root, name)
                if os.path.exists(os.path.join(path, PART_META)):     # adopted, manifest not written: restage
                    os.makedirs(os.path.join(self.directory, STAGING), exist_ok=True)
                    try:
                        os.rename(path, os.path.join(self.directory, STAGING, part_name(*_part_ids(path))))
                        continue
                    except OSError:
                        pass
                shutil.rmtree(path, ignore_errors=True)
        for name in os.listdir(self.directory):
            if name.startswith(MANIFEST + ".tmp-"):
                try:
                    os.remove(os.path.join(self.directory, name))
                except OSError:
                    pass

    # -- reading ----------------------------------------------------------------------------
    @property
    def coarse(self) -> np.ndarray:
        """(N, E) float32 CG vectors of the indexed videos (read from the shards on first use)."""
        if self._coarse is None:
            dims = self.coarse_dims
            self._coarse = (np.concatenate([s.coarse[k] for s, k in zip(self.shards, self._keep)], 0)
                            .astype(np.float32, copy=False) if self.ids else np.zeros((0, dims), np.float32))
        return self._coarse

    @property
    def coarse_dims(self) -> int:
        return next((s.coarse.shape[1] for s in self.shards if s.coarse.ndim == 2 and s.coarse.shape[0]), 0)

    def coarse_rows(self, positions) -> np.ndarray:
        """CG vectors [..., E] float32 of the videos at `positions` (any shape), read from the
        shards' memory-mapped files (only those rows) unless every vector is in memory already."""
        pos = np.asarray(positions, np.int64)
        if self._coarse is not None:
            return self._coarse[pos]
        shard, local = self._positions()
        flat = pos.reshape(-1)
        out = np.empty((flat.shape[0], self.coarse_dims), np.float32)
        for si in np.unique(shard[flat]):
            sel = np.flatnonzero(shard[flat] == si)
            rows = local[flat[sel]]
            order = np.argsort(rows, kind="stable")          # sorted reads from the memory map
            out[sel[order]] = self.shards[int(si)].coarse[rows[order]]
        return out.reshape(pos.shape + (out.shape[1],))

    def _positions(self):
        """(shard number [N], row in its shard [N]) of every indexed video, as arrays."""
        if self._at is None:
            w = np.asarray(self._where, np.int64).reshape(-1, 2)
            self._at = (w[:, 0], w[:, 1])
        return self._at

    def live_rows(self) -> Dict[str, np.ndarray]:
        """{shard name: [rows] position of each of its rows in the index, -1 if removed}."""
        out, start = {}, 0
        for entry, k in zip(self.manifest["shards"], self._keep):
            pos = np.full(k.shape[0], -1, np.int64)
            pos[k] = start + np.arange(int(k.sum()))
            start += int(k.sum())
            out[entry["name"]] = pos
        return out

    @property
    def coarse_search(self) -> str:
        """How the coarse stage searches: 'exact' (every CG vector), 'shortlist' or 'faiss-ivfpq'
        (index/compressed.py)."""
        return str(self.manifest.get("coarse_search", "exact"))

    def set_coarse_search(self, kind: str) -> None:
        """Record the coarse search `kind` in the manifest (atomically)."""
        if not self.writable:
            raise PermissionError("index opened read-only; use Index.open(dir, writable=True)")
        if kind == self.coarse_search:
            return
        manifest = json.loads(json.dumps(self.manifest))
        manifest["coarse_search"] = str(kind)
        _write_json_atomic(os.path.join(self.directory, MANIFEST), manifest)
        self.manifest = manifest

    def __len__(self):
        return len(self.ids)

    @property
    def fine_kind(self) -> str:
        return self.manifest["fine"]["kind"]

    @property
    def skipped(self) -> Dict[str, str]:
        return dict(self.manifest.get("skipped", {}))

    def __contains__(self, video_id) -> bool:
        return str(video_id) in self._pos

    def position(self, video_id: str) -> int:
        try:
            return self._pos[str(video_id)]
        except KeyError:
            raise KeyError(f"unknown video id {video_id!r}: not in the index at {self.directory!r} "
                           f"({len(self.ids)} videos)") from None

    def fine_rep(self, i: int) -> np.ndarray:
        s, local = self._where[int(i)]
        return self.shards[s].fine_rep(local)

    def fine_reps(self, idx) -> List[np.ndarray]:
        return [self.fine_rep(int(i)) for i in idx]

    def representations(self, video_ids: Sequence[str]):
        """The stored representations of some indexed videos, as a retrieval.Representations."""
        pos = [self.position(v) for v in video_ids]
        return Representations(ids=[str(v) for v in video_ids], fine=[np.asarray(self.fine_rep(p)) for p in pos],
                               coarse=self.coarse_rows(pos), selfsim=self.selfsim[pos])

    def check_networks(self, fine_model=None, coarse_model=None, selector_model=None):
        """Raise NetworkMismatchError if a given network is not the one the index was built with."""
        for role, model in (("fine", fine_model), ("coarse", coarse_model), ("selector", selector_model)):
            if model is None:
                continue
            want = self.manifest["networks"][role]
            got = describe_network(model)
            if got["name"] != want["name"] or got["fingerprint"] != want["fingerprint"]:
                raise NetworkMismatchError(
                    f"the {role} network {got['name']!r} (fingerprint {got['fingerprint'][:12]}) is not the one "
                    f"the index at {self.directory!r} was built with ({want['name']!r}, fingerprint "
                    f"{want['fingerprint'][:12]}); its stored representations would not be comparable")

    # -- writing ----------------------------------------------------------------------------
    def add(self, ids: Sequence[str], fine: Sequence[np.ndarray], coarse: np.ndarray, selfsim: np.ndarray,
            skipped: Optional[Dict[str, str]] = None, zero_codes: int = 0):
        """Commit one shard of videos (atomically) and record skipped ones."""
        if not self.writable:
            raise PermissionError("index opened read-only; use Index.open(dir, writable=True)")
        ids = [str(i) for i in ids]
        dup = [i for i in ids if i in self._pos]
        if dup or len(set(ids)) != len(ids):
            raise ValueError(f"video ids already in the index or repeated: {sorted(set(dup))[:5]}")
        n = len(ids)
        if not (len(fine) == n and np.shape(coarse)[0] == n and np.shape(selfsim)[0] == n):
            raise ValueError("ids, fine, coarse and selfsim must have one entry per video")
        manifest = json.loads(json.dumps(self.manifest))
        if skipped:
            manifest["skipped"].update({str(k): str(v) for k, v in skipped.items()})
        if n:
            name = self._next_shard_name(manifest)
            tmp = os.path.join(self.directory, SHARDS, f".tmp-{name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            info = write_shard_files(tmp, ids, fine, coarse, selfsim, self.fine_kind)
            fsync_dir(tmp)
            final = os.path.join(self.directory, SHARDS, name)
            os.rename(tmp, final)
            fsync_dir(os.path.join(self.directory, SHARDS))
            manifest["shards"].append({"name": name, **info})
            manifest["count"] = int(manifest["count"]) + n
            manifest["zero_codes"] = int(manifest.get("zero_codes", 0)) + int(zero_codes)
            for i in ids:
                manifest["skipped"].pop(i, None)
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_json_atomic(os.path.join(self.directory, MANIFEST), manifest)
        self.manifest = manifest
        if n:
            self._load()

    def _next_shard_name(self, manifest: dict) -> str:
        name = f"{len(manifest['shards']):06d}"
        while os.path.exists(os.path.join(self.directory, SHARDS, name)):
            name = f"{int(name) + 1:06d}"
        return name

    def part_mismatch(self, meta: dict) -> Optional[str]:
        """Why a staged part (its part.json) cannot join this index, or None if it can."""
        if meta.get("format_version") != FORMAT_VERSION:
            return (f"written in index format version {meta.get('format_version')} (by dns_jax "
                    f"{meta.get('dns_jax_version', '?')}), this index is version {FORMAT_VERSION}")
        for role, want in self.manifest["networks"].items():
            got = meta.get("networks", {}).get(role, {})
            if got.get("name") != want["name"] or got.get("fingerprint") != want["fingerprint"]:
                return (f"written by the {role} network {got.get('name')!r} (fingerprint "
                        f"{str(got.get('fingerprint'))[:12]}), the index was built with {want['name']!r} "
                        f"(fingerprint {want['fingerprint'][:12]})")
        if meta.get("fine", {}).get("kind") != self.fine_kind:
            return f"stores {meta.get('fine', {}).get('kind')!r} fine representations, the index {self.fine_kind!r}"
        return None

    def adopt(self, parts: Sequence[str]) -> Dict[str, str]:
        """Add staged parts (`stage_shard`, in this order) to the index in one manifest write. A part
        that cannot join (another network, format version or fine kind, or inconsistent files) is
        moved to staging/rejected/ and returned as {part path: reason}; the others are moved under
        shards/. Ids already indexed (or in an earlier part) are listed as removed in the later
        shard; the skipped videos of the parts are recorded."""
        if not self.writable:
            raise PermissionError("index opened read-only; use Index.open(dir, writable=True)")
        manifest = json.loads(json.dumps(self.manifest))
        seen = set(self._pos)
        rejected: Dict[str, str] = {}
        adopted, recorded = [], []
        for path in parts:
            try:
                meta = read_part(path)
                reason = self.part_mismatch(meta)
                if reason is None and meta.get("count"):
                    shard = Shard(path)
                    if len(shard.ids) != meta["count"]:
                        reason = f"its part.json lists {meta['count']} videos, its files {len(shard.ids)}"
                    elif shard.fine.ndim != 3 or shard.fine.shape[2] != self.manifest["fine"]["dims"]:
                        reason = f"fine representations of shape {shard.fine.shape[1:]}, the index stores " \
                                 f"{self.manifest['fine']['dims']} per region"
            except IndexFormatError as e:
                meta, reason = {}, str(e)
            if reason is not None:
                rejected[path] = reason
                dest = os.path.join(self.directory, STAGING, REJECTED)
                os.makedirs(dest, exist_ok=True)
                try:
                    os.replace(path, os.path.join(dest, os.path.basename(path)))
                except OSError:
                    shutil.rmtree(os.path.join(dest, os.path.basename(path)), ignore_errors=True)
                    os.replace(path, os.path.join(dest, os.path.basename(path)))
                continue
            manifest["skipped"].update(meta.get("skipped", {}))
            if meta.get("count"):
                name = self._next_shard_name(manifest)
                while any(s["name"] == name for s in manifest["shards"]):
                    name = f"{int(name) + 1:06d}"
                os.rename(path, os.path.join(self.directory, SHARDS, name))
                entry = {"name": name, "count": int(meta["count"]), "frames": int(meta["frames"])}
                with open(os.path.join(self.directory, SHARDS, name, "ids.json")) as f:
                    ids = json.load(f)
                again = sorted(set(ids) & seen)
                if again:
                    entry["removed"] = again
                seen.update(ids)
                manifest["shards"].append(entry)
                manifest["count"] = int(manifest["count"]) + len(ids) - len(again)
                manifest["zero_codes"] = int(manifest.get("zero_codes", 0)) + int(meta.get("zero_codes", 0))
                adopted.append(name)
            else:
                recorded.append(path)
        for v in seen:
            manifest["skipped"].pop(v, None)
        if adopted:
            fsync_dir(os.path.join(self.directory, SHARDS))
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_json_atomic(os.path.join(self.directory, MANIFEST), manifest)
        self.manifest = manifest
        self._load()
        for path in recorded:                     # parts of skipped videos only: in the manifest now
            shutil.rmtree(path, ignore_errors=True)
        return rejected

    def remove(self, ids: Sequence[str]) -> List[str]:
        """Take videos out of the index (atomically: one manifest write marks them removed in the
        shard that holds them; the shard files stay immutable). Unknown ids are ignored; returns
        the ids removed. A removed id can be added again (a changed video)."""
        if not self.writable:
            raise PermissionError("index opened read-only; use Index.open(dir, writable=True)")
        gone = [str(v) for v in dict.fromkeys(ids) if str(v) in self._pos]
        manifest = json.loads(json.dumps(self.manifest))
        for v in gone:
            entry = manifest["shards"][self._where[self._pos[v]][0]]
            entry["removed"] = sorted(set(entry.get("removed", [])) | {v})
        dropped_skips = [v for v in ids if str(v) in manifest["skipped"]]
        for v in dropped_skips:
            manifest["skipped"].pop(str(v), None)
        if not gone and not dropped_skips:
            return []
        manifest["count"] = int(manifest["count"]) - len(gone)
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_json_atomic(os.path.join(self.directory, MANIFEST), manifest)
        self.manifest = manifest
        self._load()
        return gone

    # -- accounting -------------------------------------------------------------------------
    def bytes_per_video(self) -> Dict[str, float]:
        """Average stored bytes per video for each representation (array payload only)."""
        n = max(len(self), 1)
        per_frame = [s.fine[0].nbytes if s.fine.shape[0] else 0 for s in self.shards]
        fine = sum(per_frame[si] * int(self.shards[si].lengths[li]) for si, li in self._where)
        return {"fine": fine / n, "coarse": self.coarse.nbytes / n, "selector": self.selfsim.nbytes / n}
