"""How well a similarity network ranks the copies of each query of a labelled collection.

`collection_map(name, module, variables, features, ground_truth)`: each query is scored against
every other video of `features` with the network; its average precision counts its copies as
the relevant videos; returns the mean over queries of the AP (mAP), of the copies' mean rank and of
the margin (the copies' mean score minus the best other video's score), and the micro AP (uAP) of
all (query, video) pairs ranked together by score: whether one threshold separates copies from
the rest across queries, as copy detection (and a teacher's scores) need. Used to
check that S2VS training helps (tests, benchmarks/bench_s2vs_*.py) on collections such as
dns_jax.datasets.video_collection's.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np

from dns_jax.datasets.stores import MemoryFeatures
from dns_jax.evaluation.metrics import average_precision
from dns_jax.training.scoring import PairScorer


def ranking_scores(scores: np.ndarray, relevant: np.ndarray) -> Dict[str, float]:
    """AP and the mean 1-based rank of the relevant entries of one query's scores."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.flatnonzero(relevant[order]) + 1
    margin = scores[relevant].mean() - scores[~relevant].max() if (~relevant).any() else 0.0
    return {"ap": float(average_precision(relevant.astype(int), scores)), "mean_rank": float(ranks.mean()),
            "margin": float(margin)}


def collection_map(name: str, module, variables, features: Mapping[str, np.ndarray],
                   ground_truth: Mapping[str, Sequence[str]], batch_size: int = 32) -> Dict[str, float]:
    """{'mAP', 'mean_rank', 'queries'} of network `name` over the queries of `ground_truth` that
    `features` holds (module docstring)."""
    store = MemoryFeatures(dict(features), source="collection features")
    ids = sorted(features)
    queries = [q for q in ground_truth if q in features]
    if not queries:
        raise ValueError("none of the ground truth's queries has features")
    pairs = [(q, t) for q in queries for t in ids if t != q]
    sims = PairScorer(name, module, variables, batch_size=batch_size).score(store, pairs)
    per = len(ids) - 1
    aps, ranks, margins, all_scores, all_relevant = [], [], [], [], []
    for i, q in enumerate(queries):
        targets = [t for t in ids if t != q]
        relevant = np.asarray([t in set(ground_truth[q]) for t in targets])
        scores = np.asarray(sims[i * per:(i + 1) * per], np.float64)
        r = ranking_scores(scores, relevant)
        all_scores.append(scores)
        all_relevant.append(relevant)
        aps.append(r["ap"])
        ranks.append(r["mean_rank"])
        margins.append(r["margin"])
    micro = average_precision(np.concatenate(all_relevant).astype(int), np.concatenate(all_scores))
    return {"mAP": float(np.mean(aps)), "uAP": float(micro), "mean_rank": float(np.mean(ranks)),
            "margin": float(np.mean(margins)), "queries": len(queries)}


def family_ground_truth(ground_truth: Mapping[str, Sequence[str]]) -> Dict[str, list]:
    """Every member of each family (a query and its copies) as a query whose relevant videos
    are the other members: more queries, the same question."""
    out = {}
    for q, copies in ground_truth.items():
        family = [q, *copies]
        for v in family:
            out[v] = [u for u in family if u != v]
    return out


def read_features(path: str) -> Dict[str, np.ndarray]:
    """Every `[T, R, D]` dataset of an HDF5 feature file, by its path."""
    import h5py
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[:]) if isinstance(obj, h5py.Dataset) else None)
    return out
