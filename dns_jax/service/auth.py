"""Bearer-token access to the API, and signed media URLs for the page.

With a token, every `/api` call needs `Authorization: Bearer TOKEN` (401 otherwise). A `<video>`
or `<img>` element cannot send that header, so the API hands out thumbnail and stream URLs signed
with the token (HMAC-SHA256 over the path and an expiry time); those two routes accept either.
Without a token (loopback only, see cli.py) everything is open.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Optional
from urllib.parse import quote

TOKEN_ENV = "DNS_JAX_SERVICE_TOKEN"


class Unauthorized(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Auth:
    def __init__(self, token: Optional[str], url_ttl: int = 3600):
        self.token = token or None
        self.url_ttl = int(url_ttl)

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def check_header(self, authorization: Optional[str]) -> None:
        if not self.enabled:
            return
        if not authorization:
            raise Unauthorized("missing Authorization header (Authorization: Bearer TOKEN)")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
        if not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise Unauthorized("wrong token")

    def _signature(self, path: str, expires: int) -> str:
        msg = f"{path}\n{expires}".encode()
        return hmac.new(self.token.encode(), msg, hashlib.sha256).hexdigest()

    def sign(self, path: str) -> str:
        """`path` (already URL-quoted) with `?exp=...&sig=...` when a token is set. The expiry is
        rounded to the TTL so that a URL stays the same (and cacheable) for a while."""
        if not self.enabled:
            return path
        expires = (int(time.time()) // self.url_ttl + 2) * self.url_ttl
        return f"{path}?exp={expires}&sig={self._signature(path, expires)}"

    def check_media(self, authorization: Optional[str], raw_path: str, exp: Optional[str], sig: Optional[str]) -> None:
        """A bearer header, or a valid unexpired signature of `raw_path`."""
        if not self.enabled or authorization:
            return self.check_header(authorization)
        if not exp or not sig:
            raise Unauthorized("missing Authorization header or signed URL")
        try:
            expires = int(exp)
        except ValueError:
            raise Unauthorized("malformed signed URL") from None
        if expires < time.time():
            raise Unauthorized("the signed URL has expired")
        if not hmac.compare_digest(sig.encode(), self._signature(raw_path, expires).encode()):
            raise Unauthorized("bad signature")


def video_path(video_id: str, suffix: str = "") -> str:
    return "/api/videos/" + quote(video_id, safe="") + suffix
