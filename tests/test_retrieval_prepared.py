"""Prepared (device-resident, densely stored) databases of dns_jax.retrieval.fine: reused by many
queries, packed first-fit decreasing into canvases, blocked products with a shorter last block;
always the official per-pair numbers (reference fixtures)."""
import dataclasses
import gc
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from dns_jax import native
from dns_jax.retrieval import binary, kernels
from dns_jax.retrieval.fine import FineScorer, PreparedDatabase, ScorerOptions
from dns_jax.retrieval.layout import pack_dense
from helpers import network

# canvases of 16 dense target frames and f2f blocks of a few frames: several canvases, remainders
SMALL = ScorerOptions(max_cols=16, max_rows=32, block_bytes=1 << 12)


def test_pack_dense_fills_groups():
    lengths = [13, 7, 5, 9, 3, 12, 4, 4, 8, 1]
    groups = pack_dense(lengths, 16)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 16 for g in groups)
    assert all(g == sorted(g) for g in groups)
    assert len(groups) == -(-sum(lengths) // 16)                  # 66 frames: 5 groups, no more
    # bounded search: still a valid packing when only one group may stay open
    groups = pack_dense(lengths, 16, open_groups=1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 16 for g in groups)


@pytest.mark.parametrize("sim", ["float", "packed"])
def test_blocked_products_with_shorter_last_block(sim):
    rng = np.random.default_rng(2)
    q = np.where(rng.random((11, 9, 512)) < 0.5, -1.0, 1.0).astype(np.float32)
    t = np.where(rng.random((23, 9, 512)) < 0.5, -1.0, 1.0).astype(np.float32)
    if sim == "packed":
        q, t = binary.as_words(binary.pack_codes(q)), binary.as_words(binary.pack_codes(t))
    whole = kernels.frame_to_frame_canvas(jnp.asarray(q), jnp.asarray(t), kernels.KernelSpec(sim=sim, bits=512))
    blocked = kernels.frame_to_frame_canvas(jnp.asarray(q), jnp.asarray(t),
                                            kernels.KernelSpec(sim=sim, bits=512, row_block=4, col_block=8,
                                                               packed_block=8))
    official = np.einsum("iok,jpk->iopj", binary.unpack_codes(q) if sim == "packed" else q,
                         binary.unpack_codes(t) if sim == "packed" else t).max(2).mean(1) / 512
    assert blocked.shape == (11, 23)
    np.testing.assert_array_equal(np.asarray(blocked), np.asarray(whole))   # +-1 sums: exact integers
    np.testing.assert_allclose(np.asarray(blocked), official, atol=1e-7)


@pytest.mark.parametrize("bits", [96, 512, 1024])
@pytest.mark.parametrize("popcount,block", [("lax", 0), ("swar", 0), ("swar", 5), ("csa", 0), ("csa", 5),
                                            ("lax", 16), ("ffi", 0)])
def test_packed_hamming_variants_equal_float(bits, popcount, block):
    """The SWAR popcount (an odd word count falls back to the native one; 1024 bits widen the byte
    counters twice), the carry-save one (3 words: a partial group; 32: two groups) and elementwise blocks with a shorter last block give the float +-1 result."""
    if popcount == "ffi" and not native.available():
        pytest.skip("native kernel not built here")
    rng = np.random.default_rng(bits + block)
    q = np.where(rng.random((6, 3, bits)) < 0.5, -1.0, 1.0).astype(np.float32)
    t = np.where(rng.random((13, 4, bits)) < 0.5, -1.0, 1.0).astype(np.float32)
    t[0, 0] = q[0, 0]                                             # hamming 0
    t[1, 1] = -q[0, 1]                                            # hamming = bits
    spec = kernels.KernelSpec(sim="packed", bits=bits, popcount=popcount, packed_block=block)
    got = kernels.frame_to_frame_canvas(jnp.asarray(binary.as_words(binary.pack_codes(q))),
                                        jnp.asarray(binary.as_words(binary.pack_codes(t))), spec)
    official = np.einsum("iok,jpk->iopj", q, t).max(2).mean(1) / bits
    np.testing.assert_allclose(np.asarray(got), official, atol=1e-7)


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student"])
def test_accelerator_defaults_equal_official(name):
    """The GPU/TPU defaults (whole-canvas blocks, native popcount, untiled CNN, no host threads) run
    here on CPU: the same official numbers, so only speed depends on the platform."""
    ref, net = network(name)
    opts = dataclasses.replace(ScorerOptions.for_platform("gpu"), max_cols=16)
    assert opts.threads() == 1 and opts.packed_block == 0 and opts.popcount == "lax"
    sc = FineScorer(net, options=opts)
    got = sc.similarities(sc.index(ref.videos("q")), sc.prepare(sc.index(ref.videos("d"))))
    np.testing.assert_allclose(got, ref.out["sim_unbatched"], atol=1e-5)


@pytest.mark.parametrize("name", ["fg_att_student", "fg_bin_student"])
def test_prepared_database_reused_equals_official(name):
    ref, net = network(name)
    q, d = ref.videos("q"), ref.videos("d")
    expected = ref.out["sim_unbatched"]                                   # official, q x d
    sc = FineScorer(net, options=SMALL)
    db = sc.prepare(sc.index(d + d[::-1]))                               # 50 frames: 4 canvases
    assert isinstance(db, PreparedDatabase) and len(db) == 6 and len(db.canvases) >= 4
    assert all(c.dense_size <= 16 for c in db.canvases)
    for idx in ([0], [1], [0, 1]):                                        # one database, many calls
        done = []
        got = sc.similarities(sc.index([q[i] for i in idx]), db, progress=done.append)
        exp = expected[idx]
        np.testing.assert_allclose(got, np.concatenate([exp, exp[:, ::-1]], 1), atol=1e-5)
        assert done == [len(c.owners) for c in db.canvases]              # one report per canvas
    assert sc.prepare(db) is db


_SHARDED_FINE = r"""
import json, sys, numpy as np, jax
sys.path.insert(0, sys.argv[1])
from helpers import network
from test_retrieval_prepared import SMALL
from dns_jax.retrieval.fine import FineScorer
out = {"devices": jax.device_count()}
for name in ("fg_bin_student",):       # placement is network-independent; one compile per device
    ref, net = network(name)
    sc = FineScorer(net, options=SMALL)
    db = sc.prepare(sc.index(ref.videos("d") * 2))
    out[name] = {"sims": sc.similarities(sc.index(ref.videos("q")), db).tolist(),
                 "devices": len({str(c.device) for c in db.canvases})}
print(json.dumps(out))
"""


def test_fine_database_sharded_over_devices_equals_official():
    """8 fake CPU devices: the prepared database's canvases are spread over the devices, each scored
    there, and the similarities are the official ones (as on one device)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED_FINE, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    for name in ("fg_bin_student",):
        ref, _ = network(name)
        assert res[name]["devices"] >= 4                       # >= 4 canvases, round robin
        exp = ref.out["sim_unbatched"]
        np.testing.assert_allclose(np.array(res[name]["sims"]), np.concatenate([exp, exp], 1), atol=1e-5)


@pytest.mark.parametrize("words", [3, 16, 32, 34])
def test_bitcount_hamming_counts_extremes(words):
    """Every Hamming distance from 0 to all bits, through the byte counters' widening steps."""
    rng = np.random.default_rng(words)
    q = rng.integers(0, 2 ** 32, (5, words), dtype=np.uint32)
    t = rng.integers(0, 2 ** 32, (words, 4), dtype=np.uint32)
    t[:, 0] = q[0]                        # distance 0 to query 0
    t[:, 1] = ~q[0]                       # all bits differ
    t[:, 2] = ~q[1]
    expected = np.unpackbits((q[:, :, None] ^ t[None]).view(np.uint8).reshape(5, words, 4, 4), axis=-1)
    expected = expected.reshape(5, words, 4, 32).sum((1, 3))
    for popcount in ("csa", "swar", "lax"):
        got = np.asarray(kernels._hamming_words(jnp.asarray(q), jnp.asarray(t), popcount))
        np.testing.assert_array_equal(got, expected)
    assert expected[0, 0] == 0 and expected[0, 1] == expected[1, 2] == 32 * words


def test_dispatch_threads_started_once_per_scorer():
    """The host threads that run canvases are kept between calls (starting them per call was ~15 %
    of a DnS query's fine stage) and shut down with the scorer."""
    ref, net = network("fg_bin_student")
    sc = FineScorer(net, options=dataclasses.replace(SMALL, dispatch_threads=2))
    db = sc.prepare(sc.index(ref.videos("d")))
    q = sc.index(ref.videos("q"))
    first = sc.similarities(q, db)
    pool = sc._pool
    assert pool is not None and len(db.canvases) > 1
    np.testing.assert_array_equal(sc.similarities(q, db), first)
    assert sc._pool is pool
    np.testing.assert_allclose(first, ref.out["sim_unbatched"], atol=1e-5)
    del sc
    gc.collect()
    assert pool._shutdown
