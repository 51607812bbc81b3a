"""Small file utilities every layer uses: atomic writes (write a temporary file beside the target,
flush and fsync it, then `os.replace`) and id lists.

A reader never sees a half-written file: it sees the old one or the new one. The temporary name
carries the process id, so two writers never share one; a temporary left by a killed process is
ignored by readers and replaced by the next write.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import IO, Any, Iterator, List

import numpy as np


def fsync_dir(directory: str) -> None:
    """Make a rename inside `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str, suffix: str = "") -> str:
    """The temporary name an atomic write of `path` uses (`suffix` keeps an extension some writers
    need, e.g. '.png' for matplotlib)."""
    return f"{path}.tmp-{os.getpid()}{suffix}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", durable: bool = False, suffix: str = "") -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces `path`, on error it is removed.
    `durable`: fsync the file and its directory (for state a crash must not lose)."""
    path = os.fspath(path)
    tmp = temporary_path(path, suffix)
    try:
        with open(tmp, mode) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(path: str, text: str, durable: bool = False) -> str:
    with atomic_open(path, "w", durable) as f:
        f.write(text)
    return path


def atomic_write_json(path: str, obj: Any, durable: bool = False, **dump_kwargs) -> str:
    """`json.dump(obj, **dump_kwargs)` to `path` atomically."""
    with atomic_open(path, "w", durable) as f:
        json.dump(obj, f, **dump_kwargs)
    return path


def atomic_savez(path: str, durable: bool = False, **arrays) -> str:
    """`np.savez` to `path` atomically (the name is kept as given, no '.npz' is appended)."""
    with atomic_open(path, "wb", durable) as f:
        np.savez(f, **arrays)
    return path


class JobInterrupted(RuntimeError):
    """A resumable job stopped by a signal after saving its progress: rerunning the same command
    resumes it (the command line exits with 143, as a process ended by SIGTERM)."""


class LockedError(RuntimeError):
    """Another process holds the lock."""


class ProcessLock:
    """An exclusive advisory lock on `path` (fcntl.flock): held by one process at a time and released
    by the OS when the holder exits, however it dies (so a killed process never leaves a stale
    lock). The holder's pid is written into the file for the error message of the next one."""

    def __init__(self, path: str, what: str):
        self.path, self.fd = path, None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockedError(f"{what} is in use by another process" + (f" (pid {holder})" if holder else "")
                              + "; wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def read_id_list(path: str) -> List[str]:
    """Ids from a text file, one per line (blank lines and surrounding spaces ignored)."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]
