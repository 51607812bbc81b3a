"""Persistent XLA compilation cache for the command-line tools.

The kernels compile once per canvas / batch size (a handful of shapes per run); on a GPU each
compile takes seconds (indexing 100 videos spent ~2 minutes compiling on an H200). With the cache
on, a second run on the same machine loads the compiled kernels from disk instead.

The CLIs (`index.py`, `retrieve.py`, `evaluate.py`, `train.py`, `dns-jax`) turn it on at start:
the directory is $DNS_JAX_COMPILATION_CACHE, else $XDG_CACHE_HOME/dns_jax/xla (~/.cache/...);
DNS_JAX_COMPILATION_CACHE=off disables it. In a notebook, call `enable_compilation_cache()`.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "DNS_JAX_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no", "none")


def is_off(setting: str) -> bool:
    """An environment setting that turns a dns_jax cache or feature off (0, off, false, no, none)."""
    return setting.strip().lower() in _OFF


def user_cache_dir(name: str) -> str:
    """$XDG_CACHE_HOME/dns_jax/NAME, else ~/.cache/dns_jax/NAME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dns_jax", name)


def default_cache_dir() -> str:
    return user_cache_dir("xla")


def enable_compilation_cache(path: Optional[str] = None, min_compile_secs: float = 0.5) -> Optional[str]:
    """Point JAX's persistent compilation cache at `path` (default: see the module docstring) for
    compiles that take at least `min_compile_secs`. Returns the directory, or None when disabled
    by the environment or when the directory cannot be created (a warning on stderr; the run goes
    on without the cache)."""
    if path is None:
        setting = os.environ.get(ENV, "").strip()
        if is_off(setting):
            return None
        path = setting or default_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        print(f"warning: no compilation cache ({path}: {e})", file=sys.stderr)
        return None
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    return path
