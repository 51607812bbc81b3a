"""The CLIs' persistent compilation cache: where it goes, how it is turned off."""
import os
import subprocess
import sys

from dns_jax import compile_cache

_CHILD = r"""
import os, sys, jax, jax.numpy as jnp
from dns_jax.compile_cache import enable_compilation_cache
path = enable_compilation_cache(min_compile_secs=0)
print(path)
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
"""


def test_compiled_kernels_land_in_the_configured_directory(tmp_path):
    cache = tmp_path / "xla"
    env = dict(os.environ, DNS_JAX_COMPILATION_CACHE=str(cache), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[0] == str(cache)
    assert any(cache.iterdir())                                  # an entry was written


def test_cache_off_default_and_unwritable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DNS_JAX_COMPILATION_CACHE", "off")
    assert compile_cache.enable_compilation_cache() is None
    monkeypatch.delenv("DNS_JAX_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert compile_cache.default_cache_dir() == str(tmp_path / "c" / "dns_jax" / "xla")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert compile_cache.enable_compilation_cache(str(blocker / "sub")) is None   # a file in the way
    assert "no compilation cache" in capsys.readouterr().err
