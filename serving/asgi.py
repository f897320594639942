"""The bare ASGI pieces of the decide fast path, shared with the benchmark's bare endpoint (``bench/bare_app.py``)
so that both read requests and send answers the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = (b"content-type", b"application/json")


def is_decide(scope: dict[str, Any]) -> bool:
    """``POST /v1/decide``, the one request answered before the framework."""
    return scope["type"] == "http" and scope["path"] == "/v1/decide" and scope["method"] == "POST"


async def read_body(receive: Receive) -> bytes:
    """The whole request body, however many messages it came in.

    >>> import asyncio
    >>> parts = iter([{"body": b"ab", "more_body": True}, {"body": b"c"}])
    >>> async def receive():
    ...     return next(parts)
    >>> asyncio.run(read_body(receive))
    b'abc'
    """
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


async def send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``body`` (JSON) with ``extra`` headers."""
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
