"""The retrieval service's API (dns_jax.service) through the framework's test client: every
endpoint, the token, every kind of bad upload, additions and their crash recovery."""
import io
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("av")

from service_fixtures import copy_workdir  # noqa: E402

pytestmark = pytest.mark.slow            # builds a collection (~40 s) and loads networks


@pytest.fixture(scope="module")
def workdir(service_collection, tmp_path_factory):
    return copy_workdir(service_collection, tmp_path_factory.mktemp("api") / "work")


@pytest.fixture(scope="module")
def collection(workdir):
    from dns_jax.service.collection import Collection
    return Collection(workdir)


def make_client(collection, **settings):
    from fastapi.testclient import TestClient
    from dns_jax.service.app import Settings, create_app
    return TestClient(create_app(collection, Settings(**settings), log=lambda *_: None))


@pytest.fixture(scope="module")
def client(collection):
    with make_client(collection) as c:
        yield c


def video_file(service_collection, vid):
    return str(service_collection.videos / f"{vid}.mp4")


def upload(client, path, name="upload.mp4", url="/api/search", data=None, **kw):
    with open(path, "rb") as f:
        return client.post(url, files={"video": (name, f, "video/mp4")}, data=data, **kw)


def assert_nothing_left(collection):
    assert os.listdir(collection.upload_dir()) == []


# -- health, listing, metadata, media --------------------------------------------------------------

def test_health_counts_the_indexed_videos(client, service_collection):
    assert client.get("/api/health").json() == {"status": "ok", "videos": len(service_collection.info.ids)}


def test_video_list_is_paged(client, service_collection):
    ids = service_collection.info.ids
    first = client.get("/api/videos", params={"offset": 0, "limit": 4}).json()
    rest = client.get("/api/videos", params={"offset": 4, "limit": 100}).json()
    assert first["total"] == rest["total"] == len(ids)
    assert len(first["videos"]) == 4 and len(rest["videos"]) == len(ids) - 4
    assert sorted(v["video_id"] for v in first["videos"] + rest["videos"]) == sorted(ids)
    v = first["videos"][0]
    assert v["source"] == "build" and v["frames"] >= 4 and v["size_bytes"] > 0
    assert v["stream_url"].endswith("/stream") and v["thumbnail_url"].endswith("/thumbnail")
    assert client.get("/api/videos", params={"limit": 0}).status_code == 422
    assert client.get("/api/videos", params={"limit": 501}).status_code == 422
    assert client.get("/api/videos", params={"offset": -1}).status_code == 422


def test_video_metadata(client, service_collection):
    vid = service_collection.info.queries[0]
    v = client.get(f"/api/videos/{vid}").json()
    assert v["video_id"] == vid and v["filename"] == f"{vid}.mp4"
    assert v["media"]["width"] == 128 and v["media"]["codec"] == "h264" and v["media"]["mime"] == "video/mp4"
    assert v["size_bytes"] == os.path.getsize(video_file(service_collection, vid))
    r = client.get("/api/videos/no_such_video")
    assert r.status_code == 404 and "no_such_video" in r.json()["detail"]


def test_thumbnail_is_a_decoded_frame(client, service_collection):
    from PIL import Image
    vid = service_collection.info.queries[0]
    for fmt, mime in (("jpeg", "image/jpeg"), ("png", "image/png")):
        r = client.get(f"/api/videos/{vid}/thumbnail", params={"format": fmt, "t": 2, "width": 64})
        assert r.status_code == 200 and r.headers["content-type"] == mime
        img = Image.open(io.BytesIO(r.content))
        assert img.format == fmt.upper() and img.size == (64, 36)
        assert np.asarray(img).std() > 5                  # a picture, not a blank frame
    assert client.get("/api/videos/nope/thumbnail").status_code == 404
    assert client.get(f"/api/videos/{vid}/thumbnail", params={"format": "gif"}).status_code == 422


