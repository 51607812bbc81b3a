"""Pair files: training pairs with teacher similarities.

Layout (the official one, `data/trainset_similarities_{teacher}.pk`):
    {'index': [video_id, ...],                       # position -> video id
     'pairs': {query_idx: {'positives': {idx: sim, ...},
                           'negatives': {idx: sim, ...}}}}
Similarities are the teacher's raw values ([-1, 1] for fine-grained networks).

Readers: the official pickle (through a restricted unpickler that builds only dicts, lists, tuples,
numbers and strings -- a pickle cannot run code here), our JSON (`.json`, `.json.gz`) and our
`.npz` (flat arrays, compact for 100K-video collections). Writers: JSON and npz.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

FORMAT = "dns_jax/pairs/1"

Pools = Dict[str, Dict[int, float]]


class PairFileError(ValueError):
    """A pair file that cannot be used (unreadable, empty, inconsistent)."""


@dataclass
class PairSet:
    """Video ids (`index`) and, per query index, positive and negative target indices with their
    teacher similarities. `meta` records how the file was made (teacher, selection rule)."""

    index: List[str]
    pairs: Dict[int, Pools]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.index)
        for q, pools in self.pairs.items():
            for kind in ("positives", "negatives"):
                for t in pools.get(kind, {}):
                    if not 0 <= t < n or not 0 <= q < n:
                        raise PairFileError(f"pair ({q}, {t}) points outside the index of {n} videos")

    def num_pairs(self) -> int:
        return sum(len(p.get("positives", {})) + len(p.get("negatives", {})) for p in self.pairs.values())

    def triplet_queries(self) -> List[int]:
        """Queries that have at least one positive and one negative (official eligibility)."""
        return sorted(q for q, p in self.pairs.items() if p.get("positives") and p.get("negatives"))

    def video_ids(self) -> List[str]:
        """Ids of every video that appears in a pair."""
        used = set()
        for q, p in self.pairs.items():
            used.add(q)
            used.update(p.get("positives", {}))
            used.update(p.get("negatives", {}))
        return [self.index[i] for i in sorted(used)]

    def all_pairs(self) -> List[Tuple[int, int, float, bool]]:
        """(query, target, sim, is_positive) for every pair, queries in index order."""
        out = []
        for q in sorted(self.pairs):
            for kind, positive in (("positives", True), ("negatives", False)):
                for t, s in sorted(self.pairs[q].get(kind, {}).items()):
                    out.append((q, t, float(s), positive))
        return out

    def restrict(self, keep: Sequence[int]) -> "PairSet":
        """Only pairs whose query and target are both in `keep` (indices)."""
        keep = set(keep)
        pairs = {}
        for q, p in self.pairs.items():
            if q not in keep:
                continue
            pos = {t: s for t, s in p.get("positives", {}).items() if t in keep}
            neg = {t: s for t, s in p.get("negatives", {}).items() if t in keep}
            if pos or neg:
                pairs[q] = {"positives": pos, "negatives": neg}
        return PairSet(list(self.index), pairs, dict(self.meta))


# ---------------------------------------------------------------------------------------------
# reading

class _SafeScalar:
    """numpy scalars inside the official pickle: rebuilt from dtype + bytes, no numpy code run."""


class _SafeDType:
    def __init__(self, name, *args):
        if not isinstance(name, str):
            raise pickle.UnpicklingError("refusing a numpy dtype that is not named by a string")
        self.name, self.order = name, "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.order = state[1]

    def to_numpy(self) -> np.dtype:
        dt = np.dtype(self.name)
        if dt.kind not in "biuf":
            raise pickle.UnpicklingError(f"refusing numpy scalar of dtype {self.name!r}")
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


def _safe_scalar(dtype, data):
    if not isinstance(dtype, _SafeDType) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("malformed numpy scalar")
    value = np.frombuffer(data, dtype=dtype.to_numpy(), count=1)[0]
    return value.item()


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what pickle opcodes build by themselves (dict, list, tuple, set of str, int,
    float, bool, None) plus numpy number scalars, rebuilt by our own code above."""

    _ALLOWED = {
        ("numpy.core.multiarray", "scalar"): _safe_scalar,
        ("numpy._core.multiarray", "scalar"): _safe_scalar,
        ("numpy", "dtype"): _SafeDType,
    }

    def find_class(self, module, name):
        fn = self._ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"the pair file needs {module}.{name} to load; only plain dicts, lists, numbers and "
                "strings are accepted (re-save it with those types)")
        return fn


