"""Retrieval speed, storage and memory of dns_jax.retrieval on this machine, side by side with the
official PyTorch code.

    python benchmarks/bench_retrieval.py [--quick] [--torch-python TORCH_VENV/bin/python --official-repo CHECKOUT] [--torch-device cuda]
        [--cg-sizes 100000,1000000] [--dns-db 1000]

Random weights and random L2-normalised region features (speed does not depend on their values).
The official code (model/ of mever-team/distill-and-select, read from --official-repo, a checkout
or a bare git directory (its HEAD), into a temporary directory, never copied here) runs in a worker
process under --torch-python (default $DNS_JAX_TORCH_PYTHON; it needs torch and einops) with
--threads threads on --torch-device (cpu for the issue's aims; cuda to compare on a GPU, where ours
runs on JAX's default device); without such an interpreter its columns are skipped with a message.
Prints:

* the machine's float32 matmul rate (2048^3 jnp.dot), re-measured in the same interleaved rounds
  as every kernel timing, so each kernel's achieved GFLOP/s is a fraction of the rate measured
  beside it (the machine may be shared and noisy: ratios measured side by side are what to compare);
* FG-Att and FG-Bin: ms per target for a 60-frame query against 1,000 targets of 30-120 frames
  (the setting of the issue's aims) and of 30-300 frames, ours (prepared device-resident database)
  versus the official PyTorch student one unpadded target at a time as evaluation_student.py runs
  it (compile excluded); GFLOP/s count the useful FLOPs of the unpadded official computation
  (region products 2*Tq*R*R*Tt*D plus the comparator convolutions; FG-Bin counts the FLOPs of its
  float +-1 equivalent);
* CG: ms per query over 1e5 and 1e6 1024-d vectors (float32 and float16 storage, one query and
  batches of 64) versus the official torch.mm;
* re-ranking: one query's 200 selected targets scored from a prepared database, from arrays laid
  out on the host per call, and from a resident database's subset laid out on the device;
* DnS: time per query at budgets 0.05 / 0.1 / 0.2 on a database of --dns-db videos of 30-300
  frames (coarse for all + selector for all + fine for the budget), with the official accounting,
  the fine stage from the resident database and, beside it, with the host layout of before;
* bytes stored per video for each representation;
* peak memory of one 1800-frame query against one 1800-frame target: canvas kernel versus the
  official path (which holds the [Tq, R, R, Tt] tensor);
* one summary table of all of these.
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dns_jax import pretrained, retrieval  # noqa: E402
from dns_jax.retrieval import kernels  # noqa: E402
from dns_jax.retrieval.fine import FineScorer, PreparedDatabase  # noqa: E402

R, D = 9, 512


def videos(rng, lengths):
    out = []
    for t in lengths:
        x = rng.standard_normal((int(t), R, D)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=-1, keepdims=True))
    return out


def best_time(fn, reps=3):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


_MM = {}


def matmul_rate() -> float:
    """GFLOP/s of a 2048^3 float32 matmul on the default device (best of 3)."""
    if "fn" not in _MM:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048)), jnp.float32)
        _MM["a"] = a
        _MM["fn"] = jax.jit(lambda x: jnp.dot(x, x, precision="highest"))
        _MM["fn"](a).block_until_ready()
    dt = best_time(lambda: _MM["fn"](_MM["a"]).block_until_ready(), 3)
    return 2 * 2048 ** 3 / dt / 1e9


def pair_flops(tq, tt):
    f2f = 2 * tq * R * R * tt * D
    h1, w1 = tq, tt
    h2, w2 = tq // 2, tt // 2
    h3, w3 = h2 // 2, w2 // 2
    cnn = h1 * w1 * 9 * 32 * 2 + h2 * w2 * 9 * 32 * 64 * 2 + h3 * w3 * 9 * 64 * 128 * 2 + h3 * w3 * 128 * 2
    return f2f + cnn


def interleaved_min(fns, rounds):
    """Run every callable once per round, round-robin, and keep each one's best time: on a shared,
    noisy machine the minima measured side by side are what can be compared."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


# ------------------------------------------------------------------------------------------------
# the official PyTorch code, run side by side in a worker process

