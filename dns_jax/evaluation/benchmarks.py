"""Benchmark evaluators with the protocol of the official DnS code (`datasets/__init__.py`).

Every evaluator takes similarities as ``{query_id: {video_id: score}}`` (or, as officially, a
score array aligned with `get_database()` per query) and returns a dict with the official keys:

* `FIVR(version)`: ``{'DSVR', 'CSVR', 'ISVR'}`` (``{'DAVR'}`` with ``audio=True``)
* `CC_WEB_VIDEO()`: ``{'mAP', 'mAP_star', 'mAP_c', 'mAP_c_star'}``
* `EVVE()`: ``{'mAP'}``
* `SVD(version)`: ``{'mAP'}``
* `VCDB(annotation, distractors)`: ``{'mAP'}`` (S2VS's protocol; no DnS one exists)

The values equal the official ones on the same input (same ranking, tie order, set
intersections and summation order). Where the official code would crash or silently skip
(missing queries, unknown ids, NaN scores, a query with nothing relevant left, ...), these
evaluators carry on, record what happened in ``evaluator.last_report`` (an `EvaluationReport`)
and emit one `EvaluationWarning` per call; the returned dict never gets extra keys.

S2VS's protocol (gkordo/s2vs), with its micro-AP (µAP, `micro_ap.py`), is a separate method:
`FIVR.evaluate_s2vs` (mAP DSVR/CSVR/ISVR and µAP DSVD/CSVD/ISVD, each also without FIVR's easy
duplicates, keys ``..._h``) and `VCDB.evaluate_s2vs` (``{'mAP', 'uAP'}``).
"""
from __future__ import annotations

import collections
import itertools
import os
import warnings
from collections.abc import Mapping
from typing import Dict, List, Optional, Tuple

import numpy as np

from ._data import load_annotation, read_json_file
from .metrics import average_precision, descending_order, ranked_list_average_precision, trapezoid_average_precision
from .micro_ap import average_precision_from_ranks, ranks_from_ascending, sort_key
from .report import EvaluationReport, EvaluationWarning

_MISSING = object()


# ----------------------------------------------------------------------------------------------
# helpers shared by the evaluators
# ----------------------------------------------------------------------------------------------

def _check_similarities(similarities):
    if not isinstance(similarities, Mapping):
        raise TypeError("similarities must be a mapping {query_id: {video_id: score}} "
                        f"(got {type(similarities).__name__})")