def _as_int(x, what) -> int:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    if isinstance(x, str) and x.lstrip("-").isdigit():  # JSON object keys
        return int(x)
    raise PairFileError(f"{what}: expected an integer video index, got {x!r}")


def _normalise(obj, source: str) -> PairSet:
    if not isinstance(obj, Mapping) or "index" not in obj or "pairs" not in obj:
        raise PairFileError(f"{source}: not a pair file (expected a dict with 'index' and 'pairs')")
    index = [str(v.decode() if isinstance(v, bytes) else v) for v in obj["index"]]
    raw = obj["pairs"]
    if not isinstance(raw, Mapping):
        raise PairFileError(f"{source}: 'pairs' must map query indices to their pools")
    pairs = {}
    for q, pools in raw.items():
        qi = _as_int(q, f"{source}: query key")
        if not isinstance(pools, Mapping):
            raise PairFileError(f"{source}: pools of query {q} must be a dict")
        out = {}
        for kind in ("positives", "negatives"):
            pool = pools.get(kind, {})
            if not isinstance(pool, Mapping):
                raise PairFileError(f"{source}: {kind} of query {q} must map indices to similarities")
            out[kind] = {_as_int(t, f"{source}: {kind} of query {q}"): float(s) for t, s in pool.items()}
        pairs[qi] = out
    meta = dict(obj.get("meta", {})) if isinstance(obj.get("meta", {}), Mapping) else {}
    ps = PairSet(index, pairs, meta)
    if not ps.index or ps.num_pairs() == 0:
        raise PairFileError(f"{source}: the pair file holds no pairs")
    return ps


def read_pairs(path: str) -> PairSet:
    """Read an official pickle (.pk/.pkl/.pickle), our JSON (.json/.json.gz) or npz pair file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PairFileError(f"no such pair file: {path!r}")
    if os.path.getsize(path) == 0:
        raise PairFileError(f"{path}: the pair file is empty")
    lower = path.lower()
    try:
        if lower.endswith(".npz"):
            return _read_npz(path)
        if lower.endswith(".json") or lower.endswith(".json.gz"):
            opener = gzip.open if lower.endswith(".gz") else open
            with opener(path, "rt") as f:
                return _normalise(json.load(f), path)
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BytesIO(f.read())).load()
        return _normalise(obj, path)
    except PairFileError:
        raise
    except (pickle.UnpicklingError, json.JSONDecodeError, EOFError, ValueError, KeyError, OSError) as e:
        raise PairFileError(f"{path}: cannot read the pair file: {e}") from e


def _read_npz(path: str) -> PairSet:
    with np.load(path, allow_pickle=False) as z:
        for key in ("index", "query", "target", "sim", "positive"):
            if key not in z:
                raise PairFileError(f"{path}: npz pair file lacks the array {key!r}")
        index = [str(v) for v in z["index"]]
        q, t, s, pos = z["query"], z["target"], z["sim"], z["positive"]
        meta = json.loads(str(z["meta"])) if "meta" in z else {}
    if not (len(q) == len(t) == len(s) == len(pos)):
        raise PairFileError(f"{path}: query/target/sim/positive arrays differ in length")
    pairs: Dict[int, Pools] = {}
    for qi, ti, si, pi in zip(q.tolist(), t.tolist(), s.tolist(), pos.tolist()):
        pools = pairs.setdefault(int(qi), {"positives": {}, "negatives": {}})
        pools["positives" if pi else "negatives"][int(ti)] = float(si)
    ps = PairSet(index, pairs, meta)
    if not ps.index or ps.num_pairs() == 0:
        raise PairFileError(f"{path}: the pair file holds no pairs")
    return ps


# ---------------------------------------------------------------------------------------------
# writing

def write_pairs(pairs: PairSet, path: str) -> str:
    """Write `pairs` as JSON (.json / .json.gz) or npz (.npz); the file is replaced atomically."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    lower = path.lower()
    if lower.endswith(".npz"):
        rows = pairs.all_pairs()
        with open(tmp, "wb") as f:
            np.savez(f, index=np.asarray(pairs.index, dtype=str),
                     query=np.asarray([r[0] for r in rows], np.int64),
                     target=np.asarray([r[1] for r in rows], np.int64),
                     sim=np.asarray([r[2] for r in rows], np.float32),
                     positive=np.asarray([r[3] for r in rows], bool),
                     meta=np.asarray(json.dumps(pairs.meta)))
    elif lower.endswith(".json") or lower.endswith(".json.gz"):
        obj = {"format": FORMAT, "meta": pairs.meta, "index": list(pairs.index),
               "pairs": {str(q): {k: {str(t): float(s) for t, s in sorted(p.get(k, {}).items())}
                                  for k in ("positives", "negatives")}
                         for q, p in sorted(pairs.pairs.items())}}
        opener = gzip.open if lower.endswith(".gz") else open
        with opener(tmp, "wt") as f:
            json.dump(obj, f)
    else:
        raise PairFileError(f"{path}: pair files are written as .json, .json.gz or .npz")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# checking against a feature collection

