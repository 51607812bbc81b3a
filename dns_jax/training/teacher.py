"""The teacher-similarity job: select training pairs from an unlabeled collection, score them with
a teacher (ViSiL, or a trained student for iterative distillation) and write a pair file.

    dns-jax pairs --features dns100k.hdf5 --teacher visil:visil.pth --output pairs_teacher.npz
    dns-jax pairs --features dns100k.hdf5 --teacher WORKDIR_OF_FG_ATT \\
        --output pairs_fg_att_iter1.npz        # iterative distillation

Selection (ours; the official pair files were made by code that is not public): for every query,
the `num_candidates` nearest videos by a cheap global descriptor (mean of its region features)
are scored by the teacher; the `num_positives` best of them (with similarity >= the threshold) are
the positives, the rest of the candidates plus `num_negatives` random other videos (also scored)
the negatives. The file records the teacher and these settings in its `meta`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from dns_jax.datasets.stores import FeatureStore, global_descriptors
from dns_jax.pretrained import load_teacher
from dns_jax.training.pairs import PairSet
from dns_jax.training.scoring import PairScorer


class TeacherError(ValueError):
    """A pair-scoring job that cannot run (too few videos, videos missing from the features)."""


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