def _to_float_array(values) -> np.ndarray:
    """Scores as float64; None or anything that is not a single number becomes NaN."""
    n = len(values)
    try:
        arr = np.array(values, dtype=np.float64)
        if arr.shape == (n,):
            return arr
        if arr.size == n:
            return arr.reshape(n)
    except (TypeError, ValueError):
        pass
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(np.asarray(v, dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            out[i] = np.nan
    return out


def _as_result_dict(res, database, all_db, query, report):
    """Official handling of one query's results: an array aligned with the benchmark's
    database becomes ``{id: score for ids in all_db}``; a mapping is used as it is."""
    if isinstance(res, (list, tuple)):
        res = np.asarray(res)
    if isinstance(res, (np.ndarray, np.generic)):
        arr = np.asarray(res).reshape(-1)
        if arr.size != len(database):
            report.notes.append(
                f"the score array of query {query!r} has {arr.size} entries but the database has "
                f"{len(database)}; the shorter length was used (ids paired in database order)")
        return {v: s for v, s in zip(database, arr) if v in all_db}
    if isinstance(res, Mapping):
        return res
    if hasattr(res, "__array__"):  # e.g. a jax array
        return _as_result_dict(np.asarray(res), database, all_db, query, report)
    raise TypeError(f"results of query {query!r} must be a mapping {{video_id: score}} or an "
                    f"array aligned with get_database() (got {type(res).__name__})")


def _ids_and_scores(res, query, report):
    """(ids in input order, float64 scores); NaN/non-numbers are counted in the report."""
    ids = list(res.keys())
    scores = _to_float_array(list(res.values()))
    n_nan = int(np.isnan(scores).sum())
    if n_nan:
        report.nan_scores[query] = n_nan
    return ids, scores


def _count_unknown(ids, known, query, report):
    n = sum(1 for v in ids if v not in known)
    if n:
        report.unknown_ids[query] = n


def _mean(values):
    if len(values) == 0:
        return np.float64(np.nan)
    return np.mean(values)


def _fmt(x):
    return "  n/a " if x is None or not np.isfinite(x) else f"{x:.4f}"


def _print_header(title):
    line = f"{'=' * 5} {title} {'=' * 5}"
    print(line)
    return len(line)


def _query_line(report):
    missing = len(report.missing_queries)
    extra = f" ({missing} of {report.n_queries} missing, ignored)" if missing else ""
    return f"Queries: {len(report.evaluated)} evaluated{extra}"


# ----------------------------------------------------------------------------------------------
# S2VS's protocol: per-query mAP and pooled µAP (shared by FIVR and VCDB)
# ----------------------------------------------------------------------------------------------

def _is_array(res) -> bool:
    return isinstance(res, (list, tuple, np.ndarray, np.generic)) or (
        not isinstance(res, Mapping) and hasattr(res, "__array__"))


def _s2vs_query_pool(query, res, database, position, db, db_mask, gts, report, first):
    """One query's pairs with S2VS's rules: (scores, [relevant booleans per positive set]).

    `res` is ``{video: score}`` or an array aligned with `database`; the pairs are its videos in
    `db` other than the query, in input (database) order. `gts`: the query's positive sets, already
    restricted to `db`. NaN scores and unknown ids are counted in the report when `first`.
    """
    if _is_array(res):
        arr = np.asarray(res).reshape(-1)
        if arr.size == len(database):
            keep = db_mask.copy()
            qpos = position.get(query)
            if qpos is not None:
                keep[qpos] = False
            scores = _to_float_array(arr)[keep]
            rels = []
            for gt in gts:
                rel = np.zeros(len(database), dtype=bool)
                rel[[position[v] for v in gt if v in position]] = True
                rels.append(rel[keep])
            if first and np.isnan(scores).any():
                report.nan_scores[query] = int(np.isnan(scores).sum())
            return scores, rels
    res = _as_result_dict(res, database, db, query, report)
    if first:
        _count_unknown(res.keys(), position, query, report)
    ids = [v for v in res if v != query and v in db]
    scores = _to_float_array([res[v] for v in ids])
    if first and np.isnan(scores).any():
        report.nan_scores[query] = int(np.isnan(scores).sum())
    rels = [np.fromiter((v in gt for v in ids), dtype=bool, count=len(ids)) for gt in gts]
    return scores, rels


def _s2vs_scores(similarities, queries, database, db, positives, tasks, drop_self, report, suffix="",
                 first=True):
    """mAP (mean over the queries that have positives) and pooled µAP of every task, S2VS's way.

    Args:
      queries: the evaluated queries in pooling order (each in `similarities`).
      database: the benchmark's database (the alignment of array results).
      db: the available database videos (a set): pairs and positives outside it are dropped.
      positives: ``positives(query, task)`` -> the query's positive videos for `task`.
      tasks: task names.
      drop_self: remove the query from its own positives (FIVR) or keep it (VCDB).

    Returns ({task: mAP}, {task: µAP}); NaN where no query has a positive.

    Each query's pairs are sorted once (stable, ascending; `micro_ap.s2vs_order` reversed); the
    pool is ranked by a stable sort of the concatenated sorted blocks, which equals a stable sort of
    the pool in pooling order (ties keep their block, then their place in it) and costs a merge.
    """
    position = {v: i for i, v in enumerate(database)}
    db_mask = np.fromiter((v in db for v in database), dtype=bool, count=len(database))
    aps = {task: [] for task in tasks}
    blocks, block_rel = [], {task: [] for task in tasks}
    n_positives = {task: 0 for task in tasks}
    skipped = []
    for query in queries:
        gts = []
        for task in tasks:
            gt = set(positives(query, task)).intersection(db)
            if drop_self:
                gt.discard(query)
            gts.append(gt)
        scores, rels = _s2vs_query_pool(query, similarities[query], database, position, db, db_mask,
                                        gts, report, first)
        key = sort_key(scores)
        ascending = np.argsort(key, kind="stable")
        blocks.append(key[ascending])
        for task, gt, rel in zip(tasks, gts, rels):
            rel = rel[ascending]
            block_rel[task].append(rel)
            n_positives[task] += len(gt)
            if not gt:
                skipped.append((query, task + suffix))
                continue
            ap = average_precision_from_ranks(ranks_from_ascending(rel), len(gt))
            aps[task].append(ap)
            report.add_per_query(task + suffix, query, ap)
    if skipped:
        report.notes.append(
            f"{len(skipped)} (query, task) pairs have no relevant video in the database and were left "
            f"out of the mAP (S2VS's rule for FIVR): {skipped[:5]}" + (" ..." if len(skipped) > 5 else ""))
    maps = {task: _mean(values) for task, values in aps.items()}
    merged = np.argsort(np.concatenate(blocks), kind="stable") if blocks else np.zeros(0, np.int64)
    del blocks
    micro = {}
    for task in tasks:
        rel = np.concatenate(block_rel[task])[merged] if block_rel[task] else np.zeros(0, dtype=bool)
        micro[task] = np.float64(average_precision_from_ranks(ranks_from_ascending(rel), n_positives[task]))
        if n_positives[task] == 0:
            report.notes.append(f"no positive pair for {task + suffix}: its micro-AP is undefined (NaN)")
    return maps, micro


# ----------------------------------------------------------------------------------------------
# FIVR
# ----------------------------------------------------------------------------------------------

class _Benchmark:
    """The official API's accessors: every benchmark sets `queries` and `database` (id lists)."""

    queries: List[str]
    database: List[str]

    def get_queries(self) -> List[str]:
        return self.queries

    def get_database(self) -> List[str]:
        return self.database


class FIVR(_Benchmark):
    """FIVR-5K / FIVR-200K: Duplicate, Complementary and Incident Scene Video Retrieval.

    Relevant labels per task: DSVR = ND + DS, CSVR = ND + DS + CS, ISVR = ND + DS + CS + IS
    (DAVR = DA, audio mode). For each query its results are ranked by descending score; the
    query itself and videos outside the available database are skipped; AP = sum of
    precision@k at the relevant positions / number of relevant videos available; the mAP is
    the mean over the queries present in `similarities` (missing ones are ignored).

    `all_db` (optional): the videos actually available; it is intersected with the benchmark
    database, and restricts both the ranking and the relevant sets.
    """

    TASKS = collections.OrderedDict([("DSVR", ("ND", "DS")),
                                     ("CSVR", ("ND", "DS", "CS")),
                                     ("ISVR", ("ND", "DS", "CS", "IS"))])
    AUDIO_TASKS = collections.OrderedDict([("DAVR", ("DA",))])
    # S2VS's detection tasks: the same positives as the retrieval task of the same letters
    DETECTION_TASKS = collections.OrderedDict([("DSVD", "DSVR"), ("CSVD", "CSVR"), ("ISVD", "ISVR")])
    _s2vs_labels = None
    _easy_duplicates = None

    def __init__(self, version: str = "200k", audio: bool = False):
        data = load_annotation("fivr")
        if version not in ("5k", "200k"):
            raise ValueError(f"FIVR version must be '5k' or '200k' (got {version!r})")
        self.version = version
        self.audio = bool(audio)
        self.name = "FIVR"
        self.annotation = {q: {label: list(ids) for label, ids in labels.items()}
                           for q, labels in data["annotation"].items()}
        queries = data[version]["queries"]
        if self.audio:
            queries = [q for q in queries if "DA" in self.annotation[q]]
        self.queries = sorted(queries)
        self.database = sorted(data[version]["database"])
        self._query_set = set(self.queries)
        self._database_set = set(self.database)
        self.last_report: Optional[EvaluationReport] = None

    @property
    def benchmark(self):
        return f"FIVR-{self.version.upper()}"

    def _relevant(self, query, labels, all_db):
        gt = self.annotation.get(query, {})
        relevant = set()
        for label in labels:
            relevant.update(gt.get(label, ()))
        return relevant.intersection(all_db)

    def _query_aps(self, query, ids, scores, all_db, tasks, report=None):
        order = descending_order(scores)
        counted = np.fromiter((v != query and v in all_db for v in ids), dtype=bool,
                              count=len(ids))[order]
        position = None
        aps = collections.OrderedDict()
        for task, labels in tasks.items():
            relevant = self._relevant(query, labels, all_db)
            if not relevant:
                if report is not None:
                    report.no_positives.append((query, task))
                aps[task] = 0.0
                continue
            if position is None:
                position = {v: i for i, v in enumerate(ids)}
            rel_in = np.zeros(len(ids), dtype=bool)
            rel_in[[position[v] for v in relevant if v in position]] = True
            aps[task] = ranked_list_average_precision(rel_in[order], counted, len(relevant))
        return aps

    def calculate_mAP(self, query, res, all_db, relevant_labels) -> float:
        """AP of one query (official name): `res` is ``{video_id: score}``."""
        report = EvaluationReport(self.benchmark)
        ids, scores = _ids_and_scores(res, query, report)
        aps = self._query_aps(query, ids, scores, set(all_db), {"AP": tuple(relevant_labels)},
                              report)
        return aps["AP"]

    # -- S2VS's protocol --------------------------------------------------------------------
    def s2vs_annotation(self) -> Dict[str, Dict[str, set]]:
        """The labels S2VS evaluates with (``{query: {label: set of videos}}``, ND/DS/CS/IS).

        S2VS ships its own FIVR annotation: it equals the DnS one except for 62 ids dropped from the
        CS/IS labels of 31 queries, one of which moves to DS (`data/fivr_s2vs.json.gz`, README).
        """
        if self._s2vs_labels is None:
            fix = load_annotation("fivr_s2vs")
            labels = {}
            for query, gt in self.annotation.items():
                labels[query] = {label: set(ids) for label, ids in gt.items() if label != "DA"}
                for label, ids in fix["remove"].get(query, {}).items():
                    labels[query][label].difference_update(ids)
                for label, ids in fix["add"].get(query, {}).items():
                    labels[query].setdefault(label, set()).update(ids)
            self._s2vs_labels = labels
        return self._s2vs_labels

    @property
    def easy_duplicates(self) -> Optional[frozenset]:
        """FIVR-200K videos S2VS calls easy duplicates (`fivr_easy_duplicates`, 4,873 ids), left out
        for the ``_h`` ("hard") results; None for a benchmark without such a list."""
        if self._easy_duplicates is None:
            self._easy_duplicates = frozenset(load_annotation("fivr_s2vs")["easy_duplicates"])
        return self._easy_duplicates

    def evaluate_s2vs(self, similarities, all_db=None, verbose=False) -> Dict[str, float]:
        """S2VS's evaluation: mAP of DSVR/CSVR/ISVR and micro-AP of DSVD/CSVD/ISVD, on the
        available database and (keys ending in ``_h``) on it without the easy duplicates.

        Same input as `evaluate`. Rules of S2VS's code (which differ from DnS's `evaluate`): S2VS's
        labels (`s2vs_annotation`); the query is never its own positive; a query with no positive
        for a task is left out of that task's mean (reported) instead of counting 0; equal scores
        rank the later video first (see `micro_ap`). µAP pools the pairs of all evaluated queries
        (their positives that have no score count as never retrieved). NaN scores rank last.
        Returns ``{'DSVR', 'CSVR', 'ISVR', 'DSVD', 'CSVD', 'ISVD'}`` and the same keys with
        ``_h`` (only where the benchmark has an easy-duplicate list); the report of problems is
        kept in `last_report`.
        """
        _check_similarities(similarities)
        if self.audio:
            raise ValueError("evaluate_s2vs covers the visual tasks; FIVR(audio=True) is not supported")
        all_db = set(self.database) if all_db is None else self._database_set.intersection(all_db)
        report = EvaluationReport(f"{self.benchmark} (S2VS protocol)", n_queries=len(self.queries))
        report.unknown_queries = [q for q in similarities if q not in self._query_set]
        queries = [q for q in similarities if q in self._query_set]
        report.evaluated = list(queries)
        report.missing_queries = [q for q in self.queries if q not in similarities]
        labels = self.s2vs_annotation()
        tasks = list(self.TASKS)

        def positives(query, task):
            gt = labels.get(query, {})
            return set().union(*(gt.get(label, ()) for label in self.TASKS[task]))

        variants = [("", all_db)]
        if self.easy_duplicates is not None:
            variants.append(("_h", all_db - self.easy_duplicates))
        results = {}
        for i, (suffix, db) in enumerate(variants):
            maps, micro = _s2vs_scores(similarities, queries, self.database, db, positives, tasks,
                                       drop_self=True, report=report, suffix=suffix, first=i == 0)
            for task in tasks:
                results[task + suffix] = maps[task]
            for detection, task in self.DETECTION_TASKS.items():
                results[detection + suffix] = micro[task]
        self.last_report = report
        if verbose:
            width = _print_header(f"{self.benchmark} Dataset (S2VS protocol)")
            print(_query_line(report))
            for suffix, db in variants:
                print("-" * width)
                print(f"Database: {len(db)} videos" + (" (easy duplicates left out)" if suffix else ""))
                for task in tasks:
                    print(f"{task} mAP: {_fmt(results[task + suffix])}")
                for detection in self.DETECTION_TASKS:
                    print(f"{detection} uAP: {_fmt(results[detection + suffix])}")
        report.emit(verbose)
        return results

    def evaluate(self, similarities, all_db=None, verbose=False) -> Dict[str, float]:
        _check_similarities(similarities)
        if all_db is None:
            all_db = set(self.database)
        else:
            all_db = self._database_set.intersection(all_db)
        tasks = self.AUDIO_TASKS if self.audio else self.TASKS
        report = EvaluationReport(self.benchmark, n_queries=len(self.queries))
        aps = {task: [] for task in tasks}
        for query, res in similarities.items():
            if query not in self._query_set:
                report.unknown_queries.append(query)
                continue
            res = _as_result_dict(res, self.database, all_db, query, report)
            ids, scores = _ids_and_scores(res, query, report)
            _count_unknown(ids, self._database_set, query, report)
            for task, ap in self._query_aps(query, ids, scores, all_db, tasks, report).items():
                aps[task].append(ap)
                report.add_per_query(task, query, ap)
            report.evaluated.append(query)
        report.missing_queries = [q for q in self.queries if q not in similarities]
        results = {task: _mean(values) for task, values in aps.items()}
        self.last_report = report
        if verbose:
            width = _print_header(f"{self.benchmark} Dataset")
            print(_query_line(report))
            print(f"Database: {len(all_db)} videos")
            print("-" * width)
            for task, value in results.items():
                print(f"{task} mAP: {_fmt(value)}")
        report.emit(verbose)
        return results


# ----------------------------------------------------------------------------------------------
# CC_WEB_VIDEO
# ----------------------------------------------------------------------------------------------

class CC_WEB_VIDEO(_Benchmark):
    """CC_WEB_VIDEO near-duplicate retrieval: mAP, mAP* (all videos ranked) and the "clean"
    variants mAP_c, mAP_c_star (the query's `excluded` videos removed from the ranking and
    from the positives).

    Official semantics kept on purpose:
    * positives are the labels in 'ESLMV'; the plain mAP ranks only videos of the query's
      ground truth, the star variants rank every known video;
    * the query itself is not excluded: every query has label E in its own ground truth, so
      its self-match counts as a relevant hit;
    * result ids not in the index are skipped; `all_db` only matters for array results (a
      mapping is used as given); the positives count the whole ground truth (retrieved or not);
    * the mAP is divided by the number of benchmark queries present in `similarities`.
    """

    POSITIVE_LABELS = "ESLMV"

    def __init__(self):
        data = load_annotation("cc_web_video")
        self.name = "CC_WEB_VIDEO"
        self.index = {str(k): int(v) for k, v in data["index"].items()}
        self.queries = list(data["queries"])
        self.database = sorted(map(str, self.index.keys()))
        self.ground_truth = [{int(k): str(v) for k, v in pairs} for pairs in data["ground_truth"]]
        self.excluded = [set(int(k) for k in ex) for ex in data["excluded"]]
        self._query_set = set(self.queries)
        self.last_report: Optional[EvaluationReport] = None

    def _rank(self, similarities, all_db, report):
        """Per benchmark query present: (query_set, ranked integer ids, -1 = not in the index)."""
        ranked = []
        for query_set, query_id in enumerate(self.queries):
            if query_id not in similarities:
                continue
            res = _as_result_dict(similarities[query_id], self.database, all_db, query_id, report)
            ids, scores = _ids_and_scores(res, query_id, report)
            order = descending_order(scores)
            vids = np.fromiter((self.index.get(ids[k], -1) for k in order), dtype=np.int64,
                               count=len(ids))
            n_unknown = int((vids < 0).sum())
            if n_unknown:
                report.unknown_ids[query_id] = n_unknown
            ranked.append((query_set, vids))
        return ranked

    def _map_from_ranked(self, ranked, n_present, all_videos, clean, positive_labels, task,
                         report):
        total = 0.0
        for query_set, vids in ranked:
            labels = self.ground_truth[query_set]
            excluded = self.excluded[query_set]
            query_id = self.queries[query_set]
            in_labels = np.fromiter((v in labels for v in vids), dtype=bool, count=len(vids))
            is_pos = np.fromiter((v in labels and labels[v] in positive_labels for v in vids),
                                 dtype=bool, count=len(vids))
            counted = vids >= 0
            if not all_videos:
                counted &= in_labels
            if clean:
                counted &= ~np.fromiter((v in excluded for v in vids), dtype=bool,
                                        count=len(vids))
            n_pos = sum(1 for k, v in labels.items()
                        if v in positive_labels and (not clean or k not in excluded))
            if n_pos == 0:
                report.no_positives.append((query_id, task))
                ap = 0.0
            else:
                ap = ranked_list_average_precision(is_pos & counted, counted, n_pos)
            report.add_per_query(task, query_id, ap)
            total += ap
        if n_present == 0:
            return np.float64(np.nan)
        return total / n_present

    def calculate_mAP(self, similarities, all_db, all_videos=False, clean=False,
                      positive_labels=POSITIVE_LABELS) -> float:
        """One mAP variant (official name and arguments)."""
        report = EvaluationReport(self.name, n_queries=len(self.queries))
        ranked = self._rank(similarities, set(all_db), report)
        n_present = len(self._query_set.intersection(similarities.keys()))
        return self._map_from_ranked(ranked, n_present, all_videos, clean, positive_labels,
                                     "mAP", report)

    def evaluate(self, similarities, all_db=None, verbose=False) -> Dict[str, float]:
        _check_similarities(similarities)
        all_db = set(self.database) if all_db is None else set(all_db)
        report = EvaluationReport(self.name, n_queries=len(self.queries))
        report.unknown_queries = [q for q in similarities if q not in self._query_set]
        ranked = self._rank(similarities, all_db, report)
        report.evaluated = [self.queries[qs] for qs, _ in ranked]
        report.missing_queries = [q for q in self.queries if q not in similarities]
        n_present = len(self._query_set.intersection(similarities.keys()))
        results = {}
        for key, all_videos, clean in (("mAP", False, False), ("mAP_star", True, False),
                                       ("mAP_c", False, True), ("mAP_c_star", True, True)):
            results[key] = self._map_from_ranked(ranked, n_present, all_videos, clean,
                                                 self.POSITIVE_LABELS, key, report)
        self.last_report = report
        if verbose:
            width = _print_header("CC_WEB_VIDEO Dataset")
            print(_query_line(report))
            print(f"Database: {len(all_db)} videos")
            print("-" * width)
            print(f"All dataset    CC_WEB mAP: {_fmt(results['mAP'])}   "
                  f"CC_WEB* mAP: {_fmt(results['mAP_star'])}")
            print(f"Clean dataset  CC_WEB mAP: {_fmt(results['mAP_c'])}   "
                  f"CC_WEB* mAP: {_fmt(results['mAP_c_star'])}")
        report.emit(verbose)
        return results


# ----------------------------------------------------------------------------------------------
# EVVE
# ----------------------------------------------------------------------------------------------

class EVVE(_Benchmark):
    """EVVE event retrieval (13 events). AP by INRIA's trapezoid rule over the ranks of the
    event's positives (videos not in `all_db` take no rank); the returned mAP is the mean AP
    over all evaluated queries. Per-event mAPs (AP sum / number of the event's queries in
    `all_db`) are printed with verbose and kept in ``last_report.per_event``.

    `all_db` defaults to database + queries and is used as given otherwise (not intersected
    with the benchmark); a non-empty `all_db` also restricts the positives.
    """

    def __init__(self):
        data = load_annotation("evve")
        self.name = "EVVE"
        self.events = {name: tuple(set(s) for s in triple)
                       for name, triple in data["annotation"].items()}
        self.queries = sorted(data["queries"])
        self.database = sorted(data["database"])
        self.query_to_event = {q: name for name, (queries, _, _) in self.events.items()
                               for q in queries}
        self._known = set(self.database).union(self.queries)
        self.last_report: Optional[EvaluationReport] = None

    @staticmethod
    def score_ap_from_ranks_1(ranks, nres) -> float:
        """Trapezoid AP (official name): `ranks` 0-based ranks of the positives, `nres` the
        number of positives."""
        return trapezoid_average_precision(ranks, nres)

    def evaluate(self, similarities, all_db=None, verbose=False) -> Dict[str, float]:
        _check_similarities(similarities)
        all_db = self._known.copy() if all_db is None else set(all_db)
        report = EvaluationReport(self.name, n_queries=len(self.queries))
        query_set = set(self.queries)
        report.unknown_queries = [q for q in similarities if q not in query_set]
        results = {name: [] for name in self.events}
        for query in self.queries:
            if query not in similarities:
                report.missing_queries.append(query)
                continue
            res = _as_result_dict(similarities[query], self.database, all_db, query, report)
            ids, scores = _ids_and_scores(res, query, report)
            _count_unknown(ids, self._known, query, report)
            event = self.query_to_event[query]
            _, positives, _ = self.events[event]
            if all_db:
                positives = positives.intersection(all_db)
            order = descending_order(scores)
            ranked = [ids[k] for k in order]
            outside = np.fromiter((v not in all_db for v in ranked), dtype=bool, count=len(ranked))
            is_pos = np.fromiter((v in positives for v in ranked), dtype=bool, count=len(ranked))
            # rank = position minus the number of earlier videos outside all_db
            skipped_before = np.cumsum(outside) - outside
            ranks = (np.arange(len(ranked)) - skipped_before)[is_pos]
            if len(positives) == 0:
                report.no_positives.append((query, "mAP"))
            ap = trapezoid_average_precision(ranks.tolist(), len(positives))
            results[event].append(ap)
            report.add_per_query("mAP", query, ap)
            report.evaluated.append(query)
        all_aps, per_event = [], {}
        for event in sorted(self.events):
            queries, _, _ = self.events[event]
            nq = len(queries.intersection(all_db))
            all_aps.extend(results[event])
            per_event[event] = float(np.sum(results[event]) / nq) if nq else float("nan")
        report.per_event = per_event
        mAP = _mean(all_aps)
        self.last_report = report
        if verbose:
            width = _print_header("EVVE Dataset")
            print(_query_line(report))
            print(f"Database: {len(all_db - query_set)} videos")
            print("-" * width)
            for event, value in per_event.items():
                print(f"{event:<38} mAP = {_fmt(value)}")
            print("-" * width)
            print(f"{'overall':<38} mAP = {_fmt(mAP)}")
        report.emit(verbose)
        return {"mAP": mAP}


# ----------------------------------------------------------------------------------------------
# SVD
# ----------------------------------------------------------------------------------------------

_SVD_UNLABELED_HELP = (
    "SVD(version='unlabeled') needs the list of unlabeled distractor ids (the file "
    "`datasets/unlabeled-data-id` of the official distill-and-select repository, one id per "
    "line; it is not shipped with dns_jax). Pass unlabeled_ids=<path to that file or a list of "
    "ids>, or use SVD(version='labeled') to evaluate on the labelled pairs only.")


def _read_id_list(source) -> List[str]:
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"unlabeled id list {os.fspath(source)!r} does not exist. "
                                    + _SVD_UNLABELED_HELP)
        with open(source, "r") as f:
            return [line.strip() for line in f]
    return [str(x).strip() for x in source]


class SVD(_Benchmark):
    """SVD (Short Video Dataset) near-duplicate retrieval.

    Database = every labelled target of every query (concatenated, duplicates kept, sorted) plus
    the unlabeled distractors (``version='unlabeled'``; pass `unlabeled_ids`). Per query, AP as
    in ``sklearn.metrics.average_precision_score`` over its labelled targets in `all_db` plus
    all distractors in `all_db` as negatives; mAP = mean over the queries.

    Deviations where the official code would crash: `all_db` defaults to the whole database;
    queries without results are left out of the mean (and reported); a target of `all_db`
    without a score is counted as never retrieved; NaN scores rank lowest (as -inf).
    """

    def __init__(self, version: str = "unlabeled", unlabeled_ids=None):
        if version not in ("labeled", "unlabeled"):
            raise ValueError(f"SVD version must be 'labeled' or 'unlabeled' (got {version!r})")
        self.name = "SVD"
        self.version = version
        self.ground_truth = self._groundtruth_from_pairs(load_annotation("svd")["pairs"])
        if version == "labeled":
            if unlabeled_ids is not None:
                warnings.warn("SVD(version='labeled') ignores unlabeled_ids", EvaluationWarning,
                              stacklevel=2)
            self.unlabeled_keys = []
        else:
            if unlabeled_ids is None:
                raise ValueError(_SVD_UNLABELED_HELP)
            self.unlabeled_keys = _read_id_list(unlabeled_ids)
        database = []
        for targets in self.ground_truth.values():
            database.extend(map(str, targets.keys()))
        self.queries = sorted(map(str, self.ground_truth.keys()))
        self.database = sorted(database + self.unlabeled_keys)
        self._database_set = set(self.database)
        self.last_report: Optional[EvaluationReport] = None

    @staticmethod
    def _groundtruth_from_pairs(pairs):
        gt = collections.OrderedDict()
        for query, target, label in pairs:
            gt.setdefault(query, {})[target] = int(label)
        return gt

    @classmethod
    def load_groundtruth(cls, filepath):
        """Parse an official `test_groundtruth` text file (``query target label`` lines)."""
        pairs = []
        with open(filepath, "r") as f:
            for line in f:
                fields = line.strip().split(" ")
                pairs.append((fields[0], fields[1], int(fields[-1])))
        return cls._groundtruth_from_pairs(pairs)

    @staticmethod
    def get_unlabeled_keys(filepath) -> List[str]:
        """Read a distractor id list (one id per line)."""
        return _read_id_list(filepath)

    def evaluate(self, similarities, all_db=None, verbose=False) -> Dict[str, float]:
        _check_similarities(similarities)
        all_db = set(self.database) if all_db is None else set(all_db)
        report = EvaluationReport(self.name, n_queries=len(self.ground_truth))
        report.unknown_queries = [q for q in similarities if q not in self.ground_truth]
        distractors = [t for t in self.unlabeled_keys if t in all_db]
        aps = []
        for query, targets in self.ground_truth.items():
            if query not in similarities:
                report.missing_queries.append(query)
                continue
            res = _as_result_dict(similarities[query], self.database, all_db, query, report)
            n_unknown = len(res.keys() - self._database_set)
            if n_unknown:
                report.unknown_ids[query] = n_unknown
            labels, values = [], []
            n_missing, missing_pos = 0, 0
            for target, label in targets.items():
                if target in all_db:
                    if target in res:
                        labels.append(label)
                        values.append(res[target])
                    else:
                        n_missing += 1
                        missing_pos += label == 1
            if distractors:
                found = list(map(res.get, distractors, itertools.repeat(_MISSING)))
                n_absent = sum(1 for v in found if v is _MISSING)
                if n_absent:
                    n_missing += n_absent
                    found = [v for v in found if v is not _MISSING]
                labels.extend(itertools.repeat(0, len(found)))
                values.extend(found)
            scores = _to_float_array(values)
            nan = np.isnan(scores)
            if nan.any():
                report.nan_scores[query] = int(nan.sum())
                scores[nan] = -np.inf
            if n_missing:
                report.missing_scores[query] = n_missing
            labels = np.asarray(labels, dtype=np.int64)
            n_pos = int((labels == 1).sum())
            if n_pos + missing_pos == 0:
                report.no_positives.append((query, "mAP"))
                ap = 0.0
            else:
                ap = average_precision(labels, scores)
                if missing_pos:
                    ap = ap * n_pos / (n_pos + missing_pos)
            aps.append(ap)
            report.add_per_query("mAP", query, ap)
            report.evaluated.append(query)
        mAP = _mean(aps)
        self.last_report = report
        if verbose:
            width = _print_header(f"SVD Dataset ({self.version})")
            print(_query_line(report))
            print(f"Database: {len(all_db)} videos")
            print("-" * width)
            print(f"mAP: {_fmt(mAP)}")
        report.emit(verbose)
        return {"mAP": mAP}


# ----------------------------------------------------------------------------------------------
# VCDB
# ----------------------------------------------------------------------------------------------

VCDB_FORMAT = "dns_jax.evaluation/vcdb/1"
_VCDB_HELP = (
    "VCDB needs its annotation, which is not shipped with dns_jax: convert S2VS's `data/vcdb.pickle` "
    "(github.com/gkordo/s2vs) once with `python tools/convert_eval_annotations.py --vcdb vcdb.pickle "
    "vcdb.json.gz` and pass annotation='vcdb.json.gz' (dns-jax evaluate: --vcdb-annotation), or pass "
    "a mapping {'queries': [core video ids], 'positives': {video: [videos]}, 'distractors': [ids]}.")


def _read_json_document(path) -> dict:
    try:
        return read_json_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"VCDB annotation {os.fspath(path)!r} does not exist. " + _VCDB_HELP) from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read VCDB annotation {os.fspath(path)!r}: {e}") from e


