"""The service's one adapter to a `dns-jax build` work directory.

Everything the service reads or writes in the work directory goes through `Collection`, so that the
layout of the work directory, the query code and the collection-update code can change behind this
narrow interface:

    count() -> int                                   videos in the index
    list(offset, limit) -> (total, [VideoInfo])      in index order
    get(video_id) -> VideoInfo | None
    video_path(video_id) -> str | None               the video file, never derived from the id
    new_video_id(video_id, filename) -> str          a free id for an addition (ValueError / KeyError)
    search(query, stage, budget, topk) -> SearchOutcome   query = QueryFile(path, name) | QueryId(id)
    add(path, video_id, progress, job) -> VideoInfo  features, representations, atomic index append
    recovered_jobs() -> {job id: (state, reason)}    additions found unfinished at start-up
    read_json(name) / write_json(name, obj)          the service's own state (job history)
    upload_dir() -> str                              temporary uploads (same file system as the store)
    warm_up()                                        compile the kernels before the first request

Additions (until `dns-jax add` exists, implemented here the simplest correct way): the upload's
features are extracted with the collection's extractor and whitening, indexed with the trained
networks and appended to the index as one shard (`Index.add`: shard renamed into place, then the
manifest replaced atomically). The files that belong to an added video live under WORK/service/added/
under a random key, never under its id:

    WORK/service/added/<key>.json   record {video_id, file, filename, job, added}
    WORK/service/added/<key>.<ext>  the video file (extension from the decoded container format)
    WORK/service/added/<key>.npy    its whitened [T, R, D] features (the query/segment input)

The record is written before the index commit. At start-up a record whose id is not in the index
(the process died before the commit) is removed with its files and its job reported as not added;
files without a record and leftover uploads are deleted. So after a SIGKILL at any point a video is
either fully in the collection (index entry, features, file) or not in it at all.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from dns_jax.app.build import OFFLINE_BACKBONE, add_videos
from dns_jax.app.query import Searcher, segment_dict
from dns_jax.app.workdir import STATE
from dns_jax.features import load_extractor
from dns_jax.features.pca import apply_whitening, whitening_matrices
from dns_jax.features.video import VideoError
from dns_jax.fileio import atomic_open, fsync_dir
from dns_jax.index import STAGES, Index
from dns_jax.index.store import MANIFEST
from dns_jax.validation import FeatureError, check_video

SERVICE_DIR = "service"
ADDED = "added"
UPLOADS = "uploads"
MAX_ID_LENGTH = 200
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_KEY = re.compile(r"^[0-9a-f]{32}$")
_EXTENSION = re.compile(r"^\.[a-z0-9]{1,5}$")


class CollectionError(ValueError):
    """A request the collection cannot satisfy (bad id, unusable video); the message says why."""


class VideoExists(CollectionError):
    """An addition under an id the collection already has."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    video_id: str
    frames: int                      # frames of the index's fine representation (1 per second)
    source: str                      # "build" (the folder `dns-jax build` indexed) or "added"
    filename: Optional[str]          # the file's base name (display only)
    size_bytes: Optional[int]        # None when the file is missing


@dataclasses.dataclass(frozen=True)
class QueryFile:
    """A video file to search with (an upload); `name` is the query id reported back."""
    path: str
    name: str


@dataclasses.dataclass(frozen=True)
class QueryId:
    """An indexed video to search with."""
    video_id: str


@dataclasses.dataclass
class Match:
    video_id: str
    score: float
    frames: int
    segments: List[dict]             # query_start, query_end, target_start, target_end, score


@dataclasses.dataclass
class SearchOutcome:
    query: str
    query_frames: int
    results: List[Match]


def _atomic_write(path: str, data: bytes) -> None:
    with atomic_open(path, "wb", durable=True) as f:
        f.write(data)


def _save_npy_atomic(path: str, arr: np.ndarray) -> None:
    with atomic_open(path, "wb", durable=True) as f:
        np.save(f, arr)


def _file_size(path: Optional[str]) -> Optional[int]:
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return None


def resolve_workdir(path: str) -> str:
    """A work directory, or the folder `dns-jax demo` wrote (its build is in `build/`)."""
    if not os.path.exists(os.path.join(path, STATE)) and os.path.exists(os.path.join(path, "build", STATE)):
        return os.path.join(path, "build")
    return path


