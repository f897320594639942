"""A redis-py asyncio connection that is cheaper per command, for pipelines of many small commands.

* Packing: redis-py's asyncio ``Connection.pack_command`` encodes every argument in Python: ~10 us for the
  worker's EVALSHA of one customer (8 arguments), once per customer per batch, i.e. about once per event;
  ``hiredis.pack_command`` (hiredis is already installed for reply parsing) does it in ~1.6 us with the
  same bytes (floats as ``repr``, ``str`` as UTF-8). Arguments hiredis does not take (``None``, ``bool``,
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
from typing import Any

import hiredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, ResponseError

_PUSH = getattr(hiredis, "PushNotification", None)
try:  # redis-py's own sentinel and parser class (redis is pinned; without them the fast path is off)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover
    NOT_ENOUGH_DATA, _AsyncHiredisParser = None, None


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
            reader = parser._reader
            response = reader.gets(False) if disable_decoding else reader.gets()
            if response is not NOT_ENOUGH_DATA:
                if _PUSH is not None and isinstance(response, _PUSH):  # RESP3 push: redis-py's handling, then on
                    await self._parser.handle_push_response(response)
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
