"""Benchmark evaluation of DnS networks as `evaluation_dns.py` does it, resumable.

    bench = load_benchmark('fivr5k')
    nets = load_networks(fine=['dns_fg_att_student.pth'], coarse='dns_cg_student.pth',
                         selector=['dns_selector_cg-fg_att.pth'], teacher=None)
    run = EvaluationRun(bench, open_features('fivr5k.hdf5'), nets, 'eval/fivr5k')
    run.compute()            # similarity rows, one file per query (a rerun skips done queries)
    results = run.evaluate() # mAP per task of every method, DnS at every budget (sweep.py)

Official protocol (dns_spec section 10): queries and database videos missing from the features (or
unusable) are dropped: a missing query is left out of the mAP, a missing database video out of the
ranking and of the relevant sets (the evaluators' `all_db` = available queries and videos); the
similarity arrays are aligned with the benchmark's database (zeros where a video is missing). Fine
similarities are mapped to s/2 + 0.5, coarse ones stay raw cosines; at budget p the first
int(p * N_available) videos by selector score take the fine similarity (`retrieval.rerank`).

Files in the output dir: `run.json` (what was run; a rerun with other networks, features or benchmark
is refused), `videos.npz` (coarse vectors and selector self-similarities of every available video,
computed once), `rows/<sha1 of query id>.npz` (per query: fine / teacher similarities, coarse
similarities, selector scores, timings; each written atomically).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from dns_jax import pretrained
from dns_jax.datasets.stores import open_features
from dns_jax.evaluation._data import read_json_file
from dns_jax.evaluation.benchmarks import CC_WEB_VIDEO, EVVE, FIVR, SVD, VCDB, benchmark_title
from dns_jax.evaluation.plots import plot_sweep
from dns_jax.evaluation.sweep import evaluate_methods, format_table, write_sweep
from dns_jax.fileio import atomic_savez, atomic_write_json
from dns_jax.index.store import describe_network
from dns_jax.models import registry
from dns_jax.retrieval import (
    coarse_index,
    coarse_scores,
    scorer_for,
    selector_scores,
    self_similarities,
    top_pairs,
    vector_blocks,
)
from dns_jax.validation import FeatureError, check_video

BENCHMARKS = ("fivr5k", "fivr200k", "cc_web_video", "evve", "svd", "vcdb", "vcdb_dist")
BUDGETS = tuple(float(np.round(i * 0.05, 2)) for i in range(21))   # the official `--percentage all`
RUN_FORMAT = "dns_jax.evaluation/run/1"
FINE_NETWORKS = registry.names("fine")


# ------------------------------------------------------------------------------------------------
# benchmarks

class AnnotatedBenchmark(FIVR):
    """A FIVR-style benchmark read from a user's annotation file (JSON, optionally gzipped):

        {"format": "dns_jax.evaluation/fivr/1", "name": "my benchmark",
         "queries": [ids], "database": [ids],
         "annotation": {query: {"ND": [ids], "DS": [...], "CS": [...], "IS": [...]}}}

    Tasks and labels as FIVR: DSVR = ND + DS, CSVR = + CS, ISVR = + IS (labels may be left out).
    The packaged FIVR file layout (queries/database under a subset key such as "5k") also works
    when it has one subset.
    """

    def __init__(self, path: str):
        doc = _read_json(path)
        fmt = doc.get("format", "")
        if not str(fmt).startswith("dns_jax.evaluation/fivr/"):
            raise ValueError(f"{path}: benchmark files use the FIVR annotation format "
                             f"('format': 'dns_jax.evaluation/fivr/1'); got format {fmt!r}")
        part = doc
        if "queries" not in doc:
            subsets = [k for k, v in doc.items() if isinstance(v, dict) and "queries" in v]
            if len(subsets) != 1:
                raise ValueError(f"{path}: expected top-level 'queries' and 'database' lists")
            part = doc[subsets[0]]
        missing = [k for k in ("queries", "database") if k not in part] + \
                  (["annotation"] if "annotation" not in doc else [])
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        self.version = "custom"
        self.audio = False
        self.name = str(doc.get("name", os.path.basename(path)))
        self.annotation = {str(q): {label: [str(v) for v in ids] for label, ids in labels.items()}
                           for q, labels in doc["annotation"].items()}
        self.queries = sorted(map(str, part["queries"]))
        self.database = sorted(map(str, part["database"]))
        self._query_set = set(self.queries)
        self._database_set = set(self.database)
        self.last_report = None

    @property
    def benchmark(self):
        return self.name

    # S2VS's protocol on a user's benchmark: its own labels, and no easy-duplicate list
    easy_duplicates = None

    def s2vs_annotation(self):
        return {q: {label: set(ids) for label, ids in gt.items()} for q, gt in self.annotation.items()}


def _read_json(path: str) -> dict:
    try:
        return read_json_file(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read benchmark file {path!r}: {e}") from e


def load_benchmark(spec: str, svd_unlabeled: Optional[str] = None, vcdb_annotation: Optional[str] = None):
    """An evaluator for a benchmark name (BENCHMARKS) or a FIVR-format annotation file. VCDB
    ('vcdb': the 528 core videos; 'vcdb_dist': with the distractors) needs `vcdb_annotation`
    (see `dns_jax.evaluation.VCDB`)."""
    name = str(spec).lower().replace("-", "").replace("_", "")
    if name in ("vcdb", "vcdbdist"):
        return VCDB(annotation=vcdb_annotation, distractors=name == "vcdbdist")
    if name == "fivr5k":
        return FIVR(version="5k")
    if name == "fivr200k":
        return FIVR(version="200k")
    if name == "ccwebvideo":
        return CC_WEB_VIDEO()
    if name == "evve":
        return EVVE()
    if name == "svd":
        if svd_unlabeled:
            return SVD(version="unlabeled", unlabeled_ids=svd_unlabeled)
        return SVD(version="labeled")
    if os.path.isfile(spec):
        return AnnotatedBenchmark(spec)
    raise ValueError(f"unknown benchmark {spec!r}: expected one of {', '.join(BENCHMARKS)} or a "
                     "FIVR-format annotation file (.json / .json.gz)")


# ------------------------------------------------------------------------------------------------
# networks

@dataclasses.dataclass
class Representation:
    """A fine student with its selector: one DnS configuration (label e.g. 'FG-Att')."""

    label: str
    fine: object
    selector: object


@dataclasses.dataclass
class Networks:
    coarse: object
    representations: List[Representation]
    teacher: Optional[object] = None
    teacher_name: Optional[str] = None


def network_name(spec: str, allowed: Sequence[str], role: str):
    """(name, path) of a network spec (see `registry.resolve_spec`), for the `--{role}` flag."""
    return registry.resolve_spec(spec, allowed, role=f"--{role}")


def load_networks(fine: Sequence[str], coarse: str, selector: Sequence[str],
                  teacher: Optional[str] = None) -> Networks:
    """Load the networks (official .pth, orbax checkpoint dir or training workdir). `fine` and
    `selector` are paired: one selector per fine student (e.g. FG-Att and FG-Bin)."""
    if len(fine) != len(selector) or not fine:
        raise ValueError(f"give one --selector per --fine student (got {len(fine)} fine, {len(selector)} selector)")
    reps, seen = [], {}
    for f_spec, s_spec in zip(fine, selector):
        f_name, f_path = network_name(f_spec, FINE_NETWORKS, "fine")
        s_name, s_path = network_name(s_spec, ("selector",), "selector")
        label = registry.get(f_name).label
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        reps.append(Representation(label, pretrained.load(f_name, f_path), pretrained.load(s_name, s_path)))
    c_name, c_path = network_name(coarse, ("cg_student",), "coarse")
    nets = Networks(coarse=pretrained.load(c_name, c_path), representations=reps)
    if teacher:
        nets.teacher_name, nets.teacher = pretrained.load_teacher(teacher, dims=reps[0].fine.dims)
    return nets


def _describe(nets: Networks) -> dict:
    out = {"coarse": describe_network(nets.coarse),
           "representations": [{"label": r.label, "fine": describe_network(r.fine),
                                "selector": describe_network(r.selector)} for r in nets.representations]}
    if nets.teacher is not None:
        out["teacher"] = describe_network(nets.teacher)
    return out


# ------------------------------------------------------------------------------------------------
# files

def row_path(output_dir: str, query: str) -> str:
    return os.path.join(output_dir, "rows", hashlib.sha1(query.encode("utf-8")).hexdigest() + ".npz")


def _stored_bytes(length: int, regions: int, elements: int, bits_per_element: float) -> float:
    """Bytes of one indexed video (official accounting): videos under 4 frames are repeated first."""
    t = length
    while t < 4:
        t *= 2
    return t * regions * elements * bits_per_element / 8


def fine_bits(model):
    """(elements per region, bits per element) of a fine network's stored representation:
    FG-Bin codes count 1 bit per element (the official 1/8 byte), the others float32."""
    module = model.module
    if getattr(module, "indexing", None) == "bin":
        return (module.bits or module.dims), 1
    return module.dims, 32


# ------------------------------------------------------------------------------------------------
# the run

class EvaluationRun:
    """Similarities of every available query to every available database video, per method, with
    resumable per-query rows in `output_dir` (see the module docstring)."""

    def __init__(self, benchmark, store, networks: Networks, output_dir: str, query_batch: int = 0,
                 db_chunk: int = 256, progress: bool = True, log: Callable[[str], None] = print,
                 overwrite: bool = False, teacher_store=None):
        self.benchmark, self.store, self.nets = benchmark, store, networks
        self.teacher_store = teacher_store if teacher_store is not None else store
        self.output_dir = output_dir
        self.query_batch, self.db_chunk = int(query_batch), max(1, int(db_chunk))
        self.progress, self.log = progress, log
        self.dims = networks.coarse.dims
        self.queries = [q for q in benchmark.get_queries() if q in store]
        self.missing_queries = [q for q in benchmark.get_queries() if q not in store]
        database = benchmark.get_database()
        self.database = list(dict.fromkeys(v for v in database if v in store))
        self.missing_database = sorted({v for v in database if v not in store})
        os.makedirs(os.path.join(output_dir, "rows"), exist_ok=True)
        self._check_run_file(overwrite)
        self._check_teacher_features(dims_only=True)
        self.bad: Dict[str, str] = {}
        self.videos = self._video_cache()
        self._check_teacher_features()
        self._db_coarse = None

    # -- bookkeeping ------------------------------------------------------------------------
    def _check_run_file(self, overwrite: bool):
        h = hashlib.sha1("\n".join(self.benchmark.get_queries() + ["--"] + self.benchmark.get_database())
                         .encode("utf-8")).hexdigest()
        want = {"format": RUN_FORMAT, "benchmark": benchmark_title(self.benchmark), "annotation_sha1": h,
                "features": os.path.abspath(self.store.source),
                "available": {"queries": len(self.queries), "database": len(self.database)},
                "networks": _describe(self.nets)}
        if self.nets.teacher is not None:
            want["teacher_features"] = os.path.abspath(self.teacher_store.source)
        path = os.path.join(self.output_dir, "run.json")
        if os.path.exists(path) and not overwrite:
            with open(path) as f:
                have = json.load(f)
            diff = [k for k in want if have.get(k) != want[k]]
            if diff:
                raise ValueError(f"{self.output_dir} holds results of another run ({', '.join(diff)} "
                                 "differ); use another --output-dir, or --overwrite to discard them")
            return
        if overwrite:
            for name in os.listdir(os.path.join(self.output_dir, "rows")):
                os.remove(os.path.join(self.output_dir, "rows", name))
            if os.path.exists(os.path.join(self.output_dir, "videos.npz")):
                os.remove(os.path.join(self.output_dir, "videos.npz"))
        atomic_write_json(path, want, indent=1)

    def _check_teacher_features(self, dims_only: bool = False):
        teacher = self.nets.teacher
        if teacher is None:
            return
        if self.teacher_store is self.store and teacher.dims != self.dims:
            raise FeatureError(f"the teacher {self.nets.teacher_name!r} takes {teacher.dims}-d features and "
                               f"{self.store.source} holds {self.dims}-d ones; give the teacher's own "
                               "features (--teacher_features)")
        if dims_only:
            return
        missing = [v for v in self.queries + self.database if v not in self.teacher_store]
        if missing:
            raise FeatureError(f"{self.teacher_store.source}: {len(missing)} videos the students see are missing "
                               f"from the teacher's features, e.g. {missing[:3]}")

    def _read(self, video_id: str, store=None, dims=None) -> np.ndarray:
        store = self.store if store is None else store
        try:
            return check_video(store[video_id], dims or self.dims, video_id)
        except FeatureError:
            raise
        except Exception as e:  # unreadable record or dataset
            raise FeatureError(f"{video_id}: unreadable ({type(e).__name__}: {e})") from None

    def _video_cache(self) -> dict:
        """Coarse vectors, selector self-similarities and lengths of every usable video (computed
        once, saved as videos.npz); unusable videos are reported and dropped."""
        from tqdm import tqdm
        path = os.path.join(self.output_dir, "videos.npz")
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as z:
                cache = {k: z[k] for k in z.files}
            self.bad = json.loads(str(cache.pop("bad_json")))
        else:
            ids = list(dict.fromkeys(self.queries + self.database))
            good, lengths, regions, coarse = [], [], [], []
            selfsim = {r.label: [] for r in self.nets.representations}
            bar = tqdm(total=len(ids), desc="indexing videos (coarse, selector)", unit="video",
                       disable=not self.progress)
            for s in range(0, len(ids), self.db_chunk):
                vids, arrs = [], []
                for v in ids[s:s + self.db_chunk]:
                    try:
                        arrs.append(self._read(v))
                        vids.append(v)
                    except FeatureError as e:
                        self.bad[v] = str(e)
                        self.log(f"[WARNING] skipped video {v!r}: {e}")
                bar.update(len(ids[s:s + self.db_chunk]))
                if not vids:
                    continue
                good += vids
                lengths += [a.shape[0] for a in arrs]
                regions += [a.shape[1] for a in arrs]
                coarse.append(coarse_index(self.nets.coarse, arrs))
                for r in self.nets.representations:
                    selfsim[r.label].append(self_similarities(r.selector, arrs))
            bar.close()
            cache = {"ids": np.array(good, dtype=str), "lengths": np.array(lengths, np.int64),
                     "regions": np.array(regions, np.int64),
                     "coarse": np.concatenate(coarse) if coarse else np.zeros((0, 1), np.float32)}
            for r in self.nets.representations:
                cache["selfsim/" + r.label] = (np.concatenate(selfsim[r.label]) if selfsim[r.label]
                                               else np.zeros(0, np.float32))
            atomic_savez(path, bad_json=json.dumps(self.bad), **cache)
        ok = set(cache["ids"].tolist())
        self.queries = [q for q in self.queries if q in ok]
        self.database = [v for v in self.database if v in ok]
        cache["position"] = {v: i for i, v in enumerate(cache["ids"].tolist())}
        return cache

    def _take(self, key: str, ids: Sequence[str]) -> np.ndarray:
        pos = self.videos["position"]
        return self.videos[key][[pos[v] for v in ids]]

    # -- similarities -----------------------------------------------------------------------
    def done(self) -> List[str]:
        return [q for q in self.queries if os.path.exists(row_path(self.output_dir, q))]

    def compute(self) -> int:
        """Compute and save the rows of the queries not done yet; returns how many were computed."""
        done = set(self.done())
        pending = [q for q in self.queries if q not in done]
        if done:
            self.log(f"{len(done)} of {len(self.queries)} queries already done in {self.output_dir}; "
                     f"computing the other {len(pending)}")
        if not pending or not self.database:
            return 0
        group = self.query_batch if self.query_batch > 0 else len(pending)
        for s in range(0, len(pending), group):
            self._compute_group(pending[s:s + group], s, len(pending))
        return len(pending)

    def _scorers(self):
        """(row key, FineScorer, feature store, feature dims) of the fine students and the teacher."""
        out = [("fine/" + r.label, scorer_for(r.fine), self.store, self.dims) for r in self.nets.representations]
        teacher = self.nets.teacher
        if teacher is not None:
            if "params" not in teacher.variables:   # weightless ViSiL_f: an empty parameter tree
                teacher = copy.copy(teacher)
                teacher.variables = {**teacher.variables, "params": {}}
                teacher._jitted = {}
            out.append(("teacher", scorer_for(teacher), self.teacher_store, teacher.dims))
        return out

    def _compute_group(self, queries: List[str], offset: int, total: int):
        """Fine (and teacher) similarities of `queries` to the whole database, streamed in chunks
        of database videos as the official script does; then coarse and selector rows."""
        from tqdm import tqdm
        scorers = self._scorers()
        q_reps = {key: sc.index([self._read(q, store, dims) for q in queries]) for key, sc, store, dims in scorers}
        sims = {key: np.zeros((len(queries), len(self.database)), np.float32) for key, *_ in scorers}
        seconds = {key: 0.0 for key, *_ in scorers}
        desc = f"queries {offset + 1}-{offset + len(queries)} of {total}"
        with tqdm(total=len(self.database), desc=desc, unit="video", disable=not self.progress) as bar:
            for s in range(0, len(self.database), self.db_chunk):
                ids = self.database[s:s + self.db_chunk]
                vids = {self.store: [self._read(v) for v in ids]}
                for key, sc, store, dims in scorers:
                    if store not in vids:
                        vids[store] = [self._read(v, store, dims) for v in ids]
                    reps = sc.index(vids[store])
                    t0 = time.perf_counter()
                    sims[key][:, s:s + len(ids)] = sc.similarities(q_reps[key], reps)
                    seconds[key] += time.perf_counter() - t0
                bar.update(len(ids))
        if self._db_coarse is None:
            self._db_coarse = np.ascontiguousarray(self._take("coarse", self.database))
        t0 = time.perf_counter()
        coarse = coarse_scores(self._take("coarse", queries), self._db_coarse, vector_blocks(self.nets.coarse),
                               top=top_pairs(self.nets.coarse))
        seconds["coarse"] = time.perf_counter() - t0
        for r in self.nets.representations:
            t0 = time.perf_counter()
            sims["selector/" + r.label] = selector_scores(
                r.selector, self._take("selfsim/" + r.label, queries),
                self._take("selfsim/" + r.label, self.database), coarse)
            seconds["selector/" + r.label] = time.perf_counter() - t0
        sims["coarse"] = coarse.astype(np.float32)
        for i, q in enumerate(queries):
            arrays = {key: val[i] for key, val in sims.items()}
            arrays.update({"seconds/" + key: np.float64(val / len(queries)) for key, val in seconds.items()})
            atomic_savez(row_path(self.output_dir, q), query=np.array(q), **arrays)

    # -- results ----------------------------------------------------------------------------
    def load_rows(self) -> Dict[str, Dict[str, np.ndarray]]:
        """{query: {key: array aligned with self.database, 'seconds/key': float}} of done queries."""
        rows = {}
        for q in self.done():
            with np.load(row_path(self.output_dir, q), allow_pickle=False) as z:
                if str(z["query"]) != q:
                    raise ValueError(f"{row_path(self.output_dir, q)} holds query {str(z['query'])!r}, not {q!r}")
                rows[q] = {k: z[k] for k in z.files if k != "query"}
            if rows[q]["coarse"].shape != (len(self.database),):
                raise ValueError(f"{row_path(self.output_dir, q)} has {rows[q]['coarse'].shape[0]} database "
                                 f"entries, this run {len(self.database)}; rerun with --overwrite")
        return rows

    def storage(self) -> Dict[str, float]:
        """Bytes per available database video of each representation (official accounting)."""
        lengths, regions = self._take("lengths", self.database), self._take("regions", self.database)
        n = max(len(self.database), 1)

        def per_video(elements, bits):
            return float(sum(_stored_bytes(t, r, elements, bits) for t, r in zip(lengths, regions)) / n)
        out = {"coarse": float(self.videos["coarse"].shape[1] * 4), "selector": 4.0}
        for r in self.nets.representations:
            out["fine/" + r.label] = per_video(*fine_bits(r.fine))
        if self.nets.teacher is not None:
            out["teacher"] = per_video(self.nets.teacher.dims, 32)
        return out

    def availability_notes(self) -> List[str]:
        """What was missing from the features and how it was counted (official handling)."""
        notes = []
        n_q, n_db = len(self.benchmark.get_queries()), len(set(self.benchmark.get_database()))
        bad_q = [q for q in self.benchmark.get_queries() if q in self.bad]
        bad_db = sorted({v for v in self.benchmark.get_database() if v in self.bad})
        if self.missing_queries or bad_q:
            notes.append(f"{len(self.missing_queries)} of {n_q} queries are missing from the features"
                         + (f" and {len(bad_q)} are unusable" if bad_q else "")
                         + ": left out of the mAP, as the official code does (e.g. "
                         + ", ".join(repr(q) for q in (self.missing_queries + bad_q)[:3]) + ")")
        if self.missing_database or bad_db:
            notes.append(f"{len(self.missing_database)} of {n_db} database videos are missing from the features"
                         + (f" and {len(bad_db)} are unusable" if bad_db else "")
                         + ": left out of the rankings and of the relevant sets (all_db), as the official "
                         "code does (e.g. " + ", ".join(repr(v) for v in (self.missing_database + bad_db)[:3]) + ")")
        return notes

    def evaluate(self, budgets: Sequence[float] = BUDGETS) -> dict:
        """mAPs of every method from the saved rows (see sweep.evaluate_methods)."""
        return evaluate_methods(self, self.load_rows(), budgets)


def run_evaluation(benchmark: str, features: str, fine: Sequence[str], coarse: str, selector: Sequence[str],
                   output_dir: str, teacher: Optional[str] = None, teacher_features: Optional[str] = None,
                   budgets: Sequence[float] = BUDGETS,
                   svd_unlabeled: Optional[str] = None, query_batch: int = 0, db_chunk: int = 256,
                   plots: bool = True, overwrite: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print, vcdb_annotation: Optional[str] = None) -> dict:
    """Everything evaluate.py does: load, compute (resumable), evaluate, print the table, write
    sweep.csv / sweep.json (and the plots). Returns the results dict with 'files' added."""
    bench = load_benchmark(benchmark, svd_unlabeled, vcdb_annotation)
    nets = load_networks(fine, coarse, selector, teacher)
    store = open_features(features)
    os.makedirs(output_dir, exist_ok=True)
    teacher_store = open_features(teacher_features) if teacher and teacher_features else None
    run = EvaluationRun(bench, store, nets, output_dir, query_batch=query_batch, db_chunk=db_chunk,
                        progress=progress, log=log, overwrite=overwrite, teacher_store=teacher_store)
    for note in run.availability_notes():
        log(f"[WARNING] {note}")
    if not run.queries or not run.database:
        raise FeatureError(f"{features}: {len(run.queries)} queries and {len(run.database)} database videos "
                           f"of {benchmark_title(bench)} are available; nothing to evaluate")
    run.compute()
    results = run.evaluate(budgets)
    log(format_table(results))
    files = write_sweep(results, output_dir)
    if plots:
        for path in plot_sweep(results, output_dir):
            files[os.path.splitext(os.path.basename(path))[0]] = path
    log("wrote " + ", ".join(files.values()))
    results["files"] = files
    return results