_TORCH_WORKER = r"""
import json, sys, time
official, threads, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, official)
import numpy as np, torch
torch.set_num_threads(threads)
dev = torch.device(device)
def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()
import model.layers as layers
_init = layers.BinarizationLayer.__init__
def _random_init(self, dims, bits=None, sigma=1e-6, ITQ_init=True):   # no download: random W
    _init(self, dims, bits, sigma, ITQ_init=False)
layers.BinarizationLayer.__init__ = _random_init
from model.students import FineGrainedStudent
rng = np.random.default_rng(0)
state = {}
def feats(t):
    x = torch.from_numpy(rng.standard_normal((t, 9, 512)).astype(np.float32))
    return (x / x.norm(dim=-1, keepdim=True)).to(dev)
def reply(**kw):
    print(json.dumps(kw), flush=True)
reply(ready=torch.__version__, threads=torch.get_num_threads(),
      device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
for line in sys.stdin:
    c = json.loads(line)
    try:
        with torch.no_grad():
            if c["cmd"] == "setup_fg":
                torch.manual_seed(0)
                m = FineGrainedStudent(attention=c["kind"] == "att", binarization=c["kind"] == "bin").eval().to(dev)
                q = m.index_video(feats(c["query"]))
                ts = [m.index_video(feats(t)) for t in c["lengths"]]
                state[c["kind"]] = (m, q, ts)
                reply(ok=True)
            elif c["cmd"] == "run_fg":
                m, q, ts = state[c["kind"]]
                t0 = time.perf_counter()
                for t in ts:    # evaluation_student.calculate_similarities_to_queries, one target at a time
                    float(torch.mean(torch.cat([m.calculate_video_similarity(q, t)], 0)))
                reply(s=time.perf_counter() - t0)
            elif c["cmd"] == "setup_cg":
                state.pop("cg", None)
                db = torch.from_numpy(rng.standard_normal((c["n"], 1024), dtype=np.float32))
                state["cg"] = (torch.nn.functional.normalize(db, dim=1).to(dev), torch.randn(1, 1024).to(dev))
                reply(ok=True)
            elif c["cmd"] == "run_cg":
                db, q = state["cg"]
                t0 = time.perf_counter()
                torch.mm(q, db.t())           # CoarseGrainedStudent.calculate_video_similarity
                sync()
                reply(s=time.perf_counter() - t0)
            elif c["cmd"] == "free":
                state.clear()
                reply(ok=True)
    except Exception as e:   # reported to the benchmark, which prints it
        reply(error=f"{type(e).__name__}: {e}")
"""

OFFICIAL_FILES = ("model/__init__.py", "model/layers.py", "model/losses.py", "model/similarities.py",
                  "model/constraints.py", "model/students.py")


