"""Compressed (faiss IVF-PQ) versus exact coarse search on synthetic CG vectors.

    python benchmarks/bench_coarse_faiss.py [--sizes 1000000,10000000] [--queries 200]
        [--nprobe 16,64,256] [--nlist 1024] [--m 56] [--nbits 8] [--train 65536]
        [--threads 2] [--pools 1000,4000] [--json out.json]

Vectors come from :class:`dns_jax.retrieval.synthetic.SyntheticCG` (unit-norm,
1024-d, near-duplicate groups inside topics; see its docstring) and are
generated chunk by chunk: 10^7 x 1024 float32 is 40 GB, so nothing holds the
whole collection.  The index is trained on the first ``--train`` rows (rows
are i.i.d., so they are a random sample), then every chunk is added to the
index and scored exactly against the queries (numpy float32 matmul, a running
top-1000 per query): the exact baseline is measured over the whole
collection, not extrapolated.  Queries are new members of random groups.

Reported per N: one ``exact`` row (the baseline: every CG vector, float32)
and one ``ivfpq`` row per nprobe:

* ``R100@100``: the fraction of the exact top-100 found in the index's top-100
  (its approximate scores alone);
* ``recall@100``: the fraction of the exact top-100 in the top-100 after the
  index's top-1000 are re-scored exactly (what the index's compressed coarse
  stage does: the pool's CG vectors are read from the shards; equal to the
  fraction of the exact top-100 inside the pool);
* ``dup@100``: the fraction of a query's near-duplicates (its group) in the top-100;
* ms/query for a batch of ``--queries`` queries (k = 1000), exact and
  compressed; ``rescore ms/q``: the exact re-scoring of the pool (gather of
  1000 rows held in memory + product; reading them from disk comes on top);
* bytes/video: per video (PQ code + 8-byte id) and all stored bytes / N;
* build time (train, add).

The machine may be shared: times are wall-clock, with the thread count printed,
and a line per N says where the time went (generate, train, add, exact).  10^7
took 39 minutes on 2 shared cores with ``--nlist 1024 --train 16384
--opq-iterations 4`` (docs/scaling.md, "10^7 vectors"), most of it in faiss's add.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dns_jax.retrieval.coarse_faiss import CompressedCoarseIndex, IVFPQParams  # noqa: E402
from dns_jax.retrieval.synthetic import SyntheticCG  # noqa: E402

POOL = 1000


def _merge_topk(best_s, best_i, s, start, k):
    """Running exact top-k: merge a chunk's scores s [Q, C] (rows start..) into (best_s, best_i)."""
    kk = min(k, s.shape[1])
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    all_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
    all_i = np.concatenate([best_i, part + start], 1)
    order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
    return np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)


def _recall(found, exact):
    return float(np.mean([np.isin(e, f).mean() for f, e in zip(found, exact)]))


def run(n: int, args) -> list[dict]:
    """Build, stream and measure one collection size; one row per nprobe."""
    gen = SyntheticCG(n=n)
    queries, qgroups = gen.queries(args.queries)
    params = IVFPQParams(m=args.m, nbits=args.nbits, nlist=args.nlist, nprobe=max(args.nprobe),
                         opq_iterations=args.opq_iterations, transform=args.transform)
    t = time.perf_counter()
    sample = gen.vectors(0, min(args.train, n))
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    index = CompressedCoarseIndex.train(sample, network="synthetic-cg", params=params,
                                        expected_n=n)
    t_train = time.perf_counter() - t
    del sample
    best_s = np.full((args.queries, 0), -np.inf, np.float32)
    best_i = np.zeros((args.queries, 0), np.int64)
    members = {int(g): [] for g in qgroups}
    t_add = t_exact = 0.0
    for start in range(0, n, args.chunk):
        t = time.perf_counter()
        x = gen.vectors(start, start + args.chunk)
        t_gen += time.perf_counter() - t
        t = time.perf_counter()
        index.add(x)
        t_add += time.perf_counter() - t
        t = time.perf_counter()
        best_s, best_i = _merge_topk(best_s, best_i, queries @ x.T, start, POOL)
        t_exact += time.perf_counter() - t
        groups = gen.groups(start, start + x.shape[0])
        for row in np.flatnonzero(np.isin(groups, qgroups)):
            members[int(groups[row])].append(start + int(row))
        print(f"  N={n}: {start + x.shape[0]} added ({t_add:.0f} s add, {t_gen:.0f} s generate)",
              file=sys.stderr, flush=True)
    exact100 = best_i[:, :100]
    rows = []
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        pool = max(args.pools)
        index.topk(queries[:8], pool)  # warm-up
        t = time.perf_counter()
        _, found = index.topk(queries, pool)
        ms = (time.perf_counter() - t) / args.queries * 1e3
        pool_rows = np.random.default_rng(0).integers(0, x.shape[0], found.shape)
        t = time.perf_counter()
        for qi in range(found.shape[0]):
            x[pool_rows[qi]] @ queries[qi]
        rescore_ms = (time.perf_counter() - t) / args.queries * 1e3
        dup = [np.isin(members[int(g)], f[:100]).mean() for g, f in zip(qgroups, found)
               if members[int(g)]]
        rows.append({
            "N": n, "nlist": index.params.nlist, "nprobe": index.nprobe,
            "R100@100": _recall(found[:, :100], exact100),
            "R100@1000": _recall(found[:, :POOL], exact100), "dup@100": float(np.mean(dup)),
            "recall@100": {p: _recall(found[:, :p], exact100) for p in args.pools}, "pool": pool,
            "rescore_ms_per_query": rescore_ms,
            "ms_per_query": ms, "exact_ms_per_query": t_exact / args.queries * 1e3,
            "bytes_per_video": index.bytes_per_video,
            "stored_bytes_per_video": (index.n * index.bytes_per_video + index.fixed_bytes) / n,
            "train_s": t_train, "add_s": t_add, "generate_s": t_gen,
            "factory": index.header["factory"], "threads": args.threads})
    return rows


