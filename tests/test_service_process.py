"""The service as a process on the loopback address: SIGKILL during additions leaves a consistent
collection after a restart, and SIGTERM lets the requests in flight finish."""
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("av")

from service_fixtures import copy_workdir, free_port  # noqa: E402

pytestmark = pytest.mark.slow


class Server:
    """`python -m dns_jax.service` on 127.0.0.1 (a private port), stopped by its pid."""

    def __init__(self, workdir, cache, log_path):
        self.port = free_port()
        env = dict(os.environ, JAX_PLATFORMS="cpu", DNS_JAX_COMPILATION_CACHE=str(cache),
                   PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
        env.pop("DNS_JAX_SERVICE_TOKEN", None)
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dns_jax.service", "--workdir", str(workdir), "--port", str(self.port),
             "--no-warm-up", "--log-level", "warning"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        t0 = time.time()
        while time.time() - t0 < 180:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}; see {log_path}")
            try:
                if self.request("GET", "/api/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("the server did not start in 180 s")

    def request(self, method, path, body=None, headers=None, timeout=120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"null")
        finally:
            conn.close()

    def upload(self, path, url, fields=None):
        body, ctype = multipart(path, fields)
        return self.request("POST", url, body, {"Content-Type": ctype})

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


def multipart(path, fields=None, boundary=None):
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for k, v in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="{os.path.basename(path)}"'
                 '\r\nContent-Type: video/mp4\r\n\r\n'.encode() + open(path, "rb").read() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def server_env(service_collection, tmp_path):
    work = copy_workdir(service_collection, tmp_path / "work")
    servers = []

    def start():
        s = Server(work, tmp_path / "xla", tmp_path / "server.log")
        servers.append(s)
        return s
    yield work, start
    for s in servers:
        s.stop(signal.SIGKILL)


def _consistent(work, server, video_id, job):
    """The index opens; the video is either fully in the collection or reported as not added."""
    from dns_jax.index import Index
    index = Index.open(os.path.join(work, "index"))
    status, state = server.request("GET", f"/api/jobs/{job}")
    assert status == 200
    added = os.listdir(os.path.join(work, "service", "added"))
    if state["state"] == "done":
        assert video_id in index and len(added) % 3 == 0 and added
        status, v = server.request("GET", f"/api/videos/{video_id}")
        assert status == 200 and v["source"] == "added" and v["size_bytes"] > 0
        status, out = server.request("POST", "/api/search?stage=fine", json.dumps({"video_id": video_id}),
                                     {"Content-Type": "application/json"})
        assert status == 200 and out["results"][0]["score"] > 0.9
    else:
        assert state["state"] == "failed" and "not added" in state["error"], state
        assert video_id not in index
        assert server.request("GET", f"/api/videos/{video_id}")[0] == 404
    assert os.listdir(os.path.join(work, "service", "uploads")) == []
    return state["state"]


def test_sigkill_during_additions_then_restart(server_env, service_collection):
    work, start = server_env
    src = str(service_collection.videos / "s1_c1_hflip.mp4")
    n0 = len(service_collection.info.ids)
    outcomes = []
    for delay in (0.0, 1.5):
        server = start()
        vid = f"killed_{len(outcomes)}"
        status, r = server.upload(src, "/api/videos", {"video_id": vid})
        assert status == 202, r
        t0 = time.time()
        while server.request("GET", f"/api/jobs/{r['job']}")[1]["state"] == "queued":
            assert time.time() - t0 < 60
            time.sleep(0.02)
        time.sleep(delay)
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        server = start()
        outcomes.append(_consistent(work, server, vid, r["job"]))
        server.stop()
    status, health = start().request("GET", "/api/health")
    assert health["videos"] == n0 + outcomes.count("done")
    assert "failed" in outcomes       # the immediate kill lands before the commit


def test_sigterm_drains_requests_in_flight(server_env, service_collection):
    work, start = server_env
    server = start()
    qid = service_collection.info.queries[0]
    body, ctype = multipart(str(service_collection.videos / f"{qid}.mp4"), boundary="b0undary")
    half = len(body) // 2
    sent_head, signalled = threading.Event(), threading.Event()
    result = {}

    def chunks():
        yield body[:half]
        sent_head.set()
        signalled.wait(30)
        time.sleep(0.5)              # the server is shutting down while this request is in flight
        yield body[half:]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("POST", "/api/search?stage=dns", body=chunks(), headers={"Content-Type": ctype},
                     encode_chunked=True)
        r = conn.getresponse()
        result["status"], result["body"] = r.status, json.loads(r.read())
        conn.close()

    t = threading.Thread(target=client)
    t.start()
    assert sent_head.wait(30)
    time.sleep(0.3)
    os.kill(server.proc.pid, signal.SIGTERM)
    signalled.set()
    t.join(120)
    assert result["status"] == 200, result
    assert result["body"]["results"][0]["video_id"] == qid
    # uvicorn finishes its graceful shutdown, then re-raises the signal it caught
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    with pytest.raises(OSError):       # and it no longer listens
        server.request("GET", "/api/health", timeout=5)
