"""The retrieval service: a FastAPI application over one `Collection`.

    create_app(collection, settings) -> FastAPI

All state (the collection, the job worker, the settings, caches) is created here and held by the
application (`app.state`); nothing is global. Blocking work (decoding, feature extraction, the
networks) runs in the framework's thread pool, so the event loop keeps answering while a search or
an addition runs. See docs/service.md for the API.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import time
from typing import Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from dns_jax.service import media
from dns_jax.service.auth import Auth, Unauthorized, video_path
from dns_jax.service.collection import CollectionError, QueryFile, QueryId, VideoExists
from dns_jax.service.jobs import Jobs
from dns_jax.service.uploads import UploadError, read_body

STATIC = os.path.join(os.path.dirname(__file__), "static")
DEFAULT_MAX_UPLOAD_MB = 512


@dataclasses.dataclass
class Settings:
    token: Optional[str] = None          # Bearer token for every /api call; None: open (loopback only)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2 ** 20
    max_topk: int = 100
    media_url_ttl: int = 3600            # seconds a signed thumbnail/stream URL stays valid
    job_stop_timeout: float = 30.0       # on shutdown, how long the running addition may finish
    thumbnail_cache: int = 256           # thumbnails kept in memory


_UPLOAD_BODY = {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "video": {"type": "string", "format": "binary", "description": "the video file"},
        "video_id": {"type": "string"}}}},
    "application/json": {"schema": {"type": "object", "properties": {"video_id": {"type": "string"}}}},
}


class _Headers:
    """Pure ASGI middleware: security headers on every response (streams stay streams)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    headers += [(b"x-frame-options", b"DENY"), (b"content-security-policy",
                                b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                                b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'")]
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(collection, settings: Optional[Settings] = None, log=print) -> FastAPI:
    settings = settings or Settings()
    auth = Auth(settings.token, settings.media_url_ttl)
    jobs = Jobs(collection, log=log)
    thumbs: "collections.OrderedDict[tuple, bytes]" = collections.OrderedDict()
    thumbs_lock = threading.Lock()
    probed: dict = {}                    # path -> (mtime, MediaInfo or BadVideo)
    add_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        jobs.start()
        try:
            yield
        finally:
            finished = await run_in_threadpool(jobs.stop, settings.job_stop_timeout)
            if not finished:
                log("an addition was still running at shutdown; the next start settles it")

    app = FastAPI(title="dns-jax retrieval service", version="1", lifespan=lifespan,
                  description="Distill-and-Select near-duplicate video retrieval over a `dns-jax build` "
                              "collection. Every /api call needs `Authorization: Bearer TOKEN` when the "
                              "service was started with a token.")
    app.state.collection, app.state.jobs, app.state.settings, app.state.auth = collection, jobs, settings, auth
    app.add_middleware(_Headers)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request, exc: Unauthorized):
        return JSONResponse({"detail": exc.message}, 401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(UploadError)
    async def bad_upload(request, exc: UploadError):
        return JSONResponse({"detail": exc.message}, exc.status, headers={"Connection": "close"}
                            if exc.status == 413 else None)

    def require_token(request: Request):
        auth.check_header(request.headers.get("authorization"))

    def require_media_access(request: Request, video_id: str, exp: Optional[str] = Query(None),
                             sig: Optional[str] = Query(None)):
        suffix = "/" + request.url.path.rsplit("/", 1)[-1]
        auth.check_media(request.headers.get("authorization"), video_path(video_id, suffix), exp, sig)

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])
    media_api = APIRouter(prefix="/api", dependencies=[Depends(require_media_access)])

    def links(video_id: str) -> dict:
        return {"thumbnail_url": auth.sign(video_path(video_id, "/thumbnail")),
                "stream_url": auth.sign(video_path(video_id, "/stream"))}

    def describe(info) -> dict:
        return {"video_id": info.video_id, "frames": info.frames, "source": info.source,
                "filename": info.filename, "size_bytes": info.size_bytes, **links(info.video_id)}

    def probe(path: str):
        """media.probe, cached per file version (it reads the whole container)."""
        mtime = os.path.getmtime(path)
        hit = probed.get(path)
        if hit is None or hit[0] != mtime:
            try:
                hit = (mtime, media.probe(path))
            except media.BadVideo as e:
                hit = (mtime, e)
            probed[path] = hit
        return hit[1]

    def path_of(video_id: str) -> str:
        if collection.get(video_id) is None:
            raise HTTPException(404, f"no video {video_id!r} in the collection")
        path = collection.video_path(video_id)
        if path is None:
            raise HTTPException(404, f"the file of video {video_id!r} is not available")
        return path

    async def checked_upload(request: Request):
        up = await read_body(request, collection.upload_dir(), settings.max_upload_bytes)
        info = None
        if up.path is not None:
            try:
                info = await run_in_threadpool(media.probe, up.path)
            except media.BadVideo as e:
                up.cleanup()
                raise HTTPException(e.status, f"bad upload: {e}") from None
        return up, info

    # -- routes -------------------------------------------------------------------------------
    @api.get("/health", summary="Liveness and collection size")
    def health():
        return {"status": "ok", "videos": collection.count()}

    @api.post("/search", summary="Rank the collection for a video (upload or indexed id)",
              openapi_extra={"requestBody": {"content": _UPLOAD_BODY, "required": True}})
    async def search(request: Request, stage: Literal["coarse", "fine", "dns"] = "dns",
                     budget: float = Query(0.05, ge=0.0, le=1.0,
                                           description="DnS: fraction re-ranked by the fine student"),
                     topk: int = Query(10, ge=1, description="results returned (at most max_topk)")):
        if topk > settings.max_topk:
            raise HTTPException(422, f"topk must be at most {settings.max_topk}")
        up, _ = await checked_upload(request)
        try:
            video_id = up.fields.get("video_id")
            if up.path is not None and video_id:
                raise HTTPException(400, "send either a video file or a video_id, not both")
            if up.path is not None:
                stem = os.path.splitext(up.filename or "")[0] or "upload"
                query = QueryFile(up.path, stem)
            elif video_id:
                if collection.get(video_id) is None:
                    raise HTTPException(404, f"no video {video_id!r} in the collection")
                query = QueryId(video_id)
            else:
                raise HTTPException(400, "send a video file in form field 'video', or the id of an "
                                         "indexed video in field 'video_id'")
            t0 = time.perf_counter()
            try:
                out = await run_in_threadpool(collection.search, query, stage, budget, topk)
            except CollectionError as e:
                raise HTTPException(422, f"bad upload: {e}") from None
            took = (time.perf_counter() - t0) * 1e3
        finally:
            up.cleanup()
        return {"query": out.query, "query_frames": out.query_frames, "stage": stage,
                "budget": budget, "topk": topk, "took_ms": round(took, 2),
                "results": [{"video_id": m.video_id, "score": m.score, "frames": m.frames,
                             "segments": m.segments, **links(m.video_id)} for m in out.results]}

    @api.post("/videos", status_code=202, summary="Add a video to the collection (a background job)",
              openapi_extra={"requestBody": {"content": {"multipart/form-data": _UPLOAD_BODY["multipart/form-data"]},
                                             "required": True}})
    async def add_video(request: Request):
        up, info = await checked_upload(request)
        try:
            if up.path is None:
                raise HTTPException(400, "send the video file in form field 'video'")
            with add_lock:
                try:
                    vid = collection.new_video_id(up.fields.get("video_id") or None, up.filename)
                except VideoExists as e:
                    raise HTTPException(409, str(e)) from None
                except CollectionError as e:
                    raise HTTPException(400, str(e)) from None
                if vid in jobs.pending_ids():
                    raise HTTPException(409, f"video {vid!r} is already being added")
                try:
                    job = jobs.submit(up.path, vid, up.filename, info.extension)
                except RuntimeError as e:
                    raise HTTPException(503, str(e)) from None
                up.take()
        finally:
            up.cleanup()
        return {"job": job.id, "video_id": vid, "status_url": f"/api/jobs/{job.id}"}

    @api.get("/jobs/{job_id}", summary="State of an addition")
    def job_state(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job.as_dict()

    @api.get("/videos", summary="The indexed videos, paged")
    def list_videos(offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)):
        total, infos = collection.list(offset, limit)
        return {"total": total, "offset": offset, "limit": limit, "videos": [describe(i) for i in infos]}

    @media_api.get("/videos/{video_id:path}/thumbnail", summary="A frame of the video as JPEG or PNG",
                   response_class=Response, responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}})
    def thumbnail(video_id: str, t: float = Query(1.0, ge=0.0, description="seconds into the video"),
                  format: Literal["jpeg", "png"] = "jpeg", width: int = Query(320, ge=16, le=1280)):
        path = path_of(video_id)
        key = (path, os.path.getmtime(path), round(t, 2), format, width)
        with thumbs_lock:
            data = thumbs.get(key)
            if data is not None:
                thumbs.move_to_end(key)
        if data is None:
            try:
                data = media.thumbnail(path, t, width, format)
            except Exception as e:
                raise HTTPException(500, f"cannot decode a frame of {video_id!r}: {e}") from None
            with thumbs_lock:
                thumbs[key] = data
                while len(thumbs) > settings.thumbnail_cache:
                    thumbs.popitem(last=False)
        return Response(data, media_type=f"image/{format}", headers={"Cache-Control": "private, max-age=3600"})

    @media_api.get("/videos/{video_id:path}/stream", summary="The video file (HTTP range requests supported)",
                   response_class=FileResponse, responses={200: {"content": {"video/*": {}}}, 206: {}})
    def stream(video_id: str):
        path = path_of(video_id)
        info = probe(path)
        mime = info.mime if isinstance(info, media.MediaInfo) else media.mime_type(path)
        return FileResponse(path, media_type=mime, content_disposition_type="inline")

    @api.get("/videos/{video_id:path}", summary="Metadata of an indexed video")
    def get_video(video_id: str):
        info = collection.get(video_id)
        if info is None:
            raise HTTPException(404, f"no video {video_id!r} in the collection")
        out = describe(info)
        path = collection.video_path(video_id)
        if path is not None:
            info = probe(path)
            out["media"] = info.as_dict() if isinstance(info, media.MediaInfo) else {"error": str(info)}
        return out

    app.include_router(media_api)     # before /videos/{id:path}, which would swallow the suffixes
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