class OfficialTorch:
    """The official PyTorch student code (read from a git checkout of mever-team/distill-and-select
    into a temporary directory, never copied into this repository) run by `python` in a worker
    process with `threads` threads. `available` is False (and `reason` says why) when it cannot run."""

    def __init__(self, python, repo, threads=2, device="cpu"):
        import json
        import subprocess
        import tempfile
        self.proc, self.available, self.reason, self._json = None, False, "", json
        if not python:
            self.reason = "no PyTorch interpreter (pass --torch-python or set DNS_JAX_TORCH_PYTHON)"
            return
        if not repo:
            self.reason = ("no checkout of mever-team/distill-and-select (pass --official-repo or set "
                           "DNS_JAX_OFFICIAL_REPO)")
            return
        if not os.path.exists(python):
            self.reason = f"PyTorch interpreter {python} not found"
            return
        self.tmp = tempfile.TemporaryDirectory(prefix="dns_official_")
        try:
            for f in OFFICIAL_FILES:
                if os.path.isfile(os.path.join(repo, f)):          # a work tree or an exported copy
                    with open(os.path.join(repo, f), "rb") as fh:
                        text = fh.read()
                else:                                                # a bare git directory: its HEAD
                    text = subprocess.run(["git", "-C", repo, "show", f"HEAD:{f}"], capture_output=True,
                                          check=True).stdout
                os.makedirs(os.path.join(self.tmp.name, os.path.dirname(f)), exist_ok=True)
                with open(os.path.join(self.tmp.name, f), "wb") as fh:
                    fh.write(text)
        except (subprocess.CalledProcessError, OSError) as e:
            self.reason = f"cannot read the official code from {repo!r} ({e})"
            return
        self.proc = subprocess.Popen([python, "-c", _TORCH_WORKER, self.tmp.name, str(threads), device], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self._read()
        if "ready" not in first:
            err = first.get("error") or self.proc.stderr.read()[-600:]
            self.reason = f"the official code did not start under {python}: {err.strip()}"
            self.close()
            return
        self.available = True
        self.version = (f"torch {first['ready']}, {first['threads']} threads" if first["device"] == "cpu"
                        else f"torch {first['ready']} on {first['device']}")

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return {"error": "worker exited"}
            if line.startswith("{"):
                return self._json.loads(line)

    def call(self, **cmd):
        self.proc.stdin.write(self._json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"official PyTorch worker: {out['error']}")
        return out

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


# ------------------------------------------------------------------------------------------------
# fine-grained similarity

def fine_rows(rng, models, quick, official):
    """60-frame query against targets of 30-120 and 30-300 frames: ours (prepared database, one
    call per query) and the official PyTorch code one unpadded target at a time, interleaved."""
    rows = []
    queries = videos(rng, [60] * 8)
    q = queries[0]
    mm = jax.jit(lambda x: jnp.dot(x, x, precision="highest"))
    a = jnp.asarray(rng.standard_normal((2048, 2048)), jnp.float32)
    mm(a).block_until_ready()
    ranges = (("30-120", 30, 120),) if quick else (("30-120", 30, 120), ("30-300", 30, 300))
    for label, lo, hi in ranges:
        n = 200 if quick else 1000
        lengths = rng.integers(lo, hi + 1, n)
        flops = sum(pair_flops(60, t) for t in lengths)
        sample = lengths[:50 if quick else 150]                 # the official code's workload
        sample_flops = sum(pair_flops(60, t) for t in sample)
        fns = {"mm": lambda: mm(a).block_until_ready()}
        for name, model in models:
            sc = FineScorer(model)
            qrep, qreps = sc.index([q]), sc.index(queries)
            reps = sc.index(videos(rng, lengths))
            db, db4 = sc.prepare(reps), sc.prepare(reps[:n // 4])
            del reps
            sc.similarities(qrep, db)                          # compile
            sc.similarities(qreps, db4)
            fns[name] = lambda sc=sc, qrep=qrep, db=db: sc.similarities(qrep, db)
            fns[name + " x8"] = lambda sc=sc, qreps=qreps, db=db4: sc.similarities(qreps, db)
            kind = "att" if "Att" in name else "bin"
            if official.available:
                official.call(cmd="setup_fg", kind=kind, query=60, lengths=[int(t) for t in sample])
                official.call(cmd="run_fg", kind=kind)         # warm up
                fns[name + " official"] = lambda kind=kind: official.call(cmd="run_fg", kind=kind)
            # the same database scored by one call per canvas (~50 targets, ~0.2-1 s each), each
            # interleaved with the matmul: timings of the granularity of the matmul's, so that
            # the noise of a shared machine affects both alike
            fns[name + " parts"] = [functools.partial(sc.similarities, qrep, PreparedDatabase(db.n, db.counts, [c]))
                                    for c in db.canvases]
        parts = {k: fns.pop(k) for k in list(fns) if k.endswith(" parts")}
        best = interleaved_min(fns, 2 if quick else 5)
        if official.available:
            official.call(cmd="free")
        rate = 2 * 2048 ** 3 / best["mm"] / 1e9
        mean_t = float(np.mean(lengths))
        for name, _ in models:
            pbest = interleaved_min({"mm": fns["mm"], **{i: f for i, f in enumerate(parts[name + " parts"])}},
                                    2 if quick else 3)
            dtp = sum(v for k, v in pbest.items() if k != "mm")
            prate = 2 * 2048 ** 3 / pbest["mm"] / 1e9
            dt, dt8 = best[name], best[name + " x8"] / 8 * n / (n // 4)
            ref = best.get(name + " official")
            ref_dt = ref / sample_flops * flops if ref else float("nan")   # same work as the database
            rows.append(dict(name=name, label=label, mean=mean_t, ms=dt / n * 1000, pct=flops / dt / 1e9 / rate,
                             gflops=flops / dt / 1e9, ms8=dt8 / n * 1000, pct8=flops / dt8 / 1e9 / rate,
                             msp=dtp / n * 1000, pctp=flops / dtp / 1e9 / prate,
                             official_ms=ref_dt / n * 1000, official_pct=flops / ref_dt / 1e9 / rate, rate=rate))
    print("\n## Fine-grained similarity: a 60-frame query, ms per target")
    print(f"{'student / targets':36s} {'ours ms':>8s} {'GF/s':>6s} {'of mm':>6s} {'per-canvas':>10s} {'of mm':>6s} "
          f"{'8 queries':>9s} {'of mm':>6s} {'official':>8s} {'of mm':>6s} {'speed-up':>8s} {'mm GF/s':>8s}")
    for r in rows:
        print(f"{r['name'] + ' T=' + r['label'] + ' (mean %.0f)' % r['mean']:36s} {r['ms']:8.3f} {r['gflops']:6.1f} "
              f"{r['pct']:6.0%} {r['msp']:10.3f} {r['pctp']:6.0%} {r['ms8']:9.3f} {r['pct8']:6.0%} "
              f"{r['official_ms']:8.3f} {r['official_pct']:6.0%} {r['official_ms'] / r['ms']:7.1f}x {r['rate']:8.1f}")
    print("(ours: FineScorer.similarities on a prepared (device-resident) database, one query, one call for "
          "the whole database; 'per-canvas': the same work as one call per canvas of the prepared database "
          "(~50 targets), each timed between matmul timings; '8 queries': 8 queries in one call, per query. "
          "'of mm': useful FLOPs of the unpadded official "
          "computation (region products 2*Tq*R*R*Tt*D + comparator convolutions; FG-Bin counted as its "
          "float +-1 equivalent) per second / the 2048^3 float32 matmul rate measured in the same rounds "
          "(best of interleaved rounds). official: the official PyTorch FineGrainedStudent, "
          "calculate_video_similarity per unpadded target as evaluation_student.py runs it, on a sample "
          "of the database lengths scaled to the same work; " +
          (official.version if official.available else "not run: " + official.reason) + ")")
    return rows


def _mem_available_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None


def cg_rows(rng, sizes, official):
    """CG time per query over n videos (ours: float32 / float16 storage, 1 query or 64 per batch;
    official: one torch.mm of the query against the float32 database), interleaved rounds."""
    print("\n## Coarse-grained stage: time per query (1024-d vectors, all similarities; top-100 for ours)")
    print(f"{'videos':>9s} {'storage':>8s} {'queries/batch':>13s} {'sims ms/query':>13s} {'top-100 ms/query':>16s} "
          f"{'GB':>6s} {'official ms':>11s}")
    summary = {}
    for n in sizes:
        ref, ready = None, False
        if official.available:
            avail = _mem_available_gib()
            if avail is None or avail >= n * 1024 * 8 / 2**30 + 1:
                official.call(cmd="setup_cg", n=n)
                official.call(cmd="run_cg")
                ready = True
        for dtype in ("float32", "float16"):
            need = n * 1024 * (4 + 2 * np.dtype(dtype).itemsize) / 2**30 + 1
            avail = _mem_available_gib()
            if avail is not None and avail < need:
                print(f"{n:9d} {dtype:>8s}   (skipped: needs ~{need:.0f} GiB, {avail:.0f} GiB available)")
                continue
            try:
                db = rng.standard_normal((n, 1024), dtype=np.float32)
                db /= np.linalg.norm(db, axis=1, keepdims=True)
                cdb = retrieval.CoarseDatabase(db, dtype=dtype, chunk=32768)
                del db
                gc.collect()
            except MemoryError:
                print(f"{n:9d} {dtype:>8s}   (not enough memory)")
                continue
            for nq in (1, 64):
                q = rng.standard_normal((nq, 1024)).astype(np.float32)
                cdb.similarities(q, batch=nq)
                cdb.topk(q, 100, batch=nq)
                fns = {"sims": lambda: cdb.similarities(q, batch=nq), "topk": lambda: cdb.topk(q, 100, batch=nq)}
                if ready:
                    fns["official"] = lambda: official.call(cmd="run_cg")
                best = interleaved_min(fns, 5)
                ts, tk = best["sims"] / nq * 1e3, best["topk"] / nq * 1e3
                if "official" in best:
                    ref = best["official"] * 1e3 if ref is None else min(ref, best["official"] * 1e3)
                gb = n * 1024 * np.dtype(dtype).itemsize / 1e9
                print(f"{n:9d} {dtype:>8s} {nq:13d} {ts:13.2f} {tk:16.2f} {gb:6.2f} "
                      f"{best.get('official', float('nan')) * 1e3:11.2f}")
                summary[(n, dtype, nq)] = ts
            cdb = None
            gc.collect()
        summary[(n, "official")] = float("nan") if ref is None else ref
        if official.available:
            official.call(cmd="free")
    print("(official: torch.mm(query [1, 1024], database[N, 1024].T) in float32, what the official "
          "CoarseGrainedStudent.calculate_video_similarity computes; evaluation_dns.py itself calls it once per "
          "target in a Python loop, which is far slower. " +
          (official.version if official.available else "not run: " + official.reason) + ")")
    return summary


def region_rows(rng, sizes):
    """The build's CG student as region vectors (9 x 512-d per video, the best region pair; 27 x
    512-d over 3 temporal segments, configs/build.py coarse.segments, with the best pair or the
    mean of the 3 best, coarse.top_pairs; float16) against the one-vector student (1024-d), same
    database sizes, interleaved rounds."""
    print("\n## Coarse stage with region vectors (9 or 3 x 9 x 512-d, best vector pair) against one 1024-d vector, "
          "float16")
    print(f"{'videos':>9s} {'vectors':>16s} {'queries/batch':>13s} {'sims ms/query':>13s} {'top-100 ms/query':>16s} "
          f"{'GB':>6s}")
    for n in sizes:
        dbs = {}
        for name, blocks, dims, top in (("1 x 1024", 1, 1024, 1), ("9 x 512", 9, 512, 1), ("27 x 512", 27, 512, 1),
                                        ("27 x 512, top 3", 27, 512, 3)):
            if top > 1:             # the same vectors (no second copy), scored by the mean of the 3 best pairs
                dbs[name] = dbs["27 x 512"].with_top(top)
                continue
            v = rng.standard_normal((n, blocks, dims), dtype=np.float32)
            v /= np.linalg.norm(v, axis=-1, keepdims=True)
            dbs[name] = retrieval.CoarseDatabase(v.reshape(n, blocks * dims), dtype="float16", blocks=blocks)
            del v
            gc.collect()
        for nq in (1, 64):
            qs = {name: np.asarray(db.vectors[:nq], np.float32) for name, db in dbs.items()}
            fns = {}
            for name, db in dbs.items():
                q = qs[name]
                db.similarities(q, batch=nq)
                db.topk(q, 100, batch=nq)
                fns[name + " sims"] = functools.partial(db.similarities, q, batch=nq)
                fns[name + " topk"] = functools.partial(db.topk, q, 100, batch=nq)
            best = interleaved_min(fns, 3)
            for name, db in dbs.items():
                print(f"{n:9d} {name:>16s} {nq:13d} {best[name + ' sims'] / nq * 1e3:13.2f} "
                      f"{best[name + ' topk'] / nq * 1e3:16.2f} {n * db.dims * 2 / 1e9:6.2f}")
        dbs = None
        gc.collect()


def rerank_rows(rng, models, quick):
    """The re-ranking call of DnS: a 60-frame query against 200 targets of 30-120 frames (the
    issue's setting), per call: a prepared database (laid out once, the floor); the targets given
    as arrays (laid out on the host per call: what DnS.search did before); a subset of a resident
    database (laid out on the device per call: what DnS.search does now). Interleaved rounds."""
    print("\n## Re-ranking one query's subset: 60-frame query, 200 targets of 30-120 frames, s per call")
    print(f"{'student':16s} {'prepared':>9s} {'arrays':>9s} {'resident':>9s} {'arrays/prep':>11s} {'resident/prep':>13s}")
    out = {}
    lengths = rng.integers(30, 121, 200)
    for name, model in models:
        sc = FineScorer(model)
        pool = sc.index(videos(rng, list(lengths) + list(rng.integers(30, 121, 800))))   # a 1,000-video database
        q = sc.index(videos(rng, [60]))
        idx = np.arange(200)
        prepared = sc.prepare([pool[i] for i in idx])
        resident = sc.resident(pool)
        fns = {"prepared": lambda: sc.similarities(q, prepared),
               "arrays": lambda: sc.similarities(q, [pool[i] for i in idx]),
               "resident": lambda: sc.similarities(q, resident.subset(idx))}
        for fn in fns.values():
            fn()                                                     # compile
        np.testing.assert_array_equal(fns["resident"](), fns["prepared"]())
        best = interleaved_min(fns, 2 if quick else 5)
        out[name] = best
        print(f"{name:16s} {best['prepared']:9.3f} {best['arrays']:9.3f} {best['resident']:9.3f} "
              f"{best['arrays'] / best['prepared']:11.2f} {best['resident'] / best['prepared']:13.2f}")
    return out


def dns_rows(rng, fine_models, n_db, quick):
    cg = pretrained.init_network("cg_student", jax.random.PRNGKey(2))
    sel = pretrained.init_network("selector", jax.random.PRNGKey(3))
    lengths = rng.integers(30, 301, n_db)
    db_videos = videos(rng, lengths)
    q_videos = videos(rng, [60, 60] if quick else [60, 60, 60])
    print(f"\n## DnS: time per query, database of {n_db} videos of 30-300 frames (mean {lengths.mean():.0f}), "
          f"60-frame queries")
    out = {}
    print(f"{'fine student':16s} {'budget':>6s} {'fine pairs':>10s} {'total s':>8s} {'coarse s':>9s} "
          f"{'selector s':>10s} {'fine s':>8s} {'fine s, host layout':>19s}")
    for name, fg in fine_models:
        dns = retrieval.DnS(fg, cg, sel, resident=True)
        host = retrieval.DnS(fg, cg, sel, resident=False)      # the subset laid out on the host per query
        t = time.perf_counter()
        database = dns.index(db_videos)
        index_s = time.perf_counter() - t
        queries = dns.index(q_videos)
        for budget in (0.05, 0.1, 0.2):                          # compile the canvas sizes used
            dns.search(queries, database, budget=budget)
            host.search(queries, database, budget=budget)
        for budget in (0.05, 0.1, 0.2):
            res = dns.search(queries, database, budget=budget)
            ref = host.search(queries, database, budget=budget)
            np.testing.assert_array_equal(res.scores, ref.scores)
            tm = res.timings
            total = tm["coarse_s_per_query"] + tm["selector_s_per_query"] + tm["fine_s_per_query"]
            out[(name, budget)] = total
            print(f"{name:16s} {budget:6.2f} {tm['fine_pairs_per_query']:10d} {total:8.3f} "
                  f"{tm['coarse_s_per_query']:9.4f} {tm['selector_s_per_query']:10.4f} {tm['fine_s_per_query']:8.3f} "
                  f"{ref.timings['fine_s_per_query']:19.3f}")
        print(f"{'':16s} (indexing the {n_db} videos: {index_s:.1f} s including compilation)")
    print("(fine s: the selected videos gathered from the resident database on the device; host layout: the "
          "same subset copied from the host and laid out per query, as before; same scores)")
    return out


def storage_rows(rng, fine_models):
    lengths = rng.integers(30, 301, 50)
    vids = videos(rng, lengths)
    print(f"\n## Bytes stored per video (50 videos of 30-300 frames, mean {lengths.mean():.0f} = seconds)")
    out = {}
    for name, fg in fine_models:
        reps = FineScorer(fg).index(vids)
        b = np.mean([r.nbytes for r in reps])
        out[name] = b
        print(f"fine {name:14s} {b:12.0f} B/video  ({b / lengths.mean():.0f} B per second of video, "
              f"{reps[0].dtype}{list(reps[0].shape[1:])} per frame)")
    print(f"coarse (1024-d)     {1024 * 4:12d} B/video float32, {1024 * 2} B float16")
    print(f"selector             {4:12d} B/video")
    return out


_MEM_CHILD = r"""
import sys, jax, numpy as np
sys.path.insert(0, sys.argv[3])
from dns_jax import pretrained
from dns_jax.retrieval.fine import FineScorer
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
path, name, t = sys.argv[1], sys.argv[2], int(sys.argv[4])
m = pretrained.init_network(name, jax.random.PRNGKey(0), indexing='att' if 'att' in name else 'bin')
x = np.random.default_rng(0).standard_normal((t, 9, 512)).astype(np.float32)
if path == 'official':
    qi = m.index_video(x)
    run = lambda: m.calculate_video_similarity(qi, qi).block_until_ready()
else:
    sc = FineScorer(m)
    rep = sc.index([x])
    run = lambda: sc.similarities(rep, rep)
run()                                             # compile and warm up
open('/proc/self/clear_refs', 'w').write('5')     # reset the peak-RSS mark
base = status('VmRSS')
run()
print(status('VmHWM') - base)
"""


def peak_rss_mib(path, name, t):
    """Peak resident memory (MiB) added by one run of the pair, in a fresh process (compile excluded)."""
    import subprocess
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, path, name, root, str(t)], capture_output=True,
                         text=True, timeout=900)
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def memory_rows(models, t=1800):
    print(f"\n## Peak memory, one {t}-frame query vs one {t}-frame target")
    print("(peak RSS added by running the pair, compile excluded, in a fresh process; XLA temp = the "
          "kernel's working buffers from XLA's buffer assignment)")
    out = {}
    for (name, model), net in zip(models, ("fg_att_student", "fg_bin_student")):
        sc = FineScorer(model)
        x = sc._kernel_input(sc.index([np.ones((t, R, D), np.float32)])[0], "memory probe")
        rc = sc._canvas([(x, 0, t)], [0], t, retrieval.fine.ladder_size(t + 8))
        cc = sc.prepare([x]).canvases[0]
        spec = sc.spec_for(rc.size, cc.size, (R, R), (rc.dense_size, cc.dense_size))
        m = kernels.canvas_similarity.lower(sc.conv_params, rc.dense, cc.dense, rc.maps(sc, bool(spec.tile_rows)),
                                            cc.maps(sc, bool(spec.tile_cols)), spec=spec, rows_index=rc.index,
                                            cols_index=cc.index).compile().memory_analysis()
        ours = peak_rss_mib("canvas", net, t)
        official = peak_rss_mib("official", net, t)
        out[name] = (ours, official)
        if spec.sim != "packed":
            blocks = f"f2f blocks {spec.row_block or t}x{spec.col_block or t}"
        elif spec.popcount == "ffi":
            blocks = "native Hamming kernel, chunks of 128x64 frames"
        else:
            blocks = f"Hamming blocks of {spec.packed_block or t} frames"
        print(f"{name:16s} canvas kernel {ours:7.0f} MiB (XLA temp {m.temp_size_in_bytes / 2**20:5.1f} MiB; tiles "
              f"{spec.tile_rows}x{spec.tile_cols}, {blocks})   official path {official:7.0f} MiB   "
              f"(region tensor [Tq,R,R,Tt] alone {t * t * R * R * 4 / 2**20:.0f} MiB)")
    return out


def summary_table(fine, cg, dns, storage, memory):
    """The one table of the issue's aims."""
    print("\n## Summary (ours / official PyTorch / speed-up; see the sections above for the conditions)")
    nan = float("nan")
    for r in fine:
        if r["label"] != "30-120":
            continue
        print(f"{r['name'] + ' ms/target (60 vs 30-120)':40s} {r['ms']:9.3f} / {r['official_ms']:9.3f} / "
              f"{r['official_ms'] / r['ms']:5.1f}x   {r['gflops']:.1f} GFLOP/s = {r['pct']:.0%} of the matmul rate "
              f"({r['rate']:.1f} GFLOP/s; per-canvas calls {r['pctp']:.0%}); official {r['official_pct']:.0%}")
    for n in sorted({k[0] for k in cg}):
        best = min((v for k, v in cg.items() if k[0] == n and len(k) == 3), default=nan)
        one = cg.get((n, "float32", 1), nan)
        ref = cg.get((n, "official"), nan)
        print(f"{'CG ms/query over %d' % n:40s} {best:9.3f} / {ref:9.3f} / {ref / best:5.1f}x   "
              f"(best of float32/float16 storage, 1 or 64 queries per batch; float32 one query: {one:.3f} ms)")
    for (name, budget), total in sorted(dns.items()):
        print(f"{'DnS s/query, %s, budget %.2f' % (name, budget):40s} {total:9.3f}")
    for name, b in storage.items():
        print(f"{'bytes/video fine ' + name:40s} {b:9.0f}")
    print(f"{'bytes/video coarse / selector':40s} {2048:9d} (float16; 4096 float32) / 4")
    for name, (ours, official) in memory.items():
        print(f"{'peak MiB 1800x1800 ' + name:40s} {ours:9.0f} / {official:9.0f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller databases (a smoke run)")
    p.add_argument("--cg-sizes", default="100000,1000000", help="database sizes of the coarse stage")
    p.add_argument("--region-sizes", default="10000,100000",
                   help="database sizes of the coarse stage with region vectors (the build's CG student)")
    p.add_argument("--dns-db", type=int, default=1000, help="videos in the DnS database")
    p.add_argument("--skip", default="", help="comma list of sections to skip: fine,cg,regions,rerank,dns,storage,memory")
    p.add_argument("--torch-python", default=os.environ.get("DNS_JAX_TORCH_PYTHON", ""),
                   help="a Python interpreter with PyTorch (and einops) to run the official code side by side "
                        "(default: $DNS_JAX_TORCH_PYTHON; without one the official columns are skipped)")
    p.add_argument("--official-repo", default=os.environ.get("DNS_JAX_OFFICIAL_REPO", ""),
                   help="git checkout (or bare git directory) of mever-team/distill-and-select whose HEAD's "
                        "model/ code is run (read into a temporary directory, never copied into this "
                        "repository; default: $DNS_JAX_OFFICIAL_REPO)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch threads of the official code")
    p.add_argument("--torch-device", default="cpu",
                   help="device of the official code: cpu (the issue's aims) or cuda (beside ours on a GPU)")
    args = p.parse_args()
    skip = set(args.skip.split(","))
    print(f"# dns_jax retrieval benchmark: {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"load average {' '.join('%.1f' % x for x in os.getloadavg())}")
    print(f"matmul rate (2048^3 float32): {matmul_rate():.1f} GFLOP/s")
    official = OfficialTorch(args.torch_python, args.official_repo, args.threads, args.torch_device)
    print("official PyTorch code: " + (official.version if official.available else "skipped: " + official.reason))
    rng = np.random.default_rng(0)
    att = pretrained.init_network("fg_att_student", jax.random.PRNGKey(0), indexing="att")
    binm = pretrained.init_network("fg_bin_student", jax.random.PRNGKey(1), indexing="bin")
    models = [("FG-Att", att), ("FG-Bin (packed)", binm)]
    fine, cg, dns, storage, memory = [], {}, {}, {}, {}
    try:
        if "fine" not in skip:
            fine = fine_rows(rng, models, args.quick, official)
        if "cg" not in skip:
            cg = cg_rows(rng, [int(s) for s in args.cg_sizes.split(",") if s], official)
        if "regions" not in skip:
            region_rows(rng, [int(s) for s in args.region_sizes.split(",") if s])
    finally:
        official.close()
    if "rerank" not in skip:
        rerank_rows(rng, models, args.quick)
    if "dns" not in skip:
        dns = dns_rows(rng, models, args.dns_db, args.quick)
    if "storage" not in skip:
        storage = storage_rows(rng, models)
    if "memory" not in skip:
        memory = memory_rows(models)
    summary_table(fine, cg, dns, storage, memory)
    print(f"(load average at the end: {' '.join('%.1f' % x for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
