"""A redis-py asyncio connection that is cheaper per command, for pipelines of many small commands.

* Packing: redis-py's asyncio ``Connection.pack_command`` encodes every argument in Python, once per customer
  per batch, i.e. about once per event; ``hiredis.pack_command`` (hiredis is already installed for reply
  parsing) does it in C with the same bytes (floats as ``repr``, ``str`` as UTF-8; the figures:
  ``docs/performance-history.md``). Arguments hiredis does not take (``None``, ``bool``,
  ...) fall back to redis-py, which raises its usual ``DataError``.
* Reading: redis-py wraps every reply of a pipeline in its own ``asyncio.timeout`` (socket_timeout, 5 s by
  default), a timer handle per reply. A reply that is already complete in the hiredis reader's buffer
  (after the first socket read of a pipeline, most are) is returned at once, checked the way redis-py
  checks it; only a reply that needs the socket goes through redis-py's read, with its timeout.

>>> conn = HiredisPackedConnection()
>>> conn.pack_command("CONFIG GET", "maxmemory")
[b'*3\\r\\n$6\\r\\nCONFIG\\r\\n$3\\r\\nGET\\r\\n$9\\r\\nmaxmemory\\r\\n']
>>> b"".join(conn.pack_command("SET", "k", 1.5)) == b"".join(Connection().pack_command("SET", "k", 1.5))
True
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, ResponseError

_PUSH = getattr(hiredis, "PushNotification", None)
try:  # redis-py's own sentinel and parser class (redis is pinned; without them the fast path is off)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover
    NOT_ENOUGH_DATA, _AsyncHiredisParser = None, None  # type: ignore[assignment,misc]  # fast path off


class HiredisPackedConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        # like redis-py: a command name given with its subcommand ("CONFIG GET") is sent as two arguments
        if isinstance(first, str):
            if " " in first:
                args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        if self.encoder.encoding != "utf-8":  # hiredis encodes str as UTF-8
            return super().pack_command(*args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # raises redis-py's DataError for what cannot be sent

    async def read_response(self, disable_decoding: bool = False, timeout: float | None = None, *,
                            disconnect_on_error: bool = True, push_request: bool | None = False) -> Any:
        parser = self._parser
        if (_AsyncHiredisParser is not None and type(parser) is _AsyncHiredisParser and not push_request
                and self.is_connected and parser._connected):
            reader: Any = parser._reader  # redis-py types it None until connected
            response = reader.gets(False) if disable_decoding else reader.gets()
            if response is not NOT_ENOUGH_DATA:
                if _PUSH is not None and isinstance(response, _PUSH):  # RESP3 push: redis-py's handling, then on
                    await parser.handle_push_response(response)  # type: ignore[no-untyped-call]  # redis-py
                    return await self.read_response(disable_decoding, timeout,
                                                    disconnect_on_error=disconnect_on_error)
                if isinstance(response, ConnectionError) or (
                        isinstance(response, list) and response and isinstance(response[0], ConnectionError)):
                    if disconnect_on_error:
                        await self.disconnect(nowait=True)
                    raise response if isinstance(response, ConnectionError) else response[0]
                if self.health_check_interval:
                    self.next_health_check = asyncio.get_running_loop().time() + self.health_check_interval
                if isinstance(response, ResponseError):
                    raise response from None
                return response
        return await super().read_response(disable_decoding, timeout, disconnect_on_error=disconnect_on_error,
                                           push_request=push_request)


async def execute_streamed(redis: aioredis.Redis, chunks: Iterable[Sequence[Sequence[Any]]],
                           on_sent: Callable[[], None] | None = None) -> list[Any]:
    """Send pipelined commands chunk by chunk, as ``chunks`` yields them, then read every reply.

    A redis-py pipeline packs every command before it sends the first, so Redis idles while the client
    builds a long pipeline, and the client idles while Redis runs it. Here each chunk goes out as soon as it
    is built: Redis runs the first chunks while the caller's generator builds the next ones (the worker's
    batch of ~2,000 Lua calls, ``engine/profile_store.py``). One connection, so Redis runs the commands in
    the order given.

    Replies come back in order; an error reply is returned in its place as the ``ResponseError`` (like
    ``pipeline.execute(raise_on_error=False)``). If the connection fails, or the generator raises, the
    connection is closed (it may hold unread replies) and the error is raised: the chunks already sent may
    have run, so callers send only commands that are safe to send again.
    """
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    try:
        sent = 0
        for chunk in chunks:
            if chunk:
                await conn.send_packed_command(conn.pack_commands(chunk), check_health=sent == 0)
                sent += len(chunk)
        if on_sent is not None:
            on_sent()
        replies: list[Any] = []
        for _ in range(sent):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
