"""The accuracy-vs-cost sweep: mAP of every method from an EvaluationRun's rows, the printed table,
and the files `sweep.csv` / `sweep.json`.

Where a benchmark has S2VS's protocol (FIVR, VCDB), each row also carries its extra columns
(`benchmarks.evaluate_with_s2vs`: micro-AP, and FIVR's results without the easy duplicates) under
``"s2vs"``: printed as a second table, appended to the CSV columns; the official mAP columns are
unchanged.

Methods (rows): the teacher (if given), each fine student, the coarse student, and DnS with each
fine student at every budget. Costs follow the official accounting (dns_spec section 10):
time per query = similarity time only (indexing excluded), DnS at budget p = p * t_fine + t_coarse
+ t_selector; storage per video = fine representation (float32, or 1 bit per FG-Bin code element)
+ coarse vector (4 B per dimension) + selector self-similarity (4 B).
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, List, Sequence

import numpy as np

from dns_jax.evaluation.benchmarks import benchmark_title, evaluate_with_s2vs
from dns_jax.fileio import atomic_write_text
from dns_jax.retrieval import rerank

SWEEP_FORMAT = "dns_jax.evaluation/sweep/1"


def _matrix(rows: Dict[str, dict], queries: List[str], key: str, columns: np.ndarray) -> np.ndarray:
    """(Q, N_benchmark) float64 of `key`, aligned with the benchmark database; 0 where a video is
    missing (as the official arrays, initialised with zeros)."""
    out = np.zeros((len(queries), columns.shape[0]), np.float64)
    ok = columns >= 0
    for i, q in enumerate(queries):
        out[i, ok] = rows[q][key][columns[ok]]
    return out


def _seconds(rows: Dict[str, dict], key: str) -> float:
    return float(np.mean([r["seconds/" + key] for r in rows.values()])) if rows else float("nan")


def evaluate_methods(run, rows: Dict[str, dict], budgets: Sequence[float]) -> dict:
    """Results of every method (see the module docstring) as a JSON-ready dict."""
    bench = run.benchmark
    queries = [q for q in run.queries if q in rows]
    database = bench.get_database()
    pos = {v: i for i, v in enumerate(run.database)}
    columns = np.array([pos.get(v, -1) for v in database], np.int64)
    mask = columns >= 0
    all_db = set(run.queries) | set(run.database)
    storage = run.storage()
    results = {"format": SWEEP_FORMAT, "benchmark": benchmark_title(bench),
               "queries": {"total": len(bench.get_queries()), "evaluated": len(queries)},
               "database": {"total": len(set(database)), "available": len(run.database)},
               "notes": run.availability_notes(), "rows": []}

    def add(method, kind, sims, seconds, nbytes, representation=None, budget=None):
        maps, extra, problems = evaluate_with_s2vs(bench, {q: sims[i] for i, q in enumerate(queries)}, all_db)
        row = {"method": method, "kind": kind, "representation": representation,
               "budget": budget, "mAP": maps, "seconds_per_query": seconds, "bytes_per_video": nbytes}
        if extra:
            row["s2vs"] = extra
        results["rows"].append(row)
        if "problems" not in results:
            results["problems"] = problems

    if not queries:
        results["problems"] = ["no query has similarities: nothing to evaluate"]
        return results
    if run.nets.teacher is not None:
        add(f"teacher ({run.nets.teacher_name})", "teacher", _matrix(rows, queries, "teacher", columns),
            _seconds(rows, "teacher"), storage["teacher"])
    coarse = _matrix(rows, queries, "coarse", columns)
    fine = {}
    for r in run.nets.representations:
        fine[r.label] = _matrix(rows, queries, "fine/" + r.label, columns)
        add(f"fine student ({r.label})", "fine", fine[r.label] / 2.0 + 0.5, _seconds(rows, "fine/" + r.label),
            storage["fine/" + r.label], representation=r.label)
    t_coarse = _seconds(rows, "coarse")
    add("coarse student", "coarse", coarse, t_coarse, storage["coarse"])
    for r in run.nets.representations:
        sel = _matrix(rows, queries, "selector/" + r.label, columns)
        t_fine, t_sel = _seconds(rows, "fine/" + r.label), _seconds(rows, "selector/" + r.label)
        nbytes = storage["fine/" + r.label] + storage["coarse"] + storage["selector"]
        for p in budgets:
            mixed = rerank(coarse, fine[r.label], sel, p, mask=mask)
            add(f"DnS ({r.label}) {p:.0%}", "dns", mixed, p * t_fine + t_coarse + t_sel, nbytes,
                representation=r.label, budget=float(p))
    return results


def tasks(results: dict) -> List[str]:
    return list(results["rows"][0]["mAP"]) if results["rows"] else []


def s2vs_columns(results: dict) -> List[str]:
    """Names of the S2VS-protocol columns of the rows (e.g. uAP_DSVD, mAP_DSVR_h); [] if none."""
    return list(results["rows"][0].get("s2vs", {})) if results["rows"] else []


def format_table(results: dict) -> str:
    """The printed table: one row per method, mAP per task, time per query, storage per video."""
    head = (f"{results['benchmark']}: {results['queries']['evaluated']}/{results['queries']['total']} queries "
            f"evaluated, {results['database']['available']}/{results['database']['total']} database videos")
    lines = [head] + [f"  - {n}" for n in results.get("notes", []) + results.get("problems", [])]
    names = tasks(results)
    width = max([len(r["method"]) for r in results["rows"]] + [6])
    lines.append(f"{'method':<{width}}  " + "  ".join(f"{t:>10}" for t in names) +
                 f"  {'s / query':>10}  {'KB / video':>11}")
    lines.append("-" * len(lines[-1]))
    for r in results["rows"]:
        vals = "  ".join(f"{r['mAP'][t]:>10.4f}" for t in names)
        lines.append(f"{r['method']:<{width}}  {vals}  {r['seconds_per_query']:>10.4g}  "
                     f"{r['bytes_per_video'] / 1024:>11.4g}")
    extra = s2vs_columns(results)
    if extra:
        lines.append("")
        legend = "S2VS protocol: uAP = micro-AP over all (query, video) pairs"
        if any(c.endswith("_h") for c in extra):
            legend += "; _h = without FIVR's easy duplicates"
        lines.append(legend)
        lines.append(f"{'method':<{width}}  " + "  ".join(f"{c:>10}" for c in extra))
        lines.append("-" * len(lines[-1]))
        for r in results["rows"]:
            lines.append(f"{r['method']:<{width}}  " + "  ".join(f"{r['s2vs'][c]:>10.4f}" for c in extra))
    return "\n".join(lines)


def write_sweep(results: dict, output_dir: str) -> Dict[str, str]:
    """sweep.json (everything) and sweep.csv (one line per method); returns their paths."""
    paths = {"json": os.path.join(output_dir, "sweep.json"), "csv": os.path.join(output_dir, "sweep.csv")}
    atomic_write_text(paths["json"], json.dumps(results, indent=1))
    buf = io.StringIO()
    w = csv.writer(buf)
    names, extra = tasks(results), s2vs_columns(results)
    w.writerow(["method", "kind", "representation", "budget"] + [f"mAP_{t}" for t in names] +
               ["seconds_per_query", "bytes_per_video"] + extra)
    for r in results["rows"]:
        w.writerow([r["method"], r["kind"], r["representation"] or "",
                    "" if r["budget"] is None else f"{r['budget']:.2f}"] +
                   [f"{r['mAP'][t]:.6f}" for t in names] +
                   [f"{r['seconds_per_query']:.6g}", f"{r['bytes_per_video']:.1f}"] +
                   [f"{r['s2vs'][c]:.6f}" for c in extra])
    atomic_write_text(paths["csv"], buf.getvalue())
    return paths
