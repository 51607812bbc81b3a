"""Compile the native CPU kernels on first use and cache the shared library.

The C++ sources next to this file are built against the XLA FFI headers that ship with jaxlib
(`jax.ffi.include_dir()`), with the system C++ compiler ($CXX, else c++ / g++ / clang++), into
$DNS_JAX_NATIVE_CACHE, else $XDG_CACHE_HOME/dns_jax/native (~/.cache/...). The file name carries
a hash of the source, the jaxlib version, the machine and the flags, so a changed source or jaxlib
builds anew and an unchanged one loads in milliseconds. The library is written under a temporary
name and renamed into place, so concurrent or killed builds never leave a half-written file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Optional, Sequence

from dns_jax.compile_cache import user_cache_dir

CACHE_ENV = "DNS_JAX_NATIVE_CACHE"
log = logging.getLogger(__name__)
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")


class BuildError(RuntimeError):
    """The native library could not be built (no compiler, no headers, a compile error)."""


def source_path(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV, "").strip() or user_cache_dir("native")


def find_compiler(cxx: Optional[str] = None) -> str:
    """$CXX or the first of c++, g++, clang++ on PATH."""
    for cand in ([cxx] if cxx else []) + ([os.environ["CXX"]] if os.environ.get("CXX") else []) \
            + ["c++", "g++", "clang++"]:
        path = shutil.which(cand.split()[0]) if cand else None
        if path:
            return path
    raise BuildError("no C++ compiler found (set CXX, or install g++ / clang++)")


def library_path(source: str, cache_dir: Optional[str] = None, cxx: Optional[str] = None,
                 extra_flags: Sequence[str] = ()) -> str:
    """Path of the shared library built from `source` (a .cc file), building it if the cache does
    not hold one for this source, jaxlib version and machine. Raises BuildError."""
    import jax
    import jaxlib

    include = jax.ffi.include_dir()
    with open(source, "rb") as f:
        text = f.read()
    flags = list(FLAGS) + list(extra_flags)
    key = hashlib.sha256(b"\0".join([text, jaxlib.__version__.encode(), platform.machine().encode(),
                                     " ".join(flags).encode()])).hexdigest()[:16]
    cache_dir = cache_dir or default_cache_dir()
    stem = os.path.splitext(os.path.basename(source))[0]
    target = os.path.join(cache_dir, f"lib{stem}-{key}.so")
    if os.path.exists(target):
        return target
    compiler = find_compiler(cxx)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create the native cache directory {cache_dir}: {e}") from e
    fd, tmp = tempfile.mkstemp(prefix=f".lib{stem}-", suffix=".so", dir=cache_dir)
    os.close(fd)
    cmd = [compiler, *flags, "-I", include, source, "-o", tmp]
    log.info("compiling %s into %s (once per source and jaxlib version)", os.path.basename(source), target)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise BuildError(f"compiling {source} failed ({' '.join(cmd)}):\n{tail}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