class Collection:
    """A built work directory, loaded once: the networks, the index and the added-video store.

    Thread-safe: searches, additions and index reloads hold one engine lock while they use the
    networks or swap the index snapshot; feature extraction (the slow part of an upload) runs
    outside it.
    """

    def __init__(self, workdir: str, log: Callable[[str], None] = lambda *_: None, max_extractions: int = 2):
        self.log = log
        workdir = resolve_workdir(workdir)
        self._engine = _Engine(workdir, self)       # raises WorkdirError for an unbuilt directory
        self.workdir = self._engine.wd.root
        self.dims = int(self._engine.settings.get("dims", 512))
        self._dir = os.path.join(self.workdir, SERVICE_DIR)
        self._added_dir = os.path.join(self._dir, ADDED)
        self._uploads = os.path.join(self._dir, UPLOADS)
        os.makedirs(self._added_dir, exist_ok=True)
        os.makedirs(self._uploads, exist_ok=True)
        self._lock = threading.RLock()               # the engine: networks, index snapshot
        self._extract_lock = threading.Lock()        # lazy extractor construction
        self._add_lock = threading.Lock()            # one addition at a time (each runs the update path)
        self._extract_slots = threading.BoundedSemaphore(max_extractions)   # uploads decoded at once
        self._manifest_stamp = self._stamp()
        self._records: Dict[str, dict] = {}          # video id -> record of an added video
        self._recovered: Dict[str, Tuple[str, str]] = {}
        self._recover()
        self._built_paths = self._scan_built_videos()

    # -- the collection -----------------------------------------------------------------------
    @property
    def _index(self):
        return self._engine.index

    def count(self) -> int:
        self._refresh()
        return len(self._index)

    def list(self, offset: int = 0, limit: int = 50) -> Tuple[int, List[VideoInfo]]:
        self._refresh()
        index = self._index
        ids = index.ids[offset:offset + limit]
        return len(index), [self._info(index, v) for v in ids]

    def get(self, video_id: str) -> Optional[VideoInfo]:
        self._refresh()
        index = self._index
        return self._info(index, video_id) if video_id in index else None

    def video_path(self, video_id: str) -> Optional[str]:
        """The file of an indexed video, or None. Looked up in the catalogue (never built from the
        id): the build's own listing of its video folder, or an added video's record."""
        if video_id not in self._index:
            return None
        rec = self._records.get(video_id)
        path = os.path.join(self._added_dir, rec["file"]) if rec else self._built_paths.get(video_id)
        return path if path and os.path.isfile(path) else None

    def _info(self, index, video_id: str) -> VideoInfo:
        rec = self._records.get(video_id)
        path = self.video_path(video_id)
        frames = int(index.lengths[index.position(video_id)])
        if rec:
            return VideoInfo(video_id, frames, "added", rec.get("filename") or rec["file"], _file_size(path))
        built = self._built_paths.get(video_id)
        return VideoInfo(video_id, frames, "build", os.path.basename(built) if built else None, _file_size(path))

    def _scan_built_videos(self) -> Dict[str, str]:
        """{id: path} of every video file of the collection as the build recorded it (the folder's
        and those added with `dns-jax add`), where the file still exists."""
        wd = self._engine.wd
        paths = {}
        for vid, rec in wd.read_state().get("sources", {}).items():
            path = wd.resolve(rec.get("path")) if rec.get("status", "ok") == "ok" else None
            if path and os.path.isfile(path):
                paths[vid] = path
        return paths

    # -- index snapshots ----------------------------------------------------------------------
    def _stamp(self):
        try:
            st = os.stat(os.path.join(self._engine.wd.index, MANIFEST))
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self, force: bool = False) -> None:
        """Swap in a new read-only snapshot of the index when its manifest changed (an addition
        here, or another process appending to the same work directory)."""
        stamp = self._stamp()
        if not force and stamp == self._manifest_stamp:
            return
        with self._lock:
            stamp = self._stamp()
            if not force and stamp == self._manifest_stamp:
                return
            self._engine.index = Index.open(self._engine.wd.index)
            self._engine.dns._coarse_db_key = None  # its cache is keyed by the database object's id()
            self._manifest_stamp = stamp
            self._load_records()
            self._built_paths = self._scan_built_videos()

    # -- search -------------------------------------------------------------------------------
    def search(self, query: Union[QueryFile, QueryId], stage: str = "dns", budget: float = 0.05,
               topk: int = 10, segments: Optional[int] = None) -> SearchOutcome:
        """Rank the collection for a query, the way `dns-jax query` does (same code, same scores).
        Segments are computed for the first `segments` results (default: all `topk`)."""
        if stage not in STAGES:
            raise CollectionError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if not (0.0 <= budget <= 1.0):
            raise CollectionError(f"budget must be between 0 and 1, got {budget}")
        if topk < 1:
            raise CollectionError(f"topk must be at least 1, got {topk}")
        self._refresh()
        if isinstance(query, QueryFile):
            prepared = _Prepared(query.name, self.extract(query.path))   # outside the engine lock
        elif isinstance(query, QueryId):
            prepared = _Prepared(query.video_id, self.features(query.video_id))
        else:
            raise TypeError(f"query must be a QueryFile or a QueryId, got {type(query).__name__}")
        with self._lock:
            res = self._engine.search(prepared, stage, budget, topk,
                                      segments=topk if segments is None else segments)
            index = self._engine.index
            matches = [Match(v, s, int(index.lengths[index.position(v)]), [segment_dict(g) for g in segs])
                       for v, s, segs in res.top]
        return SearchOutcome(res.query_id, int(prepared.features.shape[0]), matches)

    def features(self, video_id: str) -> np.ndarray:
        """Whitened [T, R, D] features of an indexed video (the query and segment input)."""
        if video_id not in self._index:
            raise KeyError(f"no video {video_id!r} in the collection")
        rec = self._records.get(video_id)
        if rec is not None:
            return np.load(os.path.join(self._added_dir, rec["key"] + ".npy"))
        import h5py
        with h5py.File(self._engine.wd.features, "r") as f:
            if video_id in f:
                return f[video_id][:]
        raise KeyError(f"no stored features for {video_id!r}")

    def extract(self, path: str) -> np.ndarray:
        """Whitened features of a video file with the collection's extractor; a truncated or
        corrupt file raises CollectionError (strict decoding, as the build)."""
        extractor, whiten = self._extractor()
        try:
            with self._extract_slots:
                raw = extractor.extract_video(path, strict=True)
            return check_video(apply_whitening(raw, *whiten), self.dims, "upload")
        except (VideoError, FeatureError) as e:
            raise CollectionError(str(e).replace(path, "the upload")) from None

    def _extractor(self):
        with self._extract_lock:
            eng = self._engine
            if eng._extractor is None:
                pca = eng.settings.get("pca") or eng.wd.pca
                eng._whiten = whitening_matrices(pca, self.dims)
                eng._extractor = load_extractor(eng.settings.get("backbone", OFFLINE_BACKBONE), None)
            return eng._extractor, eng._whiten

    def warm_up(self) -> float:
        """Compile the extractor and each stage's kernels on an indexed video; returns seconds."""
        t0 = time.perf_counter()
        extractor, _ = self._extractor()
        extractor(np.zeros((1, 224, 224, 3), np.uint8))
        if len(self._index):
            vid = self._index.ids[0]
            for stage in ("coarse", "fine", "dns"):
                self.search(QueryId(vid), stage, 0.05, topk=min(10, len(self._index)))
        return time.perf_counter() - t0

    # -- additions ----------------------------------------------------------------------------
    def new_video_id(self, video_id: Optional[str], filename: Optional[str] = None) -> str:
        """The id an addition will get: `video_id` if given (VideoExists if taken, CollectionError
        if malformed), else the upload's file name stem made safe, with -2, -3, ... if taken."""
        if video_id is not None:
            vid = str(video_id).strip()
            if not vid or len(vid) > MAX_ID_LENGTH or any(ord(c) < 32 for c in vid) or vid != vid.strip("/"):
                raise CollectionError(f"video_id must be 1-{MAX_ID_LENGTH} printable characters "
                                      "without leading or trailing '/'")
            if self._taken(vid):
                raise VideoExists(f"the collection already has a video {vid!r}")
            return vid
        stem = os.path.splitext(os.path.basename(filename or ""))[0]
        base = _ID_CHARS.sub("_", stem).strip("._-")[:MAX_ID_LENGTH - 8] or "video"
        vid, n = base, 1
        while self._taken(vid):
            n += 1
            vid = f"{base}-{n}"
        return vid

    def _taken(self, vid: str) -> bool:
        self._refresh()
        return vid in self._index or vid in self._records

    def add(self, path: str, video_id: str, progress: Callable[[float, str], None] = lambda *_: None,
            job: Optional[str] = None, extension: str = ".video", filename: Optional[str] = None) -> VideoInfo:
        """Add the video file `path` (moved into the store, under a random name with `extension`)
        as `video_id`. Returns its info once searches see it. CollectionError (nothing added) if
        the video cannot be used."""
        if not _EXTENSION.match(extension):
            raise CollectionError(f"bad file extension {extension!r}")
        progress(0.05, "extracting features")
        x = self.extract(path)
        key = uuid.uuid4().hex
        ext = extension
        rec = {"video_id": video_id, "key": key, "file": key + ext, "job": job,
               "filename": os.path.basename(filename or path), "added": time.strftime("%Y-%m-%dT%H:%M:%S")}
        files = [os.path.join(self._added_dir, n) for n in (key + ext, key + ".npy", key + ".json")]
        committed = False
        try:
            progress(0.7, "storing")
            os.replace(path, files[0])
            _save_npy_atomic(files[1], x)
            _atomic_write(files[2], json.dumps(rec, indent=1).encode())
            fsync_dir(self._added_dir)
            progress(0.3, "adding to the collection")
            if self._taken(video_id):
                raise VideoExists(f"the collection already has a video {video_id!r}")
            # the collection-update path of `dns-jax add`: features into the work directory's
            # stores with its extractor and PCA, representations by its trained networks, one
            # atomic index commit (searches go on meanwhile: they read the previous snapshot)
            with self._add_lock:
                add_videos(self.workdir, [files[0]], [video_id], progress=False)
            with self._lock:
                committed = video_id in Index.open(self._engine.wd.index)
                if committed:
                    self._records[video_id] = rec
            if not committed:
                raise CollectionError(f"{video_id!r} could not be added (see the server log)")
            self._refresh(force=True)
        except Exception:
            if not committed:
                for f in files:
                    try:
                        os.remove(f)
                    except OSError:
                        pass
            raise
        progress(1.0, "done")
        return self.get(video_id)

    # -- the store of added videos, recovery ----------------------------------------------------
    def _load_records(self) -> None:
        records = {}
        for name in os.listdir(self._added_dir):
            if name.endswith(".json") and _KEY.match(name[:-5]):
                try:
                    with open(os.path.join(self._added_dir, name)) as f:
                        rec = json.load(f)
                except (OSError, ValueError):
                    continue
                records[rec["video_id"]] = rec
        with self._lock:
            self._records = records

    def _recover(self) -> None:
        """Finish what a killed process left: drop additions that never reached the index (and
        report their jobs as not added), files without a record, and temporary uploads."""
        self._load_records()
        index = self._index
        for vid, rec in list(self._records.items()):
            if vid in index:
                if rec.get("job"):
                    self._recovered[rec["job"]] = ("done", "")
                continue
            for n in (rec["file"], rec["key"] + ".npy", rec["key"] + ".json"):
                try:
                    os.remove(os.path.join(self._added_dir, n))
                except OSError:
                    pass
            del self._records[vid]
            if rec.get("job"):
                self._recovered[rec["job"]] = (
                    "failed", "the server stopped before the video reached the index; it was not added")
            self.log(f"recovery: removed the unfinished addition of {vid!r}")
        keys = {r["key"] for r in self._records.values()}
        for name in os.listdir(self._added_dir):
            if name[:32] not in keys:
                os.remove(os.path.join(self._added_dir, name))
        for name in os.listdir(self._uploads):
            try:
                os.remove(os.path.join(self._uploads, name))
            except OSError:
                pass

    def recovered_jobs(self) -> Dict[str, Tuple[str, str]]:
        """{job id: ("done", "") | ("failed", reason)} for additions found at start-up."""
        return dict(self._recovered)

    def upload_dir(self) -> str:
        return self._uploads

    def read_json(self, name: str):
        """The service's own state file WORK/service/<name>.json, or None (name: a constant)."""
        try:
            with open(os.path.join(self._dir, name + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, obj) -> None:
        _atomic_write(os.path.join(self._dir, name + ".json"), json.dumps(obj, indent=1).encode())


@dataclasses.dataclass
class _Prepared:
    """Query features computed before the engine lock is taken."""
    name: str
    features: np.ndarray


def _Engine(workdir: str, collection: Collection):
    """`dns-jax query`'s Searcher, reading features through the collection."""

    class Engine(Searcher):
        """`dns-jax query`'s Searcher, whose features come from the collection (indexed ids, added
        videos included) or from features prepared outside the lock; never from a path named by a
        request."""

        def __init__(self, workdir: str, collection: "Collection"):
            super().__init__(workdir)
            self._collection = collection

        def features(self, query):
            if isinstance(query, _Prepared):
                return query.name, query.features
            return query, self._collection.features(query)

    return Engine(workdir, collection)