class VCDB(_Benchmark):
    """VCDB partial-copy detection at video level, with S2VS's protocol (S2VS's `VCDB` dataset).

    The 528 core videos are both the queries and the database; with ``distractors=True`` the
    ~100k background videos join the database (S2VS's "VCDB-DIST"). A pair of core videos is
    positive when VCDB annotates a copied segment between them (`positives`). Per query, every
    other available video is ranked; mAP = mean AP over the queries present (those with no
    positive in the database are left out and reported; S2VS's mean would be NaN), µAP = AP of all
    (query, video) pairs pooled (`micro_ap`). As in S2VS, positives are used as listed: a video
    listed among its own positives is a positive never retrieved (the query is never ranked).

    `annotation`: a JSON file (optionally gzipped) of format ``dns_jax.evaluation/vcdb/1`` as
    `tools/convert_eval_annotations.py --vcdb` writes from S2VS's `vcdb.pickle`, or a mapping with
    ``queries``, ``positives`` and ``distractors`` (S2VS's name ``dataset`` also works).
    `all_db` is intersected with `get_database()`.
    """

    def __init__(self, annotation=None, distractors: bool = False):
        if annotation is None:
            raise ValueError(_VCDB_HELP)
        if isinstance(annotation, Mapping):
            doc = annotation
        else:
            doc = _read_json_document(annotation)
            fmt = doc.get("format") if isinstance(doc, dict) else None
            if fmt != VCDB_FORMAT:
                raise ValueError(f"{os.fspath(annotation)}: not a VCDB annotation (format {fmt!r}, "
                                 f"expected {VCDB_FORMAT!r}). " + _VCDB_HELP)
        missing = [k for k in ("queries", "positives") if k not in doc]
        if missing:
            raise ValueError(f"VCDB annotation without {', '.join(missing)}. " + _VCDB_HELP)
        self.queries = [str(q) for q in doc["queries"]]
        self.positives = {str(v): set(map(str, pos)) for v, pos in doc["positives"].items()}
        self.distractor_ids = [str(v) for v in doc.get("distractors", doc.get("dataset", []))]
        self.distractors = bool(distractors)
        if self.distractors and not self.distractor_ids:
            raise ValueError("VCDB(distractors=True) needs the distractor ids ('distractors' in the "
                             "annotation); this annotation has none")
        self.name = "VCDB-DIST" if self.distractors else "VCDB"
        self.database = self.queries + (self.distractor_ids if self.distractors else [])
        self._query_set = set(self.queries)
        self._database_set = set(self.database)
        self.last_report: Optional[EvaluationReport] = None

    def evaluate_s2vs(self, similarities, all_db=None, verbose=False) -> Dict[str, float]:
        """``{'mAP', 'uAP'}`` with S2VS's rules (see the class docstring and `micro_ap`)."""
        _check_similarities(similarities)
        db = set(self._database_set) if all_db is None else self._database_set.intersection(all_db)
        report = EvaluationReport(self.name, n_queries=len(self.queries))
        report.unknown_queries = [q for q in similarities if q not in self._query_set]
        queries = [q for q in self.queries if q in similarities]
        report.evaluated = list(queries)
        report.missing_queries = [q for q in self.queries if q not in similarities]
        maps, micro = _s2vs_scores(similarities, queries, self.database, db,
                                   lambda query, task: self.positives.get(query, ()), ["VCDB"],
                                   drop_self=False, report=report)
        results = {"mAP": maps["VCDB"], "uAP": micro["VCDB"]}
        self.last_report = report
        if verbose:
            width = _print_header(f"{self.name} Dataset")
            print(_query_line(report))
            print(f"Database: {len(db)} videos")
            print("-" * width)
            print(f"mAP: {_fmt(results['mAP'])}")
            print(f"uAP: {_fmt(results['uAP'])}")
        report.emit(verbose)
        return results

    def evaluate(self, similarities, all_db=None, verbose=False) -> Dict[str, float]:
        """``{'mAP'}`` (the µAP is in `evaluate_s2vs`)."""
        return {"mAP": self.evaluate_s2vs(similarities, all_db, verbose)["mAP"]}


