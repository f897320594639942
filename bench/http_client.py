"""A minimal HTTP/1.1 keep-alive client for the benchmarks' polling and small checks, and the raw request
bytes the open-loop generator sends (``bench/latency.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import orjson


class HttpClient:
    """One keep-alive connection; ``post()`` returns (status, body). No pipelining, no chunked bodies
    (uvicorn answers ``Response`` objects with Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    def for_url(cls, base_url: str) -> HttpClient:
        hostport = base_url.split("://", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        return cls(host, int(port))

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.writer is None:
                await self._connect()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(http_request(method, path, body, f"{self.host}:{self.port}"))
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = content_length(head)
                data = await self.reader.readexactly(length) if length else b""
                return status, data
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        status, body = await self.request("POST", path, orjson.dumps(payload))
        return status, orjson.loads(body) if body else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def http_request(method: str, path: str, body: bytes, host: str, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def content_length(head: bytes) -> int:
    i = head.lower().find(b"content-length:")
    if i < 0:
        return 0
    j = head.find(b"\r\n", i)
    return int(head[i + 15:j])
