"""Load benchmark of the retrieval service on the loopback address.

Starts `python -m dns_jax.service` (uvicorn, 127.0.0.1, a free port) on a private copy of a built
work directory, then for 1, 4 and 16 concurrent clients sends searches (by indexed id, or uploads
of the collection's files with --upload) and reports searches per second and p50/p95 latency, with
and without an addition running (additions are started back to back while the clients run). Every
run is bounded in requests and in time and stops by itself; the server is stopped by its pid.

    python benchmarks/bench_service.py --workdir dns-jax-demo [--clients 1,4,16] [--requests 200]
        [--seconds 30] [--stage dns] [--budget 0.05] [--topk 10] [--upload]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(fields: dict, path: str = None):
    b = uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    if path:
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="video"; filename="{os.path.basename(path)}"\r\n'
                     'Content-Type: application/octet-stream\r\n\r\n'.encode() + open(path, "rb").read() + b"\r\n")
    parts.append(f"--{b}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={b}"


class Client:
    """One keep-alive connection (reopened once if the server closed it while idle, as HTTP
    client pools do; any other failure is the caller's error)."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        self.last = None

    def call(self, method, path, body=None, headers=None):
        stale = self.last is not None and time.monotonic() - self.last > 1.0
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
            out = r.status, r.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.conn.close()
            if not stale:
                raise
            self.last = None
            return self.call(method, path, body, headers)
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise
        self.last = time.monotonic()
        return out


def start_server(workdir, port, log):
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "dns_jax.service", "--workdir", workdir, "--port", str(port),
                             "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    t0 = time.time()
    while time.time() - t0 < 600:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if Client(port).call("GET", "/api/health")[0] == 200:
                return proc, time.time() - t0
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 600 s")


class Additions(threading.Thread):
    """Adds videos back to back (new ids) until stopped or `limit` additions."""

    def __init__(self, port, files, limit=50):
        super().__init__(daemon=True)
        self.port, self.files, self.limit = port, files, limit
        self.stop_event = threading.Event()
        self.done = self.failed = 0
        self.busy = threading.Event()

    def run(self):
        c = Client(self.port)
        for i in range(self.limit):
            if self.stop_event.is_set():
                break
            body, ctype = multipart({"video_id": f"bench-{uuid.uuid4().hex[:8]}"}, self.files[i % len(self.files)])
            status, out = c.call("POST", "/api/videos", body, {"Content-Type": ctype})
            if status != 202:
                self.failed += 1
                continue
            job = json.loads(out)["job"]
            while True:
                state = json.loads(c.call("GET", f"/api/jobs/{job}")[1])
                if state["state"] == "running":
                    self.busy.set()
                if state["state"] in ("done", "failed"):
                    self.done += state["state"] == "done"
                    self.failed += state["state"] == "failed"
                    break
                time.sleep(0.05)


def load(port, clients, requests, seconds, queries, params, upload):
    """`clients` threads share `requests` searches (at most `seconds`); -> stats dict."""
    lat, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds

    def worker():
        c = Client(port)
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            q = queries[i % len(queries)]
            body, ctype = multipart({} if upload else {"video_id": q}, q if upload else None)
            t0 = time.perf_counter()
            try:
                status, out = c.call("POST", "/api/search?" + params, body, {"Content-Type": ctype})
            except (OSError, http.client.HTTPException) as e:
                status, out = -1, str(e).encode()
                c = Client(port)
            dt = time.perf_counter() - t0
            with lock:
                (lat.append(dt) if status == 200 else errors.append((status, out[:200])))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat_ms = np.array(lat) * 1e3
    return {"clients": clients, "searches": len(lat), "errors": len(errors), "seconds": wall,
            "per_s": len(lat) / wall if wall else 0.0,
            "p50": float(np.percentile(lat_ms, 50)) if len(lat) else float("nan"),
            "p95": float(np.percentile(lat_ms, 95)) if len(lat) else float("nan"),
            "first_errors": errors[:3]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a work directory built by `dns-jax build` (copied first)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=200, help="searches per row at most (default 200)")
    ap.add_argument("--seconds", type=float, default=30, help="seconds per row at most (default 30)")
    ap.add_argument("--stage", default="dns", choices=("coarse", "fine", "dns"))
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--upload", action="store_true", help="search with uploaded files instead of indexed ids")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="bench_service_")
    work = os.path.join(tmp, "work")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from dns_jax.service.collection import resolve_workdir
    shutil.copytree(resolve_workdir(args.workdir), work, ignore=shutil.ignore_patterns("service"))
    port = free_port()
    log = open(os.path.join(tmp, "server.log"), "wb")
    proc, start_s = start_server(work, port, log)
    try:
        c = Client(port)
        listing = json.loads(c.call("GET", "/api/videos?limit=500")[1])
        ids = [v["video_id"] for v in listing["videos"]]
        files = []
        for v in listing["videos"][:8]:
            status, data = c.call("GET", f"/api/videos/{v['video_id']}/stream")
            if status == 200:
                path = os.path.join(tmp, f"{len(files)}.mp4")
                open(path, "wb").write(data)
                files.append(path)
        if not files:
            raise SystemExit("the collection's video files are not available (needed for additions)")
        queries = files if args.upload else ids
        params = f"stage={args.stage}&budget={args.budget}&topk={args.topk}"
        load(port, 1, min(10, args.requests), args.seconds, queries, params, args.upload)   # warm
        rows = []
        for n in [int(x) for x in args.clients.split(",")]:
            rows.append(dict(load(port, n, args.requests, args.seconds, queries, params, args.upload),
                             addition=False))
            adds = Additions(port, files)
            adds.start()
            adds.busy.wait(120)
            row = load(port, n, args.requests, args.seconds, queries, params, args.upload)
            adds.stop_event.set()
            adds.join(300)
            rows.append(dict(row, addition=True, additions_done=adds.done, additions_failed=adds.failed))
        count = json.loads(c.call("GET", "/api/health")[1])["videos"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(120)
        log.close()

    print(f"\nservice load benchmark: {len(ids)} videos at start ({count} after the additions), "
          f"{'uploads' if args.upload else 'indexed-id queries'}, stage {args.stage}"
          f"{f' budget {args.budget}' if args.stage == 'dns' else ''}, top {args.topk} with segments; "
          f"server ready in {start_s:.1f} s (load + compile); {os.cpu_count()} CPUs, {platform.machine()}")
    print("\n| clients | addition running | searches | searches/s | p50 ms | p95 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        extra = f" ({r['additions_done']} added)" if r["addition"] else ""
        print(f"| {r['clients']} | {'yes' + extra if r['addition'] else 'no'} | {r['searches']} | {r['per_s']:.1f} | "
              f"{r['p50']:.1f} | {r['p95']:.1f} | {r['errors']} |")
    for r in rows:
        if r["errors"]:
            print(f"errors ({r['clients']} clients): {r['first_errors']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