def _table(rows, args):
    """Print the rows so far as a markdown table: an exact row, then the ivfpq rows, per N."""
    head = ("N", "method", "nprobe", "bytes/video", *(f"recall@100, pool {p}" for p in args.pools),
            "R100@100 (PQ scores)", "dup@100", "ms/query", "rescore ms/q", "train s", "add s")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for n in sorted({r["N"] for r in rows}):
        r0 = next(r for r in rows if r["N"] == n)
        print(f"| {n:.0e} | exact (float32) | - | 4096 | " + "1.000 | " * len(args.pools) + "1.000 | - | "
              f"{r0['exact_ms_per_query']:.1f} | - | - | - |")
        for r in (r for r in rows if r["N"] == n):
            print(f"| {n:.0e} | {r['factory']} | {r['nprobe']} | {r['bytes_per_video']} "
                  f"({r['stored_bytes_per_video']:.1f} stored) | "
                  + "".join(f"{r['recall@100'][p]:.3f} | " for p in args.pools) +
                  f"{r['R100@100']:.3f} | {r['dup@100']:.3f} | {r['ms_per_query']:.2f} | "
                  f"{r['rescore_ms_per_query']:.3f} | {r['train_s']:.0f} | {r['add_s']:.0f} |")
    print(f"recall@100: exact top-100 among the top-<pool> of the index, re-scored exactly; "
          f"ms/query for a batch of {args.queries} queries, k = {max(args.pools)}, {args.threads} threads; "
          f"exact: numpy float32 matmul + running top-{POOL} over all N", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", default="16,64,256")
    p.add_argument("--nlist", type=int, default=None, help="default: about 4 sqrt(N)")
    p.add_argument("--m", type=int, default=56)
    p.add_argument("--nbits", type=int, default=8)
    p.add_argument("--opq-iterations", type=int, default=20)
    p.add_argument("--transform", choices=("opq", "none"), default="opq",
                   help="none: plain IVF-PQ (m must divide 1024: --m 32 is 40 B a video)")
    p.add_argument("--train", type=int, default=65536)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--pools", default="1000", help="candidate pools the recall is measured for")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    args.nprobe = [int(v) for v in args.nprobe.split(",")]
    args.pools = [int(v) for v in args.pools.split(",")]
    import faiss
    faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {args.threads} threads, {os.cpu_count()} cores "
          f"(load average {os.getloadavg()[0]:.1f}: the machine may be shared)")
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for n in (int(float(v)) for v in args.sizes.split(",")):
        rows += run(n, args)
        r = rows[-1]
        print(f"N={n}: generate {r['generate_s']:.0f} s, train {r['train_s']:.0f} s, add {r['add_s']:.0f} s, "
              f"exact {r['exact_ms_per_query'] * args.queries / 1e3:.0f} s", flush=True)
        _table(rows, args)
    print(f"run {started} .. {time.strftime('%H:%M UTC', time.gmtime())}, load average at the end "
          f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
