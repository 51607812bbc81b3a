"""Shared test helpers: reference networks converted once per session."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from reference import Reference

from dns_jax import pretrained
from dns_jax.features import Extractor, FeatureExtractor, ResNet
from dns_jax.index import Index, compressed
from dns_jax.retrieval.synthetic import SyntheticCG

REFERENCE_NETWORKS = {
    "fg_att_student": "fg_att_student",
    "fg_bin_student": "fg_bin_student",
    "fg_bin_student_trainmode": "fg_bin_student",
    "fg_none_student": "fg_student",
    "cg_student": "cg_student",
    "selector": "selector",
    "visil_head_sym512": "visil_symmetric",
    "visil_head_f512": "visil_f",
}


@functools.lru_cache(maxsize=None)
def reference(name):
    return Reference(name)


@functools.lru_cache(maxsize=None)
def network(name):
    """(Reference, wrapper from dns_jax.pretrained.load) for a reference file."""
    ref = reference(name)
    return ref, pretrained.load(REFERENCE_NETWORKS[name], ref.state)


def random_like(shapes, seed=0):
    """Random values of the shapes and dtypes of a pytree of ShapeDtypeStructs (vectors around 1,
    for scales and variances; the rest around 0)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: (rng.standard_normal(s.shape) * 0.1 + (1.0 if len(s.shape) == 1 else 0.0)).astype(s.dtype), shapes)


def random_network(name, seed=0, **config):
    """(config, variables) of a network with random weights of the shapes `init_network` gives, without
    running `init` (eagerly it takes ~10 s a network on CPU, and compiling it about as long)."""
    module = pretrained.build_module(name, config)
    return config, random_like(jax.eval_shape(lambda r: module.init(r, method="init_all"), jax.random.PRNGKey(0)), seed)


def tiny_extractor(batch_size=3, seed=0):
    """A narrow one-block-per-stage ResNet extractor with random weights: the feature pipeline's
    shapes and batching at a fraction of ResNet-50's cost."""
    model = FeatureExtractor(backbone=ResNet(stage_sizes=(1, 1, 1, 1), width=4), normalizer="imagenet")
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3), jnp.uint8))
    return Extractor(model, random_like(shapes, seed), batch_size=batch_size, name="tiny")


def assert_same_index(a: str, b: str):
    """Same ids once each, fine representations bit for bit, vectors to float rounding."""
    ia, ib = Index.open(a), Index.open(b)
    assert len(ib.ids) == len(set(ib.ids)) == len(ia)
    assert sorted(ia.ids) == sorted(ib.ids)
    ra, rb = ia.representations(ia.ids), ib.representations(ia.ids)
    for x, y in zip(ra.fine, rb.fine):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(ra.coarse, rb.coarse, atol=2e-6)
    np.testing.assert_allclose(ra.selfsim, rb.selfsim, atol=1e-6)
    assert ia.skipped == ib.skipped
    assert ia.manifest["zero_codes"] == ib.manifest["zero_codes"]


def pairs(n_q=2, n_d=3):
    return [(i, j) for i in range(n_q) for j in range(n_d)]


def train_batch(ref):
    """The official training batch of the FG fixtures: videos in `train_videos_order`, padded."""
    vids = {f"q{i}": v for i, v in enumerate(ref.videos("q"))}
    vids.update({f"d{i}": v for i, v in enumerate(ref.videos("d"))})
    mask = ref.inp["train_videos_mask"]
    x = np.zeros(mask.shape + (9, 512), np.float32)
    for k, name in enumerate(ref.inp["train_videos_order"]):
        x[k, : vids[str(name)].shape[0]] = vids[str(name)]
    return x, mask


def save_build_networks(directory, dims: int = 32, fine: str = "fg_att_student", random: bool = False) -> dict:
    """Small fine / coarse / selector networks for `dns-jax build --fine/--coarse/--selector`, saved
    as checkpoints `directory/net_{role}`; {role: path}. `random`: random weights of init's shapes
    (no init run, see random_network) instead of `init_network`'s."""
    import os

    from dns_jax import checkpoint
    specs = {"fine": (fine, dict(dims=dims, indexing="bin" if fine == "fg_bin_student" else "att")),
             "coarse": ("cg_student", dict(dims=dims, netvlad_clusters=4, netvlad_outdims=32,
                                           transformer_feedforward_dims=64, transformer_heads=4)),
             "selector": ("selector", dict(dims=dims, hidden_size=16, num_layers=1))}
    paths = {}
    for i, (role, (name, cfg)) in enumerate(specs.items()):
        paths[role] = os.path.join(str(directory), f"net_{role}")
        if random:
            checkpoint.save_network(paths[role], name, *random_network(name, i, **cfg))
        else:
            net = pretrained.init_network(name, jax.random.PRNGKey(i), **cfg)
            checkpoint.save_network(paths[role], name, net.config, net.variables)
    return paths


def synthetic_index(directory, nets, n: int, shard: int, seed: int = 0, kind: str = "faiss-ivfpq", log=None):
    """An index of `n` synthetic videos (clustered CG vectors, random packed FG-Bin codes [4, 9, 64];
    ids f"v{seed}_{i}") in shards of `shard`, with its coarse stage `kind` synced (faiss-ivfpq: the
    faiss file, from compressed.MIN_VIDEOS videos); reopened read-only."""
    vectors = SyntheticCG(n=n, dims=1024, rank=64, topics=12, seed=seed).vectors()
    rng = np.random.default_rng(seed)
    index = Index.create(directory, *nets, "packed", 64)
    for s in range(0, n, shard):
        ids = [f"v{seed}_{i}" for i in range(s, min(n, s + shard))]
        fine = [rng.integers(0, 256, (4, 9, 64), np.uint8) for _ in ids]
        index.add(ids, fine, vectors[s:s + len(ids)], rng.uniform(0.5, 1.0, len(ids)).astype(np.float32))
    index.set_coarse_search(kind)
    compressed.sync(index, log=log or (lambda m: None))
    index.close()
    return Index.open(directory)


def retrieved_ids(retrieve_main, index_dir: str, kind: str, flags, out_dir) -> list:
    """The ranked ids `retrieve.py --coarse KIND` writes for queries v000 and v005 of `index_dir`
    (budget 0.1, top 20; `flags`: the network flags), one list per query."""
    import json
    import os

    out = os.path.join(str(out_dir), f"{kind}.json")
    assert retrieve_main(["--index", index_dir, "--query-ids", "v000", "v005", "--budget", "0.1", "--top", "20",
                          "--output", out, "--coarse", kind] + list(flags)) == 0
    with open(out) as fh:
        results = json.load(fh)
    ids = [[r["id"] for r in results[q]] for q in results]
    assert len(ids) == 2 and all(ids), f"retrieve --coarse {kind} wrote no ranking: {results}"
    return ids
