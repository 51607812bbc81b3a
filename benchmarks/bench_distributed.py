"""Distributed throughput on Ray and DnS at FIVR-200K size, on this machine.

    python benchmarks/bench_distributed.py [--skip ray,fivr,fine] [--videos 48] [--clips 8]
        [--fivr-videos 225960] [--queries 2] [--compare] [--before speedups|buckets] [--warm 0] [--fine-targets 1000] [--rounds 3]
        [--conv-algorithms direct,winograd]

Random weights and random features (speed does not depend on their values). Prints:

* Ray throughput (videos/s) of `index_ray` (feature files -> index: FG-Bin, CG, selector) and of
  `extract_features_ray` (video files -> HDF5: decoding + a ResNet-50 L3-iMAC + PCA extractor)
  with 1 and 2 workers on a local Ray cluster of this machine's CPUs, beside the single-process
  `build_index` / `extract_to_hdf5`. Each Ray run starts its actors (JAX import, network
  compilation): `wall` includes that, `steady` is the marginal rate between a small and a full run.
* DnS per query on a FIVR-200K-sized database (225,960 videos, FG-Bin codes) on CPU, at a 5 %
  budget and at a fixed 1,000 re-ranked videos, stage by stage. Video lengths are an assumption
  (log-normal, median 80 s, sigma 0.9, clipped to 4-1800 s at 1 frame per second: mean ~ 2 min);
  the FG-Bin codes of 225,960 such videos take ~15 GB, more than this shared VM can spare, so every
  video's codes are a window of a 512 MiB pool of random codes, kept resident (the kernel's work per
  video is that of its own length). Coarse vectors (float32) and self-similarities are real-sized.
* The fine stage alone at that size (`fine`): one 60-frame query against --fine-targets videos of
  the same length distribution (resident FG-Bin codes), the paths before and after the FG-Bin
  speed-ups side by side in interleaved rounds (the AVX2 Hamming loop and canvases filled by dense
  frames; the AVX-512 VPOPCNTDQ loop where the CPU has it; canvases filled by canvas width; the
  comparator's conv2/conv3 direct, then by Winograd), its split into Hamming distances and
  comparator CNN, the canvas padding, and the arithmetic lower bound: the comparator's direct
  multiply-adds against this CPU's fp32 FMA peak (Winograd needs fewer: 'direct-equivalent' rates).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dns_jax import native, pretrained, retrieval  # noqa: E402
from dns_jax.retrieval import kernels  # noqa: E402
from dns_jax.retrieval.fine import (  # noqa: E402
    FineScorer,
    ResidentDatabase,
    ResidentPart,
    ScorerOptions,
    query_rows,
)

R, D = 9, 512


def load():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def networks():
    fg = pretrained.init_network("fg_bin_student", jax.random.PRNGKey(1), indexing="bin")
    cg = pretrained.init_network("cg_student", jax.random.PRNGKey(2))
    sel = pretrained.init_network("selector", jax.random.PRNGKey(3))
    return fg, cg, sel


# ------------------------------------------------------------------------------------------------
# Ray throughput

def _features_file(path, n, rng):
    import h5py
    with h5py.File(path, "w") as f:
        for i in range(n):
            x = rng.standard_normal((int(rng.integers(30, 121)), R, D)).astype(np.float32)
            f[f"v{i:05d}"] = x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clip(path, seconds, rng):
    import av
    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height, s.width, s.pix_fmt = 240, 320, "yuv420p"
        for i in range(seconds * 10):
            img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _extractor():
    from dns_jax.features.backbone import resnet50
    from dns_jax.features.extractor import Extractor, FeatureExtractor
    model = FeatureExtractor(backbone=resnet50(), pca_dims=512)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3), np.uint8))
    return Extractor(model, variables, batch_size=16, name="resnet50 (random weights)")


def ray_rows(n_videos, n_clips, cpus):
    import ray

    from dns_jax.distributed import extract_features_ray, index_ray
    from dns_jax.features.extract_folder import extract_to_hdf5
    from dns_jax.index import build_index
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="bench_ray_")
    fg, cg, sel = networks()
    feats = os.path.join(tmp, "feats.hdf5")
    _features_file(feats, n_videos, rng)
    small = os.path.join(tmp, "small.hdf5")
    _features_file(small, 4, rng)
    clips = []
    for i in range(n_clips):
        clips.append((f"c{i}", os.path.join(tmp, f"c{i}.mp4")))
        _clip(clips[-1][1], int(rng.integers(8, 16)), rng)
    extractor = _extractor()
    quiet = dict(progress=False, log=lambda m: None)
    rows = []

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # single process (networks compiled by a first small run, as the actors' steady rate excludes it)
    build_index(os.path.join(tmp, "warm"), [small], fg, cg, sel, **quiet)
    t = timed(lambda: build_index(os.path.join(tmp, "one"), [feats], fg, cg, sel, shard_size=16, **quiet))
    rows.append(("index", "single process", n_videos, t, float("nan")))
    extract_to_hdf5(clips[:1], os.path.join(tmp, "warm.hdf5"), extractor, **quiet)
    t = timed(lambda: extract_to_hdf5(clips, os.path.join(tmp, "one.hdf5"), extractor, **quiet))
    rows.append(("extract", "single process", n_clips, t, float("nan")))
    env = {"PYTHONPATH": os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
           "DNS_JAX_COMPILATION_CACHE": os.path.join(tmp, "xla")}       # actors of later runs reuse compiles
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": env})
    try:
        for workers in (1, 2):
            index_ray(os.path.join(tmp, f"w{workers}-warm"), [small], fg, cg, sel, shard_size=4, workers=workers,
                      **quiet)
            t_small = timed(lambda: index_ray(os.path.join(tmp, f"w{workers}-small"), [small], fg, cg, sel,
                                              shard_size=4, workers=workers, **quiet))
            t = timed(lambda: index_ray(os.path.join(tmp, f"w{workers}"), [feats], fg, cg, sel, shard_size=16,
                                        workers=workers, **quiet))
            rows.append(("index", f"Ray, {workers} worker{'s' * (workers > 1)}", n_videos, t,
                         (n_videos - 4) / max(t - t_small, 1e-9)))
            extract_features_ray(clips[:1], os.path.join(tmp, f"w{workers}-warm.hdf5"), extractor, workers=workers,
                                 **quiet)
            t_small = timed(lambda: extract_features_ray(clips[:1], os.path.join(tmp, f"w{workers}-s.hdf5"),
                                                         extractor, workers=workers, **quiet))
            t = timed(lambda: extract_features_ray(clips, os.path.join(tmp, f"w{workers}.hdf5"), extractor,
                                                   part_size=2, workers=workers, **quiet))
            rows.append(("extract", f"Ray, {workers} worker{'s' * (workers > 1)}", n_clips, t,
                         (n_clips - 1) / max(t - t_small, 1e-9)))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n## Ray throughput on this machine ({cpus} CPUs for the local cluster; load average {load()})")
    print(f"{'stage':8s} {'how':18s} {'videos':>6s} {'wall s':>7s} {'videos/s':>9s} {'steady videos/s':>15s}")
    for stage, how, n, t, steady in rows:
        print(f"{stage:8s} {how:18s} {n:6d} {t:7.1f} {n / t:9.3f} {steady:15.3f}")
    print(f"(index: {n_videos} feature sets of 30-120 frames, FG-Bin + CG + selector, random weights; extract: "
          f"{n_clips} clips of 8-15 s at 10 fps, 320x240, decoded at 1 frame/s, ResNet-50 + L3-iMAC + PCA 512, "
          "random weights. wall: the whole call, Ray's actor start and compiles included (the persistent XLA "
          "cache, warmed by a first run, serves later actors); steady: the marginal rate between a 4-video "
          "(index) / 1-clip (extract) run and the full run. Single process: networks compiled beforehand.)")
    return rows


# ------------------------------------------------------------------------------------------------
# DnS at FIVR-200K size

class SyntheticDatabase:
    """The database protocol of DnS.search (ids, coarse, selfsim, fine_rep) with a resident copy:
    each video's FG-Bin codes are a window of a shared pool of random codes."""

    def __init__(self, n, lengths, pool_frames, rng, coarse_dims=1024):
        self.n = n
        self.ids = [str(i) for i in range(n)]
        self.lengths = np.asarray(lengths, np.int64)
        c = rng.standard_normal((n, coarse_dims), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        self.coarse = c
        self.selfsim = rng.uniform(0.2, 0.9, n).astype(np.float32)
        words = rng.integers(0, 2 ** 32, (pool_frames + 1, R, 16), dtype=np.uint32)
        words[-1] = 0
        self.pool = words                                   # kernel input: uint32 code words
        self.packed = words[:-1].view(np.uint8)             # [F, R, 64] stored codes
        self.starts = rng.integers(0, pool_frames - self.lengths + 1)
        dev = jax.local_devices()[0]
        self.resident_fine = ResidentDatabase(
            n=n, lengths=self.lengths, part=np.zeros(n, np.int32), start=self.starts,
            parts=[ResidentPart(frames=jax.device_put(words, dev), device=dev, regions=R, zero=pool_frames)])

    def __len__(self):
        return self.n

    def fine_rep(self, i):
        s = int(self.starts[i])
        return self.packed[s:s + int(self.lengths[i])]

    def fine_reps(self, idx):
        return [self.fine_rep(int(i)) for i in idx]


def fivr_lengths(n, rng):
    return np.clip(np.round(rng.lognormal(np.log(80.0), 0.9, n)), 4, 1800).astype(np.int64)


# the FG-Bin fine-stage options before the speed-ups of docs/scaling.md (with the AVX2 Hamming loop)
OLD_FINE = dict(pack_gaps=False, untiled_cells=1 << 19, tile_cells=0)


def fivr_rows(n, n_queries, budgets, compare=False, warm=0, before="speedups", conv_algorithms=()):
    rng = np.random.default_rng(0)
    fg, cg, sel = networks()
    lengths = fivr_lengths(n, rng)
    t = time.perf_counter()
    db = SyntheticDatabase(n, lengths, pool_frames=(1 << 29) // (R * 64), rng=rng)
    built = time.perf_counter() - t
    dns = retrieval.DnS(fg, cg, sel)
    q = rng.standard_normal((n_queries + warm, 60, R, D)).astype(np.float32)
    queries = dns.index(list(q / np.linalg.norm(q, axis=-1, keepdims=True)))       # the last `warm`: warm-up only
    print(f"\n## DnS per query at FIVR-200K size on CPU ({jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, "
          f"load average {load()})")
    print(f"database: {n} videos, lengths {lengths.min()}-{lengths.max()} frames (mean {lengths.mean():.1f}, "
          f"median {np.median(lengths):.0f}); FG-Bin codes {lengths.sum() * R * 64 / 1e9:.1f} GB at full size "
          f"(here windows of a {db.pool.nbytes / 2**30:.1f} GiB resident pool); coarse {db.coarse.nbytes / 1e9:.2f} GB "
          f"float32; built in {built:.0f} s")
    print(f"{'budget':>12s} {'re-ranked':>9s} {'frames':>9s} {'total s':>8s} {'coarse s':>9s} {'selector s':>10s} "
          f"{'fine s':>8s} {'ms/target':>9s} {'rest s':>7s} {'load':>5s}")
    out = {}
    new_options = dns.scorer.options
    old = (ScorerOptions(**OLD_FINE), "avx2") if before == "speedups" else \
        (dataclasses.replace(new_options, width_step=0), "auto")       # 'buckets': fine partial-canvas widths
    paths = [("before",) + old, ("after", new_options, "auto")] if compare else [("", new_options, "auto")]
    if conv_algorithms:      # the comparator's conv2/conv3 algorithms side by side (ScorerOptions.conv_algorithm)
        paths = [(alg, dataclasses.replace(new_options, conv_algorithm=alg), "auto") for alg in conv_algorithms]
    # warm-up: FineScorer.warm_up compiles full canvases and every bucket width of a partly filled
    # one (width_step; nothing for width_step=0), then untimed queries at a budget of 1,000 videos
    # compile the canvas sizes they meet (the shapes do not depend on the budget)
    if warm:
        for _, options, isa in paths:
            dns.scorer.options = options
            dns.scorer.warm_up([queries.fine[0]], db.resident_fine)
    for qi, (_, options, isa) in ((qi, p) for qi in range(n_queries, n_queries + warm) for p in paths):
        dns.scorer.options = options
        if native.available():
            native.set_isa(isa)
        dns.search(retrieval.Representations(ids=[queries.ids[qi]], fine=[queries.fine[qi]],
                                             coarse=queries.coarse[qi:qi + 1],
                                             selfsim=queries.selfsim[qi:qi + 1]), db, budget=1000, topk=100)
    for budget in budgets:
        # the paths alternate which one runs first, query by query (the load drifts)
        for qi, (path, options, isa) in ((qi, p) for qi in range(n_queries) for p in paths[::1 - 2 * (qi % 2)]):
            dns.scorer.options = options
            if native.available():
                native.set_isa(isa)
            if path:
                print(f"{path}:", end=" ")
            one = retrieval.Representations(ids=[queries.ids[qi]], fine=[queries.fine[qi]],
                                            coarse=queries.coarse[qi:qi + 1], selfsim=queries.selfsim[qi:qi + 1])
            compiled = kernels.canvas_similarity._cache_size()
            t = time.perf_counter()
            res = dns.search(one, db, budget=budget, topk=100)
            total = time.perf_counter() - t
            compiled = kernels.canvas_similarity._cache_size() - compiled      # canvas kernels compiled
            tm = res.timings
            chosen = retrieval.selection(retrieval.selector_scores(sel, one.selfsim, db.selfsim,
                                                                   one.coarse @ db.coarse.T), budget)[0]
            frames = int(db.lengths[chosen].sum())
            rest = total - tm["coarse_s_per_query"] - tm["selector_s_per_query"] - tm["fine_s_per_query"]
            label = f"{budget:.0%}" if isinstance(budget, float) else f"{budget} videos"
            note = f" ({compiled} canvas kernels compiled)" if compiled else ""
            print(f"{label:>12s} {tm['fine_pairs_per_query']:9d} {frames:9d} {total:8.2f} {tm['coarse_s_per_query']:9.3f} "
                  f"{tm['selector_s_per_query']:10.3f} {tm['fine_s_per_query']:8.2f} "
                  f"{tm['fine_s_per_query'] / max(tm['fine_pairs_per_query'], 1) * 1e3:9.3f} {rest:7.2f} {os.getloadavg()[0]:5.1f}{note}")
            if qi:
                out[(budget, path)] = min(out.get((budget, path), float("inf")), total)
            gc.collect()
    dns.scorer.options = new_options
    if native.available():
        native.set_isa("auto")
    print("(one 60-frame query per search; total = coarse + selector + fine + selection, mixing and ranking "
          "(rest); a query that compiles canvas kernels (sizes not met before in this process) says so" +
          (f"; the comparator's conv2/conv3 as {' / '.join(conv_algorithms)} (ScorerOptions.conv_algorithm), "
           "interleaved query by query)" if conv_algorithms else
           "; 'before': " + ("the fine stage with the options and Hamming loop before the FG-Bin speed-ups"
                             if before == "speedups" else "partly filled canvases at their fine widths (width_step=0)")
           + ", interleaved with 'after' query by query)" if compare else ")"))
    return out


# ------------------------------------------------------------------------------------------------
# the fine stage alone at FIVR-200K lengths: before / after side by side

# comparator multiply-adds per frame pair: conv1 3x3x1x32 at full resolution, conv2 3x3x32x64 at
# half, conv3 3x3x64x128 and fconv 1x1x128x1 at quarter resolution
CNN_MACS_PER_CELL = 9 * 32 + 9 * 32 * 64 / 4 + 9 * 64 * 128 / 16 + 128 / 16


def cpu_fma_peak():
    """fp32 multiply-adds per second of this machine's cores at their reported clock: 2 FMA units
    x 8 floats (256-bit; Zen 4 runs 512-bit vectors as two halves) per core and cycle."""
    mhz = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz.append(float(line.split(":")[1]))
    ghz = (max(mhz) if mhz else 2500.0) / 1e3
    return (os.cpu_count() or 1) * 2 * 8 * ghz * 1e9, ghz


def fine_rows(n_targets, rounds):
    rng = np.random.default_rng(1)
    fg = pretrained.init_network("fg_bin_student", jax.random.PRNGKey(1), indexing="bin")
    lengths = fivr_lengths(n_targets, rng)
    frames = int(lengths.sum())
    words = rng.integers(0, 2 ** 32, (frames + 1, R, 16), dtype=np.uint32)
    words[-1] = 0
    dev = jax.local_devices()[0]
    db = ResidentDatabase(n=n_targets, lengths=lengths, part=np.zeros(n_targets, np.int32),
                          start=np.concatenate([[0], np.cumsum(lengths)[:-1]]),
                          parts=[ResidentPart(frames=jax.device_put(words, dev), device=dev, regions=R, zero=frames)])
    sub = db.subset(np.arange(n_targets))
    q = rng.integers(0, 2 ** 32, (60, R, 16), dtype=np.uint32)
    native_ok = native.available()
    best = native.set_isa("auto") if native_ok else "none"
    old = OLD_FINE
    variants = {   # name: (options, Hamming loop)
        "before (AVX2 loop, dense fill, wide tiles)": (ScorerOptions(**old), "avx2"),
        f"{best} loop": (ScorerOptions(**old), "auto"),
        f"{best} loop, fill by width": (ScorerOptions(untiled_cells=1 << 19, tile_cells=0), "auto"),
        f"{best}, by width, 40k tiles, direct CNN": (ScorerOptions(conv_algorithm="direct"), "auto"),
        f"after ({best}, by width, 40k tiles, Winograd)": (ScorerOptions(conv_algorithm="winograd"), "auto"),
    }
    scorers = {k: FineScorer(fg, options=o) for k, (o, _) in variants.items()}
    print(f"\n## FG-Bin fine stage at FIVR-200K lengths ({jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, "
          f"load average {load()})")
    print(f"one 60-frame query x {n_targets} targets, {frames} target frames (mean {lengths.mean():.1f})")
    outs, times = {}, {k: [] for k in variants}
    for k, sc in scorers.items():                                  # compile every canvas size
        if native_ok:
            native.set_isa(variants[k][1])
        outs[k] = sc.similarities([q], sub)
    for _ in range(rounds):
        for k, sc in scorers.items():
            if native_ok:
                native.set_isa(variants[k][1])
            t = time.perf_counter()
            sc.similarities([q], sub)
            times[k].append(time.perf_counter() - t)
    if native_ok:
        native.set_isa("auto")
    base = next(iter(variants))
    print(f"{'path':>44s} {'best s':>7s} {'median s':>8s} {'ms/target':>9s} {'vs before':>9s} {'canvas cols':>11s} "
          f"{'padding':>7s} {'max |diff|':>10s}")
    for k, sc in scorers.items():
        cols = sum(c.size for c in sc.prepare(sub).canvases)
        print(f"{k:>44s} {min(times[k]):7.3f} {np.median(times[k]):8.3f} {min(times[k]) / n_targets * 1e3:9.3f} "
              f"{min(times[base]) / min(times[k]):8.2f}x {cols:11d} {cols / frames - 1:7.1%} "
              f"{np.abs(outs[k] - outs[base]).max():10.2g}")
    # the new path split into its two kernels, canvas by canvas (one thread)
    sc = scorers[list(variants)[-1]]
    pdb = sc.prepare(sub)
    qc = sc._canvas([(q, 0, 60)], [0], query_rows(60), 60, dev)
    work = [(cc, sc.spec_for(qc.size, cc.size, (R, R), (qc.dense_size, cc.dense_size))) for cc in pdb.canvases]
    f2f = [kernels.place_dense(kernels.frame_to_frame_dense(qc.dense, cc.dense, spec, cc.take), qc.index, cc.index)
           for cc, spec in work]

    def hamming():
        for o in [kernels.frame_to_frame_dense(qc.dense, cc.dense, spec, cc.take) for cc, spec in work]:
            o.block_until_ready()

    def cnn():
        for o in [kernels.given_similarity(sc.kernel_params(spec), f, qc.maps(sc, bool(spec.tile_rows)),
                                           cc.maps(sc, bool(spec.tile_cols)),
                                           spec) for f, (cc, spec) in zip(f2f, work)]:
            o.block_until_ready()

    split = {"hamming": [], "cnn": []}
    hamming(), cnn()
    for _ in range(rounds):
        for name, fn in (("hamming", hamming), ("cnn", cnn)):
            t = time.perf_counter()
            fn()
            split[name].append(time.perf_counter() - t)
    cols = sum(c.size for c in pdb.canvases)
    macs = 60 * frames * CNN_MACS_PER_CELL
    peak, ghz = cpu_fma_peak()
    print(f"split of the new path, one canvas at a time: Hamming {min(split['hamming']):.3f} s, "
          f"comparator CNN + Chamfer {min(split['cnn']):.3f} s "
          f"({60 * cols * CNN_MACS_PER_CELL / min(split['cnn']) / 1e9:.1f} G direct-equivalent multiply-adds/s "
          f"on the canvas)")
    print(f"lower bound: {macs / 1e9:.1f} G comparator multiply-adds on the real frame pairs "
          f"({CNN_MACS_PER_CELL:.0f} per pair) / {peak / 1e9:.0f} G FMA/s fp32 peak ({os.cpu_count()} cores x 2 FMA "
          f"x 8 floats x {ghz:.2f} GHz) = {macs / peak:.3f} s; "
          f"{macs / peak / n_targets * 1e3:.3f} ms per target")
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip", default="", help="comma list of sections to skip: ray,fivr,fine")
    p.add_argument("--videos", type=int, default=48, help="feature sets indexed per Ray run")
    p.add_argument("--clips", type=int, default=8, help="video clips extracted per Ray run")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    p.add_argument("--fivr-videos", type=int, default=225960)
    p.add_argument("--queries", type=int, default=2, help="queries per budget (the first one compiles)")
    p.add_argument("--fine-targets", type=int, default=1000, help="targets of the fine-stage comparison")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the fine-stage comparison")
    p.add_argument("--warm", type=int, default=0,
                   help="fivr: untimed queries (1,000 videos each) before the timed ones (each meets canvas widths of "
                        "its own, compiled once per process; a warm service has them all)")
    p.add_argument("--compare", action="store_true",
                   help="fivr: run each query with the fine stage before and after the FG-Bin speed-ups, interleaved")
    p.add_argument("--before", choices=("speedups", "buckets"), default="speedups",
                   help="fivr --compare: 'before' is the fine stage before the FG-Bin speed-ups, or ('buckets') "
                        "with the partly filled canvases at their fine widths (ScorerOptions.width_step=0)")
    p.add_argument("--conv-algorithms", default="",
                   help="fivr: comma list of comparator conv algorithms (ScorerOptions.conv_algorithm: direct, winograd) "
                        "run side by side, interleaved query by query (replaces --compare)")
    args = p.parse_args()
    skip = set(args.skip.split(","))
    print(f"# dns_jax distributed benchmark: {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__}, load average {load()}")
    if "fine" not in skip:
        fine_rows(args.fine_targets, args.rounds)
    if "fivr" not in skip:
        fivr_rows(args.fivr_videos, args.queries, [0.05, 1000], compare=args.compare, warm=args.warm,
                  before=args.before, conv_algorithms=[a for a in args.conv_algorithms.split(",") if a])
    if "ray" not in skip:
        ray_rows(args.videos, args.clips, args.cpus)


if __name__ == "__main__":
    main()
