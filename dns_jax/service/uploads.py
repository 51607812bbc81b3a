"""Request bodies: a multipart upload streamed to a temporary file under a size limit, or a small
JSON / url-encoded form.

The file part is written as it arrives (never held in memory, never spooled by the framework) and
the request is refused with 413 as soon as it passes the limit. The temporary file gets a random
name in the collection's upload folder and is removed by `Upload.cleanup()` (the routes call it in
a `finally`), whatever happened.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Dict, Optional
from urllib.parse import parse_qsl

MAX_FIELD_BYTES = 64 * 1024          # every non-file field together
MULTIPART_OVERHEAD = 64 * 1024       # boundaries and part headers allowed beyond the file limit


class UploadError(Exception):
    """A request body the service refuses: `status` (400, 411, 413, 415) and a reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class Upload:
    fields: Dict[str, str]
    path: Optional[str] = None       # the uploaded file, if any
    filename: Optional[str] = None   # as the client named it (display only, never a path)
    size: int = 0

    def cleanup(self) -> None:
        if self.path:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.path = None

    def take(self) -> str:
        """Hand the file over to a new owner (who then removes or moves it)."""
        path, self.path = self.path, None
        return path


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n} bytes"


async def read_body(request, upload_dir: str, max_bytes: int, file_field: str = "video") -> Upload:
    """Parse the request body: multipart/form-data (one file in `file_field`, other fields as
    text), application/json (an object) or application/x-www-form-urlencoded."""
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    ctype = ctype.decode("latin-1").lower()
    length = request.headers.get("content-length")
    if length is not None:
        try:
            length = int(length)
        except ValueError:
            raise UploadError(400, "malformed Content-Length header") from None
    if ctype == "multipart/form-data":
        if length is not None and length > max_bytes + MULTIPART_OVERHEAD:
            raise UploadError(413, f"upload too large: {_mb(length)}, the limit is {_mb(max_bytes)}")
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError(400, "multipart/form-data without a boundary")
        return await _multipart(request, boundary, upload_dir, max_bytes, file_field)
    if ctype in ("application/json", "application/x-www-form-urlencoded"):
        if length is not None and length > MAX_FIELD_BYTES:
            raise UploadError(413, f"request body too large ({_mb(length)}); send videos as multipart/form-data")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FIELD_BYTES:
                raise UploadError(413, "request body too large; send videos as multipart/form-data")
        if ctype == "application/json":
            try:
                obj = json.loads(body or b"{}")
            except ValueError as e:
                raise UploadError(400, f"malformed JSON body: {e}") from None
            if not isinstance(obj, dict):
                raise UploadError(400, "the JSON body must be an object")
            return Upload({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()})
        try:
            return Upload(dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)))
        except UnicodeDecodeError:
            raise UploadError(400, "the form is not UTF-8") from None
    if not ctype and length in (None, 0):
        return Upload({})
    raise UploadError(415, f"unsupported content type {ctype or 'none'!r}: send multipart/form-data "
                           f"(a file in field {file_field!r}) or JSON")


async def _multipart(request, boundary: bytes, upload_dir: str, max_bytes: int, file_field: str) -> Upload:
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    up = Upload({})
    state = {"headers": {}, "field": None, "name": None, "value": bytearray(), "file": None,
             "hname": bytearray(), "hvalue": bytearray(), "field_bytes": 0, "error": None}

    def fail(status, message):
        if state["error"] is None:
            state["error"] = UploadError(status, message)

    def on_part_begin():
        state["headers"] = {}
        state["name"] = None
        state["value"] = bytearray()

    def on_header_field(data, start, end):
        state["hname"] += data[start:end]

    def on_header_value(data, start, end):
        state["hvalue"] += data[start:end]

    def on_header_end():
        state["headers"][bytes(state["hname"]).decode("latin-1").lower()] = bytes(state["hvalue"])
        state["hname"], state["hvalue"] = bytearray(), bytearray()

    def on_headers_finished():
        disp, opts = parse_options_header(state["headers"].get("content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in opts:
            if name != file_field:
                fail(400, f"unexpected file in field {name!r}; send the video in field {file_field!r}")
                return
            if up.path is not None:
                fail(400, f"more than one file in field {file_field!r}")
                return
            fd, path = tempfile.mkstemp(prefix="upload-", dir=upload_dir)
            up.path = path
            up.filename = os.path.basename(opts[b"filename"].decode("utf-8", "replace").replace("\\", "/"))
            state["file"] = os.fdopen(fd, "wb")

    def on_part_data(data, start, end):
        if state["error"] is not None:
            return
        chunk = data[start:end]
        if state["file"] is not None:
            up.size += len(chunk)
            if up.size > max_bytes:
                fail(413, f"upload too large: more than the limit of {_mb(max_bytes)}")
                return
            state["file"].write(chunk)
        else:
            state["field_bytes"] += len(chunk)
            if state["field_bytes"] > MAX_FIELD_BYTES:
                fail(413, "form fields too large")
                return
            state["value"] += chunk

    def on_part_end():
        if state["file"] is not None:
            state["file"].close()
            state["file"] = None
        elif state["name"] is not None and state["error"] is None:
            try:
                up.fields[state["name"]] = bytes(state["value"]).decode("utf-8")
            except UnicodeDecodeError:
                fail(400, f"form field {state['name']!r} is not UTF-8")

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as e:
                raise UploadError(400, f"malformed multipart body: {e}") from None
            if state["error"] is not None:
                raise state["error"]
        try:
            parser.finalize()
        except MultipartParseError as e:
            raise UploadError(400, f"malformed multipart body: {e}") from None
        if state["error"] is not None:
            raise state["error"]
        if state["file"] is not None:
            raise UploadError(400, "the multipart body ended inside the file (incomplete upload)")
        return up
    except BaseException:
        if state["file"] is not None:
            state["file"].close()
        up.cleanup()
        raise