@dataclass
class MissingReport:
    """Videos a pair file names that the feature collection lacks."""

    missing: List[str]
    named: int
    pairs_dropped: int
    queries_dropped: int

    def message(self, pair_source: str, feature_source: str) -> str:
        shown = ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
        return (f"{len(self.missing)} of {self.named} videos named by {pair_source} are missing from "
                f"{feature_source} ({shown}); skipping {self.pairs_dropped} pairs and "
                f"{self.queries_dropped} queries that use them")


def drop_missing(pairs: PairSet, available) -> Tuple[PairSet, MissingReport]:
    """Restrict `pairs` to videos in `available` (a container of ids); report what was dropped."""
    named = pairs.video_ids()
    missing = [v for v in named if v not in available]
    if not missing:
        return pairs, MissingReport([], len(named), 0, 0)
    missing_set = set(missing)
    keep = [i for i, v in enumerate(pairs.index) if v not in missing_set]
    kept = pairs.restrict(keep)
    report = MissingReport(missing, len(named), pairs.num_pairs() - kept.num_pairs(),
                           len(pairs.pairs) - len(kept.pairs))
    return kept, report


SELECTOR_TARGETS = ("gap", "inversion", "relevance")


def selector_labels(fine: PairSet, coarse: Dict[Tuple[str, str], float], threshold: float,
                    target: str = "gap") -> Tuple[List[Tuple[str, str, float]], List[float], int]:
    """(items [(query id, target id, coarse)], labels, unmatched) of the selector's training pairs:
    the pairs of `fine` (scores in [-1, 1], compared as s / 2 + 0.5) that `coarse` ({(query id,
    target id): coarse similarity}) also scores. A pair is labelled 1 (worth re-ranking) when

      'gap'        (official): |fine / 2 + 0.5 - coarse| > threshold;
      'inversion'  the coarse student puts it on the wrong side of another target of the same query
                   whose fine score differs from its own by more than `threshold`: re-ranking it
                   changes the order the fine student gives, which is what a budget must catch
                   (a pair that is merely on another scale is left alone);
      'relevance'  either student scores it above `threshold` (max(fine / 2 + 0.5, coarse)): the
                   pairs that may reach the top of the query's ranking, the copies the coarse student
                   scores low (to lift them) and the videos it scores high (to verify them).
    """
    if target not in SELECTOR_TARGETS:
        raise ValueError(f"selector target must be one of {', '.join(SELECTOR_TARGETS)}, got {target!r}")
    items, f_scores, unmatched = [], [], 0
    for q, t, s_fine, _ in fine.all_pairs():
        key = (fine.index[q], fine.index[t])
        if key not in coarse:
            unmatched += 1
            continue
        items.append((key[0], key[1], float(coarse[key])))
        f_scores.append(s_fine / 2 + 0.5)
    f = np.asarray(f_scores, np.float64)
    c = np.asarray([it[2] for it in items], np.float64)
    if target == "gap":
        return items, [1.0 if abs(a - b) > threshold else 0.0 for a, b in zip(f, c)], unmatched
    if target == "relevance":
        return items, (np.maximum(f, c) > threshold).astype(np.float64).tolist(), unmatched
    labels = np.zeros(len(items))
    queries = np.asarray([it[0] for it in items], dtype=object)
    for q in dict.fromkeys(queries.tolist()):
        at = np.flatnonzero(queries == q)
        df = f[at][:, None] - f[at][None, :]
        dc = c[at][:, None] - c[at][None, :]
        swapped = ((df > threshold) & (dc <= 0)) | ((df < -threshold) & (dc >= 0))
        labels[at] = swapped.any(axis=1)
    return items, labels.tolist(), unmatched
