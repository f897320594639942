"""The bare ASGI pieces of the decide fast path, shared with the benchmark's bare endpoint (``bench/bare_app.py``)
so that both read requests and send answers the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_JSON = (b"content-type", b"application/json")


def is_decide(scope: dict[str, Any]) -> bool:
    """``POST /v1/decide``, the one request answered before the framework."""
    return scope["type"] == "http" and scope["path"] == "/v1/decide" and scope["method"] == "POST"


class BodyTooLarge(Exception):
    """The request body (declared or read so far) is larger than the endpoint takes: answer 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body: larger than {limit} bytes")
        self.limit = limit


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request's ``Content-Length``, if it sent a valid one."""
    for key, value in headers:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body, however many messages it came in; past ``limit`` bytes :class:`BodyTooLarge`
    is raised at once, before the rest is read (a client cannot make the process buffer more).

    >>> import asyncio
    >>> def receiver(*chunks):
    ...     parts = iter([{"body": c, "more_body": True} for c in chunks[:-1]] + [{"body": chunks[-1]}])
    ...     async def receive():
    ...         return next(parts)
    ...     return receive
    >>> asyncio.run(read_body(receiver(b"ab", b"c")))
    b'abc'
    >>> asyncio.run(read_body(receiver(b"ab", b"cd", b"never read"), limit=3))
    Traceback (most recent call last):
        ...
    serving.asgi.BodyTooLarge: body: larger than 3 bytes
    """
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        if limit is not None and len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        if limit is not None and size > limit:
            raise BodyTooLarge(limit)
        if not message.get("more_body"):
            return b"".join(chunks)
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)


async def read_limited(scope: Mapping[str, Any], receive: Receive, limit: int) -> bytes:
    """The body, refused (:class:`BodyTooLarge`) as soon as it is known to be over ``limit``: by its declared
    length before anything is read, else while reading."""
    declared = declared_length(scope["headers"])
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    return await read_body(receive, limit)


async def send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``body`` (JSON) with ``extra`` headers."""
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
