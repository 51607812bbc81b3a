"""python -m dns_jax.native: build (or find) the native CPU kernels, check them against numpy on
random codes, and say which FG-Bin kernel this machine will use."""
from __future__ import annotations

import logging
import sys

import numpy as np

from dns_jax import native
from dns_jax.native.build import default_cache_dir


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    print(f"cache directory: {default_cache_dir()} (set {native.build.CACHE_ENV} to move it)")
    if not native.available():
        why = (f"disabled by {native.ENV}={native._setting()}" if native._disabled()
               else "not built or no AVX2: see the message above")
        print(f"native FG-Bin kernel: not available ({why}); the XLA carry-save loop ('csa') is used")
        return 1
    print(f"native FG-Bin kernel: {native._load()} ({native.set_isa('auto')} Hamming loop)")
    rng = np.random.default_rng(0)
    q = rng.integers(0, 2 ** 32, (7, 9, 16), dtype=np.uint32)
    t = rng.integers(0, 2 ** 32, (37, 9, 16), dtype=np.uint32)
    got = np.asarray(native.min_hamming_similarity(q, t, 512))
    d = np.bitwise_count(q[:, None, :, None, :] ^ t[None, :, None, :, :]).astype(np.int64).sum(-1).min(-1)
    exp = (512 - 2 * d).astype(np.float32).sum(-1, dtype=np.float32) * np.float32(1 / 9) / np.float32(512)
    ok = np.array_equal(got, exp)
    print("self-check against numpy: " + ("passed" if ok else f"FAILED (max error {np.abs(got - exp).max()})"))
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
