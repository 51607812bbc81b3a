"""Which video files a work directory's collection holds, and what changed since the last build.

A collection is the videos folder (`--videos`, ids = paths relative to it without the extension)
plus the files added one by one (`dns-jax add`), minus the ids removed (`dns-jax remove`). Each file
is recorded with its size, modification time and a hash of its first and last 64 KiB: a file whose
record differs is re-extracted, one that disappeared leaves the index, a new one is added, and a
file that failed before is tried again once it changes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Dict, List, Tuple

from dns_jax.features.extract_folder import VIDEO_EXTENSIONS, list_videos

PROBE = 64 << 10


def signature(path: str) -> Dict:
    """{size, mtime_ns, head_tail}: what identifies a file's content cheaply."""
    st = os.stat(path)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(PROBE))
        if st.st_size > 2 * PROBE:
            f.seek(-PROBE, os.SEEK_END)
        h.update(f.read(PROBE))
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "head_tail": h.hexdigest()}


def same_file(recorded: Dict, sig: Dict) -> bool:
    """Unchanged: same size and head/tail hash (a copy that only got a new mtime is unchanged)."""
    return recorded.get("size") == sig["size"] and recorded.get("head_tail") == sig["head_tail"]


def video_id_of(path: str) -> str:
    """The id a single added file gets: its name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


def is_video_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass
class SourceChanges:
    """The difference between the files now and the recorded ones."""

    current: Dict[str, str]                      # id -> path of every file of the collection now
    new: List[Tuple[str, str]] = dataclasses.field(default_factory=list)        # (id, path)
    changed: List[Tuple[str, str]] = dataclasses.field(default_factory=list)    # content differs
    retry: List[Tuple[str, str]] = dataclasses.field(default_factory=list)      # failed before, changed since
    removed: List[str] = dataclasses.field(default_factory=list)                # recorded, gone now
    signatures: Dict[str, Dict] = dataclasses.field(default_factory=dict)

    @property
    def to_extract(self) -> List[Tuple[str, str]]:
        return self.new + self.changed + self.retry

    @property
    def to_delete(self) -> List[str]:
        """Ids whose stored features and index entries must go (removed or changed files)."""
        return self.removed + [v for v, _ in self.changed]

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.retry or self.removed)

    def describe(self) -> str:
        parts = [f"{len(x)} {name}" for x, name in ((self.new, "new"), (self.changed, "changed"),
                                                     (self.retry, "fixed"), (self.removed, "removed")) if x]
        return ", ".join(parts) if parts else "no changes"


def current_files(videos_dir: str, added: Dict[str, str], excluded: List[str]) -> Dict[str, str]:
    """id -> path of the collection now: the folder's videos, plus the added files, minus exclusions."""
    files = dict(list_videos(videos_dir)) if videos_dir and os.path.isdir(videos_dir) else {}
    files.update({v: p for v, p in added.items() if os.path.isfile(p)})
    for v in excluded:
        files.pop(v, None)
    return files


def diff(recorded: Dict[str, Dict], current: Dict[str, str]) -> SourceChanges:
    """What to extract and what to delete, given the recorded files {id: {size, head_tail, status}}."""
    changes = SourceChanges(current=current)
    for vid, path in sorted(current.items()):
        sig = signature(path)
        changes.signatures[vid] = sig
        old = recorded.get(vid)
        if old is None:
            changes.new.append((vid, path))
        elif not same_file(old, sig):
            (changes.retry if old.get("status") == "failed" else changes.changed).append((vid, path))
    changes.removed = sorted(v for v in recorded if v not in current)
    return changes
