"""Validation during training: small pluggable objects with `run(variables) -> {name: value}`.

* `SyntheticEvaluator`: held-out synthetic families; the student's agreement with the teacher on
  every held-out pair (L1, Spearman) and retrieval mAP (relevant = same family).
* `FIVREvaluator`: FIVR-5K with the user's features (official validation of train_student.py).
* `SelectorEvaluator`: accuracy and F1 at 0.5 on the selector's held-out pairs (train_selector.py).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dns_jax.datasets.stores import FeatureStore, open_features
from dns_jax.evaluation import FIVR, ranked_list_average_precision
from dns_jax.pretrained import MIN_FRAMES
from dns_jax.training.pipeline import bucket_length
from dns_jax.training.scoring import EVAL_BUCKETS, PairScorer, host_variables
from dns_jax.validation import repeat_to_min_frames


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return ((last - (counts - 1) / 2.0))[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation: Pearson correlation of the (tie-averaged) ranks."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 0.0
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def mean_average_precision(scores: Dict[str, Dict[str, float]], relevant: Dict[str, set]) -> float:
    aps = []
    for q, res in scores.items():
        if not relevant.get(q):
            continue
        ids = sorted(res, key=lambda v: -res[v])
        aps.append(ranked_list_average_precision([v in relevant[q] for v in ids], None, len(relevant[q])))
    return float(np.mean(aps)) if aps else 0.0


class SyntheticEvaluator:
    """Every ordered pair of held-out videos, scored by the teacher once and by the student at
    each validation. Teacher targets are mapped to [0, 1] for the coarse student, as in training."""

    def __init__(self, network: str, module, store: FeatureStore, video_ids: Sequence[str],
                 family: Dict[str, int], teacher: PairScorer, batch_size: int = 32):
        self.store = store
        self.pairs = [(q, t) for q in video_ids for t in video_ids if q != t]
        target = teacher.score(store, self.pairs)
        self.teacher = target / 2 + 0.5 if network == "cg_student" else target
        self.scorer = PairScorer(network, module, None, batch_size=batch_size)
        self.relevant = {q: {t for t in video_ids if t != q and family[t] == family[q] >= 0}
                         for q in video_ids}

    def scores(self, variables) -> np.ndarray:
        self.scorer.set_variables(host_variables(variables))
        return self.scorer.score(self.store, self.pairs)

    def run(self, variables) -> Dict[str, float]:
        s = self.scores(variables)
        by_query: Dict[str, Dict[str, float]] = {}
        for (q, t), v in zip(self.pairs, s.tolist()):
            by_query.setdefault(q, {})[t] = v
        return {"l1_to_teacher": float(np.mean(np.abs(s - self.teacher))),
                "spearman": spearman(s, self.teacher),
                "mAP": mean_average_precision(by_query, self.relevant)}


class FIVREvaluator:
    """FIVR-5K DSVR / CSVR / ISVR mAP of the student on the user's FIVR-5K features."""

    def __init__(self, network: str, module, features: str, batch_size: int = 32):
        self.dataset = FIVR(version="5k")
        self.store = open_features(features)
        self.queries = [q for q in self.dataset.get_queries() if q in self.store]
        self.database = [v for v in self.dataset.get_database() if v in self.store]
        if not self.queries or not self.database:
            raise ValueError(f"{features}: holds no FIVR-5K queries or database videos")
        self.network = network
        self.scorer = PairScorer(network, module, None, batch_size=batch_size)

    def run(self, variables) -> Dict[str, float]:
        self.scorer.set_variables(host_variables(variables))
        sims: Dict[str, Dict[str, float]] = {}
        if self.network == "cg_student":
            vecs = self.scorer.index(self.store, self.queries + self.database)
            db = np.stack([vecs[v] for v in self.database])
            for q in self.queries:
                sims[q] = dict(zip(self.database, (db @ vecs[q]).tolist()))
        else:
            pairs = [(q, v) for q in self.queries for v in self.database]
            for (q, v), s in zip(pairs, self.scorer.score(self.store, pairs).tolist()):
                sims.setdefault(q, {})[v] = s
        return dict(self.dataset.evaluate(sims, all_db=set(self.database)))


class SelectorEvaluator:
    """Accuracy and F1 (threshold 0.5) of the selector on held-out (query, target, coarse) pairs."""

    def __init__(self, module, store: FeatureStore, items: Sequence[Tuple[str, str, float]],
                 labels: Sequence[float], batch_size: int = 64):
        self.module, self.store = module, store
        self.items, self.labels = list(items), np.asarray(labels, np.float32)
        self.batch_size = batch_size
        self._selfsim = jax.jit(lambda v, x, m: module.apply(v, x, m, method="index_video"))
        self._prob = jax.jit(lambda v, z: module.apply(v, z))

    def _selfsims(self, variables, ids):
        ids = sorted(set(ids), key=self.store.length)
        out = {}
        for b in range(0, len(ids), self.batch_size):
            chunk = ids[b:b + self.batch_size]
            xs = [repeat_to_min_frames(self.store[v], MIN_FRAMES) for v in chunk]
            t = bucket_length(max(len(x) for x in xs), EVAL_BUCKETS)
            arr = np.zeros((self.batch_size, t) + xs[0].shape[1:], np.float32)
            mask = np.zeros((self.batch_size, t), np.float32)
            for i in range(self.batch_size):
                x = xs[i % len(chunk)]
                arr[i, :len(x)], mask[i, :len(x)] = x, 1.0
            out.update(zip(chunk, np.asarray(self._selfsim(variables, arr, mask))[:len(chunk), 0]))
        return out

    def run(self, variables) -> Dict[str, float]:
        variables = host_variables(variables)
        ss = self._selfsims(variables, [v for it in self.items for v in it[:2]])
        z = np.asarray([[ss[q], ss[t], c] for q, t, c in self.items], np.float32)
        pred = np.asarray(self._prob(variables, jnp.asarray(z)))[:, 0] > 0.5
        y = self.labels > 0.5
        tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        return {"accuracy": float(np.mean(pred == y)), "f1": float(f1)}
