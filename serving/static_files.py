"""Small static files the API serves to browsers: the snippet (``/sdk/pulse.js``) and the demo shop
(``/demo/``). Each is read and gzipped once, at start-up, and answered with an ``ETag`` (a ``304`` to a
matching ``If-None-Match``), ``Cache-Control`` and, when the browser accepts it, the gzipped bytes.

>>> f = StaticFile.of(b"console.log(1)" * 50, "text/javascript", max_age=300)
>>> f.headers(gzip=True)["content-encoding"], f.headers(gzip=False).get("content-encoding")
('gzip', None)
>>> f.headers(gzip=False)["cache-control"]
'public, max-age=300, stale-while-revalidate=86400'
>>> accepts_gzip("br, gzip;q=0.8"), accepts_gzip("gzip;q=0"), accepts_gzip(None)
(True, False, False)
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import Response


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip (``q=0`` refuses it)."""
    for part in (accept_encoding or "").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str
    max_age: int

    @classmethod
    def of(cls, body: bytes, media_type: str, max_age: int) -> StaticFile:
        # mtime=0: the same bytes, and so the same gzip, on every start and every replica
        return cls(body, gzip.compress(body, 9, mtime=0), media_type,
                   '"' + hashlib.sha256(body).hexdigest()[:20] + '"', max_age)

    @classmethod
    def read(cls, path: Path, media_type: str, max_age: int) -> StaticFile:
        return cls.of(path.read_bytes(), media_type, max_age)

    def headers(self, gzip: bool) -> dict[str, str]:
        out = {"cache-control": f"public, max-age={self.max_age}, stale-while-revalidate=86400",
               "etag": self.etag, "vary": "Accept-Encoding", "x-content-type-options": "nosniff"}
        if gzip:
            out["content-encoding"] = "gzip"
        return out

    def response(self, request: Request, extra: dict[str, str] | None = None) -> Response:
        zipped = accepts_gzip(request.headers.get("accept-encoding"))
        headers = {**self.headers(zipped), **(extra or {})}
        if self.etag in (request.headers.get("if-none-match") or "").replace("W/", "").split(", "):
            return Response(status_code=304, headers=headers)
        return Response(self.gzipped if zipped else self.body, media_type=self.media_type, headers=headers)