def benchmark_title(bench) -> str:
    if isinstance(bench, FIVR):
        return bench.benchmark
    return bench.name + (f" ({bench.version})" if isinstance(bench, SVD) else "")


def evaluate_similarities(benchmark, similarities, all_db) -> dict:
    """`benchmark.evaluate` without its per-call warnings (the caller reports problems once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return {k: float(v) for k, v in benchmark.evaluate(similarities, all_db=all_db).items()}


def _quietly(method, similarities, all_db) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return {k: float(v) for k, v in method(similarities, all_db=all_db).items()}


def evaluate_with_s2vs(benchmark, similarities, all_db) -> Tuple[dict, dict, List[str]]:
    """(`benchmark.evaluate` results, S2VS's extra columns, problems), without per-call warnings.

    The extra columns are what S2VS's protocol adds to the official results: for FIVR (visual
    tasks) ``uAP_DSVD``, ``uAP_CSVD``, ``uAP_ISVD``, then without the easy duplicates
    ``mAP_DSVR_h``, ``mAP_CSVR_h``, ``mAP_ISVR_h``, ``uAP_DSVD_h``, ``uAP_CSVD_h``, ``uAP_ISVD_h``
    (FIVR's own DSVR/CSVR/ISVR columns stay DnS's); for VCDB ``uAP`` (its mAP is the official
    result). Other benchmarks have none. `problems`: the lines of the evaluation reports.
    """
    if isinstance(benchmark, VCDB):
        results = _quietly(benchmark.evaluate_s2vs, similarities, all_db)
        return {"mAP": results["mAP"]}, {"uAP": results["uAP"]}, benchmark.last_report.problems()
    maps = _quietly(benchmark.evaluate, similarities, all_db)
    problems = benchmark.last_report.problems() if benchmark.last_report else []
    extra = {}
    if isinstance(benchmark, FIVR) and not benchmark.audio:
        s2vs = _quietly(benchmark.evaluate_s2vs, similarities, all_db)
        for suffix in ("", "_h"):
            if suffix:
                extra.update((f"mAP_{task}{suffix}", s2vs[task + suffix]) for task in benchmark.TASKS
                             if task + suffix in s2vs)
            extra.update((f"uAP_{task}{suffix}", s2vs[task + suffix]) for task in benchmark.DETECTION_TASKS
                         if task + suffix in s2vs)
        problems += [f"S2VS protocol: {line}" for line in benchmark.last_report.notes if line not in problems]
    return maps, extra, problems
