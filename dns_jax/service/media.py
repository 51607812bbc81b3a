"""Video files as the service sees them: a type check by decoding, a thumbnail, a MIME type.

The check decides from the file's content (FFmpeg's probe of the container, a decoded frame, the
packets the container declares), never from a file name.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Optional

from dns_jax.features.video import _stream_fps, declared_frames, truncation_tolerance

# container (first name of FFmpeg's format) -> (stored extension, MIME type)
_FORMATS = {"mp4": (".mp4", "video/mp4"), "mov": (".mov", "video/quicktime"),
            "matroska": (".mkv", "video/x-matroska"), "webm": (".webm", "video/webm"),
            "avi": (".avi", "video/x-msvideo"), "flv": (".flv", "video/x-flv"),
            "mpegts": (".ts", "video/mp2t"), "mpeg": (".mpg", "video/mpeg"), "ogg": (".ogv", "video/ogg"),
            "asf": (".wmv", "video/x-ms-asf"), "3gp": (".3gp", "video/3gpp")}
_MIME_BY_EXTENSION = {ext: mime for ext, mime in _FORMATS.values()}


class BadVideo(ValueError):
    """A file that is not a usable video; the message says why (for the client) and `status` is
    the HTTP status that fits: 400 empty, 415 not a video, 422 a video that does not decode whole."""

    def __init__(self, message: str, status: int = 415):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    container: str                   # FFmpeg's format name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    width: int
    height: int
    fps: float
    duration: Optional[float]        # seconds, when the file says
    frames: int                      # frames the file declares (0: unknown)
    extension: str                   # where the service stores it: ".mp4", ".mkv", ... (".video" unknown)
    mime: str

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "extension"}


def _container_kind(container) -> tuple:
    names = container.format.name.split(",")
    if "mp4" in names:                       # the mov/mp4 family: QuickTime only for a 'qt  ' brand
        brand = (container.metadata or {}).get("major_brand", "")
        return _FORMATS["mov" if brand.strip() == "qt" else "mp4"]
    if names[0] == "matroska" and "webm" in names:
        doctype = (container.metadata or {}).get("DOCTYPE") or ""
        return _FORMATS["webm" if doctype == "webm" else "matroska"]
    return _FORMATS.get(names[0], (".video", "application/octet-stream"))


def probe(path: str) -> MediaInfo:
    """Check that `path` holds a decodable video: FFmpeg opens it, it has a video stream, its first
    frame decodes and its packets reach the length it declares (a truncated file stops short).
    BadVideo with the reason otherwise."""
    import av

    size = os.path.getsize(path)
    if size == 0:
        raise BadVideo("empty upload (0 bytes)", 400)
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise BadVideo(f"not a readable video, or one cut short (FFmpeg cannot open it: {_reason(e)})") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise BadVideo(f"no video stream (the file has: {', '.join(kinds)})")
        stream = container.streams.video[0]
        rate = _stream_fps(stream)
        declared, _ = declared_frames(container, stream)
        try:
            frame = next(container.decode(stream))
        except StopIteration:
            raise BadVideo("the video stream has no frame", 422) from None
        except av.FFmpegError as e:
            raise BadVideo(f"the video stream does not decode ({_reason(e)})", 422) from None
        codec = stream.codec_context.name
        width, height = frame.width, frame.height
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else (
            container.duration / 1e6 if container.duration else None)
        ext, mime = _container_kind(container)
        # count the packets up to the end of the file (demuxing, no decoding: fast)
        container.seek(0)
        packets = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
        except av.FFmpegError as e:
            raise BadVideo(f"the file breaks off after {packets} video packets ({_reason(e)}); "
                           "truncated or corrupt", 422) from None
        if declared and declared - packets > truncation_tolerance(declared, rate):
            raise BadVideo(f"truncated: the file holds {packets} of the {declared} frames it declares", 422)
        return MediaInfo(container.format.name, codec, width, height, round(rate, 3), duration,
                         declared or packets, ext, mime)


def _reason(e: Exception) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(": '", 1)[0]                    # FFmpeg errors end with the file name


def thumbnail(path: str, at: float = 1.0, width: int = 320, fmt: str = "jpeg") -> bytes:
    """One frame near `at` seconds (the last one if the video is shorter), scaled to `width`
    pixels wide, encoded as JPEG or PNG."""
    import av
    from PIL import Image

    with av.open(path) as container:
        stream = container.streams.video[0]
        best = None
        if at > 0 and stream.time_base:
            try:
                container.seek(int(at / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0)
        for frame in container.decode(stream):
            best = frame
            if frame.time is None or frame.time >= at:
                break
        if best is None:
            raise BadVideo("the video stream has no frame")
        img = best.to_image()
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.BILINEAR)
    out = io.BytesIO()
    if fmt == "png":
        img.save(out, "PNG", optimize=True)
    else:
        img.convert("RGB").save(out, "JPEG", quality=82)
    return out.getvalue()


def mime_type(path: str) -> str:
    return _MIME_BY_EXTENSION.get(os.path.splitext(path)[1].lower(), "application/octet-stream")
