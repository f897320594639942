"""``HiredisPackedConnection`` on a real Redis: the same replies and the same errors as redis-py's own
connection, for pipelines whose replies span many socket reads and for single commands."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from engine.redis_connection import HiredisPackedConnection, execute_streamed
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


async def _streamed_and_pipelined(url: str, connection_class: Any) -> None:
    r = aioredis.from_url(url, decode_responses=True, connection_class=connection_class)
    try:
        await r.flushdb()
        built: list[int] = []
        sent: list[int] = []

        def chunks() -> Any:
            for c in range(20):  # 20 chunks of 150 commands, each built when the previous one is sent
                built.append(c)
                yield [("INCRBY", f"n:{i % 7}", i) if i % 500 else ("INCR", "s") for i in
                       range(150 * c, 150 * (c + 1))]

        replies = await execute_streamed(r, chunks(), on_sent=lambda: sent.append(len(built)))
        assert sent == [20]  # called once, after the last chunk
        await r.flushdb()
        pipe = r.pipeline(transaction=False)
        for chunk in chunks():
            for cmd in chunk:
                pipe.execute_command(*cmd)
        assert replies == await pipe.execute() and len(replies) == 3000
        # an error reply is returned in its place; the replies after it are still read
        await r.set("t", "text")
        out = await execute_streamed(r, [[("SET", "u", "1")], [("INCR", "t"), ("GET", "u")]])
        assert out[0] in (True, "OK") and isinstance(out[1], ResponseError) and out[2] == "1"
    finally:
        await r.aclose()


def test_streamed_chunks_give_the_pipeline_replies_in_order(redis_server: local.RedisService) -> None:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/14"
    for connection_class in (HiredisPackedConnection, aioredis.Connection):
        asyncio.run(_streamed_and_pipelined(url, connection_class))


def test_a_chunk_generator_that_fails_closes_the_connection(redis_server: local.RedisService) -> None:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/14"

    async def main() -> None:
        r = aioredis.from_url(url, decode_responses=True, connection_class=HiredisPackedConnection,
                              max_connections=1)
        try:
            await r.set("k", "v")

            def chunks() -> Any:
                yield [("GET", "k")] * 100  # sent: its replies are never read
                raise ValueError("encoding failed")

            with pytest.raises(ValueError, match="encoding failed"):
                await execute_streamed(r, chunks())
            # the only pooled connection was closed, not handed back with 100 unread replies
            assert await r.incr("counter") == 1
            assert await r.get("k") == "v"
            await r.delete("counter")
        finally:
            await r.aclose()
    asyncio.run(main())
