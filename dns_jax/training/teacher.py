"""The teacher-similarity job: select training pairs from an unlabeled collection, score them with
a teacher (ViSiL, or a trained student for iterative distillation) and write a pair file.

    python -m dns_jax.training.teacher --features dns100k.hdf5 --teacher visil:visil.pth \\
        --out pairs_teacher.npz
    python -m dns_jax.training.teacher --features dns100k.hdf5 --teacher WORKDIR_OF_FG_ATT \\
        --out pairs_fg_att_iter1.npz           # iterative distillation

Selection (ours; the official pair files were made by code that is not public): for every query,
the `num_candidates` nearest videos by a cheap global descriptor (mean of its region features)
are scored by the teacher; the `num_positives` best of them (with similarity >= the threshold) are
the positives, the rest of the candidates plus `num_negatives` random other videos (also scored)
the negatives. The file records the teacher and these settings in its `meta`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from dns_jax import checkpoint, pretrained
from dns_jax.training.features import FeatureStore, global_descriptors, open_features
from dns_jax.training.pairs import PairSet, write_pairs
from dns_jax.training.scoring import SIMILARITY_NETWORKS, PairScorer


class TeacherError(ValueError):
    pass


def load_teacher(spec: str, dims: Optional[int] = None):
    """(name, wrapper) of a teacher given as 'visil_f' (weightless ViSiL_f), 'NAME:PATH' (a .pth or
    checkpoint of network NAME), or a checkpoint / training workdir (network read from its meta)."""
    spec = str(spec)
    if spec == "visil_f":
        net = pretrained.init_network("visil_f", attention=False, video_comparator=False,
                                      symmetric=False, dims=dims or 512)
        return "visil_f", net
    name, path = None, spec
    if ":" in spec and spec.split(":", 1)[0] in pretrained.NETWORKS:
        name, path = spec.split(":", 1)
    if not os.path.exists(path):
        raise TeacherError(f"teacher {spec!r}: expected 'visil_f', NAME:PATH or a checkpoint directory, "
                           f"and {path!r} does not exist")
    if name is None:
        if os.path.isdir(path):
            _, meta = checkpoint.read_meta(path)
            name = meta["network"]
        else:
            name = pretrained.guess_network_name(path)
            if name is None:
                raise TeacherError(f"teacher {spec!r}: cannot tell the network from the file name; "
                                   "write it as NAME:PATH (e.g. visil:/path/visil.pth)")
    if name not in SIMILARITY_NETWORKS:
        raise TeacherError(f"teacher {spec!r} is a {name!r} network, which gives no video similarity; "
                           f"a teacher must be one of {', '.join(SIMILARITY_NETWORKS)}")
    return name, pretrained.load(name, path)


def teacher_scorer(spec: str, dims: Optional[int] = None, batch_size: int = 64) -> PairScorer:
    name, net = load_teacher(spec, dims)
    return PairScorer(name, net.module, net.variables, batch_size=batch_size)


def _candidates(desc: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """[N, k] indices of the k nearest other videos by descriptor cosine."""
    n = desc.shape[0]
    k = min(k, n - 1)
    out = np.zeros((n, k), np.int64)
    for s in range(0, n, block):
        sims = desc[s:s + block] @ desc.T
        sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n - 1 else np.argsort(-sims, axis=1)[:, :k]
        order = np.take_along_axis(sims, top, 1).argsort(axis=1)[:, ::-1]
        out[s:s + sims.shape[0]] = np.take_along_axis(top, order, 1)
    return out


def select_pairs(store: FeatureStore, scorer: PairScorer, ids: Optional[Sequence[str]] = None,
                 num_candidates: int = 64, num_positives: int = 8, positive_threshold: float = -1.0,
                 num_negatives: int = 16, seed: int = 0, log=print) -> PairSet:
    """Pairs of every video in `ids` (default: the whole store) with teacher similarities."""
    ids = sorted(store.ids() if ids is None else ids)
    if len(ids) < 3:
        raise TeacherError(f"need at least 3 videos to form pairs, got {len(ids)}")
    missing = [v for v in ids if v not in store]
    if missing:
        raise TeacherError(f"{len(missing)} requested videos are missing from {store.source}: {missing[:10]}")
    n = len(ids)
    cand = _candidates(global_descriptors(store, ids), num_candidates)
    rng = np.random.default_rng(seed)
    jobs: list = []      # (query, target, is_candidate)
    for q in range(n):
        c = set(cand[q].tolist())
        others = np.setdiff1d(np.arange(n), np.fromiter(c | {q}, np.int64), assume_unique=False)
        rand = rng.choice(others, min(num_negatives, len(others)), replace=False) if len(others) else []
        jobs.extend((q, int(t), True) for t in cand[q])
        jobs.extend((q, int(t), False) for t in rand)
    log(f"teacher {scorer.name}: scoring {len(jobs)} pairs of {n} videos")
    sims = scorer.score(store, [(ids[q], ids[t]) for q, t, _ in jobs])
    pairs = {q: {"candidates": [], "random": []} for q in range(n)}
    for (q, t, is_cand), s in zip(jobs, sims.tolist()):
        pairs[q]["candidates" if is_cand else "random"].append((t, s))
    out = {}
    for q, pools in pairs.items():
        ranked = sorted(pools["candidates"], key=lambda ts: -ts[1])
        pos = [(t, s) for t, s in ranked[:num_positives] if s >= positive_threshold]
        chosen = {t for t, _ in pos}
        neg = [(t, s) for t, s in ranked if t not in chosen] + pools["random"]
        out[q] = {"positives": dict(pos), "negatives": dict(neg)}
    meta = {"teacher": scorer.name, "num_candidates": num_candidates, "num_positives": num_positives,
            "positive_threshold": positive_threshold, "num_negatives": num_negatives, "seed": seed,
            "selection": "descriptor candidates scored by the teacher; top positives, rest + random negatives"}
    return PairSet(list(ids), out, meta)


def main(argv=None):
    from absl import app, flags

    flags.DEFINE_string("features", None, "feature file (HDF5 / .npz / folder of .npy)")
    flags.DEFINE_string("teacher", "visil_f", "'visil_f', NAME:PATH or a checkpoint directory")
    flags.DEFINE_string("out", None, "pair file to write (.npz, .json or .json.gz)")
    flags.DEFINE_string("ids", "", "optional text file of video ids to use (one per line)")
    flags.DEFINE_integer("num_candidates", 64, "teacher-scored nearest videos per query")
    flags.DEFINE_integer("num_positives", 8, "positives per query")
    flags.DEFINE_float("positive_threshold", -1.0, "minimum teacher similarity of a positive")
    flags.DEFINE_integer("num_negatives", 16, "random negatives per query")
    flags.DEFINE_integer("batch_size", 64, "pairs per teacher call")
    flags.DEFINE_integer("seed", 0, "seed of the random negatives")
    flags.mark_flags_as_required(["features", "out"])

    def run(_):
        store = open_features(flags.FLAGS.features)
        ids = None
        if flags.FLAGS.ids:
            with open(flags.FLAGS.ids) as f:
                ids = [line.strip() for line in f if line.strip()]
        r, d = store.shape()
        scorer = teacher_scorer(flags.FLAGS.teacher, dims=d, batch_size=flags.FLAGS.batch_size)
        ps = select_pairs(store, scorer, ids, flags.FLAGS.num_candidates, flags.FLAGS.num_positives,
                          flags.FLAGS.positive_threshold, flags.FLAGS.num_negatives, flags.FLAGS.seed)
        write_pairs(ps, flags.FLAGS.out)
        print(f"wrote {ps.num_pairs()} pairs of {len(ps.pairs)} queries to {flags.FLAGS.out}")

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
