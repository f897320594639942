"""``HiredisPackedConnection`` on a real Redis: the same replies and the same errors as redis-py's own
connection, for pipelines whose replies span many socket reads and for single commands."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.redis_connection import HiredisPackedConnection
from infra import local

pytestmark = pytest.mark.integration


async def _session(url: str, connection_class: Any) -> list[Any]:
    r = aioredis.from_url(url, decode_responses=True, connection_class=connection_class)
    out: list[Any] = []
    try:
        await r.flushdb()
        sha = await r.script_load("if ARGV[1] == 'boom' then return redis.error_reply('BOOM') end "
                                  "redis.call('HSET', KEYS[1], 'v', ARGV[1]) return #ARGV[1]")
        out.append(sha)
        pipe = r.pipeline(transaction=False)
        for i in range(3000):  # ~100 KB of replies: many socket reads, most replies already buffered
            pipe.evalsha(sha, 1, f"h:{i}", "x" * (i % 97))
            pipe.hgetall(f"h:{i}")
        out.append(await pipe.execute())
        pipe = r.pipeline(transaction=False)
        pipe.set("k", "é")
        pipe.evalsha(sha, 1, "h:err", "boom")
        pipe.get("k")
        replies = await pipe.execute(raise_on_error=False)
        out.append([f"{type(x).__name__}: {x}" if isinstance(x, Exception) else x for x in replies])
        with pytest.raises(ResponseError, match="BOOM"):
            await r.evalsha(sha, 1, "h:err", "boom")
        with pytest.raises(ResponseError):
            await r.incr("k")  # not an integer
        out.append(await r.get("k"))
        out.append(await r.hgetall("h:5"))
        out.append(await r.config_get("maxmemory"))
    finally:
        await r.aclose()
    return out


def test_an_error_reply_already_buffered_is_raised(redis_server: local.RedisService) -> None:
    async def main() -> None:
        conn = HiredisPackedConnection(host=redis_server.host, port=redis_server.port, decode_responses=True)
        await conn.connect()
        try:
            # both replies arrive in one read: the second is taken from the reader's buffer (the fast path)
            await conn.send_packed_command(conn.pack_commands([("SET", "e", "x"), ("INCR", "e")]))
            assert await conn.read_response() == "OK"
            with pytest.raises(ResponseError, match="not an integer"):
                await conn.read_response()
            await conn.send_command("PING")
            assert await conn.read_response() == "PONG"  # the connection is still in step
        finally:
            await conn.disconnect()
    asyncio.run(main())


def test_same_replies_and_errors_as_redis_py(redis_server: local.RedisService) -> None:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/13"
    ours = asyncio.run(_session(url, HiredisPackedConnection))
    theirs = asyncio.run(_session(url, aioredis.Connection))
    assert ours == theirs
    assert ours[1][:4] == [0, {"v": ""}, 1, {"v": "x"}]
    assert ours[2][0] is True and "BOOM" in ours[2][1] and ours[2][2] == "é"