def test_stream_serves_the_file_with_range_requests(client, service_collection):
    vid = service_collection.info.queries[1]
    data = open(video_file(service_collection, vid), "rb").read()
    r = client.get(f"/api/videos/{vid}/stream")
    assert r.status_code == 200 and r.content == data and r.headers["content-type"] == "video/mp4"
    assert r.headers["accept-ranges"] == "bytes"
    r = client.get(f"/api/videos/{vid}/stream", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    r = client.get(f"/api/videos/{vid}/stream", headers={"Range": "bytes=-50"})
    assert r.status_code == 206 and r.content == data[-50:]
    r = client.get(f"/api/videos/{vid}/stream", headers={"Range": f"bytes={len(data) + 10}-"})
    assert r.status_code == 416
    assert client.get("/api/videos/nope/stream").status_code == 404


@pytest.mark.parametrize("path", [
    "/api/videos/..%2F..%2Fstate.json/stream", "/api/videos/../../state.json/stream",
    "/api/videos/%2Fetc%2Fpasswd/stream", "/api/videos/%2Fetc%2Fpasswd/thumbnail",
    "/static/../collection.py", "/static/..%2Fcollection.py", "/static/", "/static",
])
def test_no_path_traversal_and_no_directory_listing(client, path):
    r = client.get(path)
    assert r.status_code in (404, 405), (path, r.status_code)
    assert b"root:" not in r.content and b"import" not in r.content


def test_indexed_ids_are_not_file_paths(client, service_collection):
    """A video_id naming an existing file (absolute or relative) is looked up as an id only."""
    existing = video_file(service_collection, service_collection.info.queries[0])
    outside = os.path.abspath(__file__)                             # a file outside the collection
    relative = os.path.join("..", service_collection.workdir.name, "state.json")   # the work directory's state
    assert os.path.isfile(outside) and (service_collection.workdir / "state.json").is_file()
    for vid in (existing, outside, relative):
        r = client.post("/api/search", data={"video_id": vid})
        assert r.status_code == 404 and "no video" in r.json()["detail"]


def test_page_and_openapi(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for label in ('aria-label="Query video file"', 'aria-label="Stage"', 'aria-label="Budget"',
                  'aria-label="Number of results"', 'aria-label="Upload progress"', 'aria-label="Side-by-side view"'):
        assert label in r.text
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/api/health", "/api/search", "/api/videos", "/api/videos/{video_id}",
                 "/api/videos/{video_id}/thumbnail", "/api/videos/{video_id}/stream", "/api/jobs/{job_id}"):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/api/search"]["post"]["requestBody"]["content"]


# -- search ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["coarse", "fine", "dns"])
def test_search_gives_the_scores_of_dns_jax_query(client, workdir, service_collection, tmp_path, stage):
    """Indexed id and uploaded file: the same scores as `dns-jax query` for the same options, best
    first, the original of an uploaded copy ranked first with a matched segment."""
    from dns_jax.app.query import run_query
    info = service_collection.info
    qid = info.queries[0]
    copy = tmp_path / "renamed copy.mp4"
    shutil.copy(video_file(service_collection, qid), copy)
    expected = run_query(workdir, [qid, str(copy)], stage=stage, budget=0.5, log=lambda *_: None)

    by_id = client.post("/api/search", params={"stage": stage, "budget": 0.5, "topk": 100},
                        data={"video_id": qid}).json()
    by_file = upload(client, str(copy), name="renamed copy.mp4",
                     params={"stage": stage, "budget": 0.5, "topk": 100}).json()
    for out, key in ((by_id, qid), (by_file, "renamed copy")):
        assert out["query"] == key and out["stage"] == stage and out["took_ms"] > 0
        got = {r["video_id"]: r["score"] for r in out["results"]}
        assert set(got) == set(info.ids)
        for vid, score in expected[key].items():
            assert got[vid] == pytest.approx(score, abs=1e-6), (key, vid)
        scores = [r["score"] for r in out["results"]]
        assert scores == sorted(scores, reverse=True)
    top = by_file["results"][0]
    assert top["video_id"] == qid
    seg = top["segments"][0]
    assert set(seg) == {"query_start", "query_end", "target_start", "target_end", "score"}
    assert seg["query_end"] > seg["query_start"] and seg["target_end"] > seg["target_start"]


def test_search_accepts_json_and_topk(client, service_collection):
    qid = service_collection.info.queries[1]
    out = client.post("/api/search", params={"topk": 3}, json={"video_id": qid}).json()
    assert len(out["results"]) == 3 and out["results"][0]["video_id"] == qid
    assert out["budget"] == 0.05 and out["stage"] == "dns"          # the CLI's defaults


@pytest.mark.parametrize("kwargs,status,message", [
    (dict(data={"video_id": "nope"}), 404, "no video 'nope'"),
    (dict(data={}), 400, "send a video file"),
    (dict(json={}), 400, "send a video file"),
    (dict(), 400, "send a video file"),
    (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "malformed JSON"),
    (dict(content=b"[1]", headers={"content-type": "application/json"}), 400, "must be an object"),
    (dict(content=b"abc", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
    (dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 400, "boundary"),
])
def test_search_request_errors(client, kwargs, status, message):
    r = client.post("/api/search", **kwargs)
    assert r.status_code == status and message in r.json()["detail"], r.json()


@pytest.mark.parametrize("params", [{"stage": "teacher"}, {"budget": 1.5}, {"budget": -0.1}, {"topk": 0},
                                    {"topk": 101}, {"budget": "x"}])
def test_search_option_errors(client, service_collection, params):
    r = client.post("/api/search", params=params, data={"video_id": service_collection.info.queries[0]})
    assert r.status_code == 422 and r.json()["detail"]


def test_file_and_id_together_is_an_error(client, service_collection, collection):
    vid = service_collection.info.queries[0]
    r = upload(client, video_file(service_collection, vid), data={"video_id": vid})
    assert r.status_code == 400 and "not both" in r.json()["detail"]
    assert_nothing_left(collection)


# -- bad uploads -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_files(service_collection, tmp_path_factory):
    import av
    from media import write_audio
    d = tmp_path_factory.mktemp("bad")
    src = video_file(service_collection, service_collection.info.queries[0])
    data = open(src, "rb").read()
    (d / "text.mp4").write_bytes(b"this is not a video at all\n" * 10)
    (d / "empty.mp4").write_bytes(b"")
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])           # moov at the end: cannot open
    with av.open(src) as i, av.open(str(d / "fast.mp4"), "w", options={"movflags": "faststart"}) as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.dts is not None:
                p.stream = out
                o.mux(p)
    fast = (d / "fast.mp4").read_bytes()
    (d / "fast_cut.mp4").write_bytes(fast[: len(fast) // 2])      # index first: demuxes, then stops short
    write_audio(d / "audio.m4a")
    (d / "video.txt").write_bytes(data)                            # a real video with a wrong name
    return d


@pytest.mark.parametrize("name,status,message", [
    ("text.mp4", 415, "not a readable video"),
    ("empty.mp4", 400, "empty upload"),
    ("cut.mp4", 415, "cut short"),
    ("fast_cut.mp4", 422, "truncated"),
    ("audio.m4a", 415, "no video stream"),
])
@pytest.mark.parametrize("url", ["/api/search", "/api/videos"])
def test_bad_uploads_get_a_4xx_that_says_why(client, collection, bad_files, service_collection, name, status,
                                             message, url):
    before = client.get("/api/health").json()["videos"]
    r = upload(client, str(bad_files / name), name=name, url=url)
    assert r.status_code == status, r.json()
    assert message in r.json()["detail"]
    assert_nothing_left(collection)
    assert client.get("/api/health").json()["videos"] == before
    qid = service_collection.info.queries[0]         # nothing else is affected
    assert client.post("/api/search", data={"video_id": qid}).json()["results"][0]["video_id"] == qid


def test_type_is_checked_by_decoding_not_by_name(client, bad_files, service_collection):
    r = upload(client, str(bad_files / "video.txt"), name="video.txt")
    assert r.status_code == 200
    assert r.json()["results"][0]["video_id"] == service_collection.info.queries[0]
    r = upload(client, str(bad_files / "text.mp4"), name="clip.mp4")
    assert r.status_code == 415


def test_too_large_uploads_are_refused(collection, service_collection):
    path = video_file(service_collection, service_collection.info.queries[0])
    size = os.path.getsize(path)
    with make_client(collection, max_upload_bytes=size - 1) as small:
        for url in ("/api/search", "/api/videos"):
            r = upload(small, path, url=url)
            assert r.status_code == 413 and "too large" in r.json()["detail"]
            assert_nothing_left(collection)

        # refused from the declared length, before the body is read
        def body():
            yield b"x" * 10
            raise AssertionError("the body should not be read")
        r = small.post("/api/search", content=body(), headers={
            "content-type": "multipart/form-data; boundary=b", "content-length": str(size + 2 ** 20)})
        assert r.status_code == 413
        # without a declared length (chunked): counted while streaming
        r = small.post("/api/search", content=_multipart_chunks(path, "b"),
                       headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        assert_nothing_left(collection)
    with make_client(collection, max_upload_bytes=size) as exact:
        assert upload(exact, path).status_code == 200


def _multipart_chunks(path, boundary):
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"v.mp4\"\r\n"
           "Content-Type: video/mp4\r\n\r\n").encode()
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def test_incomplete_and_misplaced_multipart(client, collection, service_collection):
    path = video_file(service_collection, service_collection.info.queries[0])
    chunks = list(_multipart_chunks(path, "b"))
    r = client.post("/api/search", content=b"".join(chunks[:-1]),
                    headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400 and "incomplete" in r.json()["detail"]
    with open(path, "rb") as f:
        r = client.post("/api/search", files={"other": ("v.mp4", f, "video/mp4")})
    assert r.status_code == 400 and "field 'video'" in r.json()["detail"]
    with open(path, "rb") as f, open(path, "rb") as g:
        r = client.post("/api/search", files=[("video", ("a.mp4", f)), ("video", ("b.mp4", g))])
    assert r.status_code == 400 and "more than one file" in r.json()["detail"]
    assert_nothing_left(collection)


# -- the token ----------------------------------------------------------------------------------------

def _every_api_call(vid):
    return [("get", "/api/health", {}), ("get", "/api/videos", {}), ("get", f"/api/videos/{vid}", {}),
            ("get", f"/api/videos/{vid}/thumbnail", {}), ("get", f"/api/videos/{vid}/stream", {}),
            ("get", "/api/jobs/0123", {}), ("post", "/api/search", {"data": {"video_id": vid}}),
            ("post", "/api/videos", {"data": {"video_id": "x"}})]


def test_token_guards_every_api_call(collection, service_collection):
    vid = service_collection.info.queries[0]
    with make_client(collection, token="s3cret") as c:
        for method, url, kw in _every_api_call(vid):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                            {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer "}):
                r = getattr(c, method)(url, headers=headers, **kw)
                assert r.status_code == 401, (url, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer" and r.json()["detail"]
            r = getattr(c, method)(url, headers={"Authorization": "Bearer s3cret"}, **kw)
            assert r.status_code in (200, 206, 400, 404), (url, r.status_code)
            assert r.status_code != 404 or "jobs" in url
        # the upload route refuses before reading the body
        with open(video_file(service_collection, vid), "rb") as f:
            r = c.post("/api/search", files={"video": ("v.mp4", f)})
        assert r.status_code == 401
        assert_nothing_left(collection)
        # the page itself and the OpenAPI description need no token; they reveal nothing
        assert c.get("/").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_signed_media_urls(collection, service_collection):
    vid = service_collection.info.queries[0]
    H = {"Authorization": "Bearer s3cret"}
    with make_client(collection, token="s3cret") as c:
        v = c.get(f"/api/videos/{vid}", headers=H).json()
        assert "sig=" in v["stream_url"] and "sig=" in v["thumbnail_url"]
        assert c.get(v["stream_url"]).status_code == 200
        assert c.get(v["stream_url"], headers={"Range": "bytes=0-9"}).status_code == 206
        assert c.get(v["thumbnail_url"]).status_code == 200
        res = c.post("/api/search", data={"video_id": vid}, headers=H).json()["results"][0]
        assert c.get(res["thumbnail_url"]).status_code == 200
        # a signature is bound to its path and expiry
        other = c.get("/api/videos", headers=H).json()["videos"][-1]
        forged = other["stream_url"].split("?")[0] + "?" + v["stream_url"].split("?")[1]
        assert c.get(forged).status_code == 401
        swapped = v["stream_url"].replace("/stream?", "/thumbnail?")
        assert c.get(swapped).status_code == 401
        exp = int(v["stream_url"].split("exp=")[1].split("&")[0])
        later = v["stream_url"].replace(f"exp={exp}", f"exp={exp + 3600}")
        assert c.get(later).status_code == 401
        assert c.get(v["stream_url"].replace("sig=", "sig=0")).status_code == 401
    with make_client(collection, token="s3cret", media_url_ttl=1) as c:
        url = c.get(f"/api/videos/{vid}", headers=H).json()["stream_url"]
        exp = int(url.split("exp=")[1].split("&")[0])
        time.sleep(max(0.0, exp - time.time()) + 1.1)
        r = c.get(url)
        assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_token_from_the_environment_and_remote_binding(monkeypatch, capsys):
    from dns_jax.service import cli
    monkeypatch.delenv("DNS_JAX_SERVICE_TOKEN", raising=False)
    assert cli.serve_main(["--workdir", "x", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without a token" in capsys.readouterr().err
    assert cli.serve_main(["--workdir", "/nonexistent", "--host", "192.168.1.5", "--no-warm-up",
                           "--token", "t"]) == 2             # allowed with a token (the workdir fails)
    assert "is not a dns-jax work directory" in capsys.readouterr().err
    monkeypatch.setenv("DNS_JAX_SERVICE_TOKEN", "t")
    assert cli.serve_main(["--workdir", "/nonexistent", "--host", "::", "--no-warm-up"]) == 2
    assert "not a dns-jax work directory" in capsys.readouterr().err
    monkeypatch.delenv("DNS_JAX_SERVICE_TOKEN")
    assert cli.serve_main(["--workdir", "/nonexistent", "--host", "10.0.0.1", "--allow-remote",
                           "--no-warm-up"]) == 2
    assert "not a dns-jax work directory" in capsys.readouterr().err
    assert cli.is_loopback("127.0.0.1") and cli.is_loopback("localhost") and cli.is_loopback("::1")
    assert not cli.is_loopback("0.0.0.0") and not cli.is_loopback("example.org")


# -- additions ---------------------------------------------------------------------------------------

def wait_job(client, job, timeout=120, **kw):
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = client.get(f"/api/jobs/{job}", **kw).json()
        if s["state"] in ("done", "failed"):
            return s
        time.sleep(0.1)
    raise AssertionError(f"job {job} did not finish: {s}")


@pytest.fixture
def fresh(service_collection, tmp_path):
    """A collection on a private copy of the work directory, and its client."""
    from dns_jax.service.collection import Collection
    coll = Collection(copy_workdir(service_collection, tmp_path / "work"))
    with make_client(coll) as c:
        yield coll, c


def test_addition_job_then_search_sees_the_video(fresh, service_collection, tmp_path):
    coll, c = fresh
    n = len(service_collection.info.ids)
    src = video_file(service_collection, "s0_c0_crop")
    r = upload(c, src, name="../../evil name.mp4", url="/api/videos", data={"video_id": "added/one"})
    assert r.status_code == 202, r.json()
    job = r.json()["job"]
    assert r.json()["video_id"] == "added/one" and r.json()["status_url"] == f"/api/jobs/{job}"
    s = wait_job(c, job)
    assert s["state"] == "done" and s["progress"] == 1.0 and s["error"] is None
    assert c.get("/api/health").json()["videos"] == n + 1
    v = c.get("/api/videos/added/one").json()
    assert v["source"] == "added" and v["filename"] == "evil name.mp4" and v["frames"] >= 4
    assert c.get("/api/videos/added/one/stream").content == open(src, "rb").read()
    assert c.get("/api/videos/added/one/thumbnail").status_code == 200
    # stored under a random key inside the store, never under the id or the client's name
    added = os.path.join(coll.workdir, "service", "added")
    names = os.listdir(added)
    assert len(names) == 3 and all(len(x.split(".")[0]) == 32 for x in names)
    assert not os.path.exists(os.path.join(coll.workdir, "service", "evil name.mp4"))
    # searches see it, with the same scores as for the identical indexed copy
    out = c.post("/api/search", params={"stage": "fine", "topk": 100}, data={"video_id": "added/one"}).json()
    got = {x["video_id"]: x["score"] for x in out["results"]}
    assert got["added/one"] == pytest.approx(got["s0_c0_crop"], abs=1e-5)
    assert {x["video_id"] for x in out["results"][:2]} == {"added/one", "s0_c0_crop"}
    # the index on disk is consistent and complete (a fresh reader sees it too)
    from dns_jax.index import Index
    assert "added/one" in Index.open(os.path.join(coll.workdir, "index"))
    # ids are unique: the same id again, or while queued, is a conflict
    r = upload(c, src, url="/api/videos", data={"video_id": "added/one"})
    assert r.status_code == 409 and "already has" in r.json()["detail"]
    # without an id: the file name's stem, made safe, with a suffix when taken
    r1 = upload(c, src, name="s0_c0_crop.mp4", url="/api/videos").json()
    assert r1["video_id"] == "s0_c0_crop-2"
    assert wait_job(c, r1["job"])["state"] == "done"
    assert_nothing_left(coll)


def test_addition_errors(fresh, service_collection, monkeypatch):
    coll, c = fresh
    assert c.post("/api/videos", data={"video_id": "x"}).status_code == 400
    r = c.get("/api/jobs/no-such-job")
    assert r.status_code == 404 and "no job" in r.json()["detail"]
    src = video_file(service_collection, "s0_c0_crop")
    for bad in ("", " ", "/lead", "x" * 201, "a\nb"):
        r = upload(c, src, url="/api/videos", data={"video_id": bad})
        if bad == "":                               # empty: treated as absent (the file name is used)
            assert r.status_code == 202
            wait_job(c, r.json()["job"])
        else:
            assert r.status_code == 400 and "video_id" in r.json()["detail"]
    # a failure inside the worker: the job says why, nothing is added, nothing is left behind
    from dns_jax.service.collection import CollectionError

    def broken(path):
        raise CollectionError("the upload: decoding stopped after 3 frames (truncated or corrupt file)")
    monkeypatch.setattr(coll, "extract", broken)
    n = c.get("/api/health").json()["videos"]
    r = upload(c, src, url="/api/videos", data={"video_id": "will_fail"})
    s = wait_job(c, r.json()["job"])
    assert s["state"] == "failed" and "truncated or corrupt" in s["error"]
    assert c.get("/api/health").json()["videos"] == n
    assert c.get("/api/videos/will_fail").status_code == 404
    added = os.path.join(coll.workdir, "service", "added")
    assert len(os.listdir(added)) == 3                      # only the one successful addition above
    assert_nothing_left(coll)


def test_a_crash_before_the_index_commit_leaves_the_video_out(service_collection, tmp_path, monkeypatch):
    """Simulated SIGKILL between the stored files and the index commit; then one after the commit
    but before the job's state was saved. A restart settles both consistently."""
    from dns_jax.index import Index
    from dns_jax.index.store import Index as StoreIndex
    from dns_jax.service.collection import Collection, QueryId
    from dns_jax.service.jobs import Jobs
    work = copy_workdir(service_collection, tmp_path / "work")
    coll = Collection(work)
    src = tmp_path / "v.mp4"

    class Killed(BaseException):      # like a signal: no except-Exception cleanup runs
        pass

    def killed(*a, **k):
        raise Killed()
    shutil.copy(video_file(service_collection, "s1_c0_crop"), src)
    monkeypatch.setattr(StoreIndex, "add", killed)
    coll.write_json("jobs", [{"id": "j1", "state": "running", "video_id": "lost", "created": 1.0}])
    with pytest.raises(Killed):
        coll.add(str(src), "lost", job="j1", extension=".mp4")
    monkeypatch.undo()
    assert len(os.listdir(os.path.join(work, "service", "added"))) == 3      # what a crash leaves
    (tmp_path / "leftover").write_bytes(b"x")
    shutil.copy(tmp_path / "leftover", os.path.join(work, "service", "uploads", "upload-abc"))

    coll2 = Collection(work)
    jobs = Jobs(coll2)
    s = jobs.get("j1")
    assert s.state == "failed" and "not added" in s.error
    assert "lost" not in Index.open(os.path.join(work, "index")) and coll2.get("lost") is None
    assert os.listdir(os.path.join(work, "service", "added")) == []
    assert os.listdir(os.path.join(work, "service", "uploads")) == []

    # committed, but the job still says running (killed before its state was saved)
    shutil.copy(video_file(service_collection, "s1_c0_crop"), src)
    coll2.add(str(src), "kept", job="j2", extension=".mp4")
    coll2.write_json("jobs", [{"id": "j2", "state": "running", "video_id": "kept", "created": 1.0}])
    coll3 = Collection(work)
    assert Jobs(coll3).get("j2").state == "done"
    assert coll3.get("kept").source == "added" and coll3.video_path("kept")
    top = coll3.search(QueryId("kept"), "fine", topk=2).results
    assert {m.video_id for m in top} == {"kept", "s1_c0_crop"}


def test_searches_during_an_addition_match_sequential_ones(fresh, service_collection):
    """16 concurrent searches while an addition runs: each answer equals the sequential answer
    either before or after the addition (never a mix), and nothing fails."""
    from concurrent.futures import ThreadPoolExecutor
    coll, c = fresh
    queries = [(q, st) for q in service_collection.info.queries for st in ("coarse", "fine", "dns")]

    def ask(q, stage):
        r = c.post("/api/search", params={"stage": stage, "budget": 0.5, "topk": 100}, data={"video_id": q})
        assert r.status_code == 200, r.text
        return [(x["video_id"], round(x["score"], 5)) for x in r.json()["results"]]

    before = {k: ask(*k) for k in queries}
    r = upload(c, video_file(service_collection, "s1_c1_hflip"), url="/api/videos", data={"video_id": "during"})
    job = r.json()["job"]
    while c.get(f"/api/jobs/{job}").json()["state"] == "queued":
        time.sleep(0.01)
    with ThreadPoolExecutor(16) as pool:
        futures = [(k, pool.submit(ask, *k)) for _ in range(3) for k in queries]
        answers = [(k, f.result()) for k, f in futures]
    state_after_batch = c.get(f"/api/jobs/{job}").json()
    assert wait_job(c, job)["state"] == "done"
    after = {k: ask(*k) for k in queries}
    assert any(before[k] != after[k] for k in queries)       # the addition shows in the answers
    for k, a in answers:
        assert a == before[k] or a == after[k], k
    # the batch overlapped the addition (it started once the job was running)
    assert state_after_batch["started"] is not None


def test_the_demo_folder_is_served_from_its_build(tmp_path):
    from dns_jax.service.collection import resolve_workdir
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "state.json").write_text("{}")
    assert resolve_workdir(str(tmp_path)) == str(tmp_path / "build")
    assert resolve_workdir(str(tmp_path / "build")) == str(tmp_path / "build")
    assert resolve_workdir(str(tmp_path / "nope")) == str(tmp_path / "nope")
