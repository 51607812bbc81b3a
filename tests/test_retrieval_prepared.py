"""Prepared (device-resident, densely stored) databases of dns_jax.retrieval.fine: reused by many
queries, packed first-fit decreasing into canvases, blocked products with a shorter last block;
always the official per-pair numbers (reference fixtures)."""
import jax.numpy as jnp
import numpy as np
import pytest

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
                                            kernels.KernelSpec(sim=sim, bits=512, row_block=4, col_block=8))
    official = np.einsum("iok,jpk->iopj", binary.unpack_codes(q) if sim == "packed" else q,
                         binary.unpack_codes(t) if sim == "packed" else t).max(2).mean(1) / 512
    assert blocked.shape == (11, 23)
    np.testing.assert_array_equal(np.asarray(blocked), np.asarray(whole))   # +-1 sums: exact integers
    np.testing.assert_allclose(np.asarray(blocked), official, atol=1e-7)


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
        got = sc.similarities(sc.index([q[i] for i in idx]), db)
        exp = expected[idx]
        np.testing.assert_allclose(got, np.concatenate([exp, exp[:, ::-1]], 1), atol=1e-5)
    assert sc.prepare(db) is db
