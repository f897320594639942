"""``ReadBatcher`` on a real Redis: concurrent reads share pipelines, each caller gets its own reply or
error, a caller that gives up leaves the connection in step, and a dead server fails every caller."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from infra import local
from infra.processes import free_port
from serving.metrics import ServingMetrics
from serving.read_batch import ReadBatcher

pytestmark = pytest.mark.integration


def _url(redis_server: local.RedisService) -> str:
    return f"{redis_server.url.rsplit('/', 1)[0]}/14"


def test_concurrent_reads_share_pipelines_and_get_their_own_replies(redis_server: local.RedisService) -> None:
    async def main() -> tuple[list[object], ServingMetrics]:
        r = aioredis.from_url(_url(redis_server), decode_responses=True)
        try:
            await r.flushdb()
            for i in range(100):
                await r.hset(f"h:{i}", mapping={"n": i})
            await r.set("s", "x")
            metrics = ServingMetrics()
            batcher = ReadBatcher(r, metrics, max_batch=32)

            async def one(i: int) -> object:
                if i == 7:
                    try:
                        await batcher.call("HGETALL", "s")  # wrong type: an error for this caller only
                    except ResponseError as exc:
                        return f"error: {exc}"
                return await batcher.call("HGETALL", f"h:{i}")
            return await asyncio.gather(*(one(i) for i in range(100))), metrics
        finally:
            await r.aclose()

    replies, metrics = asyncio.run(main())
    assert replies[3] == {"n": "3"} and replies[99] == {"n": "99"}
    assert str(replies[7]).startswith("error: WRONGTYPE")
    assert all(replies[i] == {"n": str(i)} for i in range(100) if i != 7)
    pipelines, commands = metrics.read_pipelines.values[""], metrics.read_commands.values[""]
    assert commands == 100 and pipelines == 4  # one turn of the loop, split by max_batch


def test_a_caller_that_gives_up_leaves_the_connection_in_step(redis_server: local.RedisService) -> None:
    async def main() -> list[object]:
        r = aioredis.from_url(_url(redis_server), decode_responses=True)
        try:
            await r.set("a", "1")
            await r.set("b", "2")
            batcher = ReadBatcher(r)
            slow = batcher.call("EVAL", "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
                                "if (n[1] - t[1]) * 1000000 + n[2] - t[2] > 50000 then break end end "
                                "return redis.call('GET', KEYS[1])", 1, "a")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):  # gives up long before the 50 ms script returns
                    await slow
            await asyncio.sleep(0.2)  # the script has returned; its pipeline read the reply
            replies = list(await asyncio.gather(batcher.call("GET", "b"), batcher.call("GET", "a")))
            pool = r.connection_pool
            # one connection in all: the pipeline kept it in step and gave it back, nothing was reconnected
            assert len(pool._available_connections) + len(pool._in_use_connections) == 1
            return replies
        finally:
            await r.aclose()

    assert asyncio.run(main()) == ["2", "1"]


def test_every_caller_learns_that_redis_is_down() -> None:
    async def main() -> list[BaseException | object]:
        r = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
        try:
            batcher = ReadBatcher(r)
            return await asyncio.gather(batcher.call("GET", "a"), batcher.call("GET", "b"), return_exceptions=True)
        finally:
            await r.aclose()

    results = asyncio.run(main())
    assert len(results) == 2 and all(isinstance(x, RedisConnectionError) for x in results), results
