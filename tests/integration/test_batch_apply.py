"""How ``BatchProcessor.apply`` writes a batch, on a real Redis.

A batch with identify events in it writes exactly what the same records write one at a time.

``BatchProcessor.apply`` writes the owners that identify events link (the anonymous id, its customer, the
customer it resolved to before) in record order around each merge, and every other owner's events at the
same time in one pipeline (``streams.pipeline.split_linked``). Record-by-record processing is the
reference: each record is its own batch, so nothing is reordered or grouped.

The event hooks (reward join, co-visitation feed) run beside the writes, once per batch, also when the
writes fail and are retried.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from infra import local
from streams.pipeline import BatchProcessor, Record
from tests.support import event, with_store

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _records(seed: int) -> tuple[list[Record], list[Record]]:
    """(records written before, the batch): visitors browse anonymously and as customers, identify mid-batch
    (some twice, some as a visitor already known as another customer), next to unrelated visitors."""
    rng = random.Random(seed)
    anonymous = [f"a{seed}-{i}" for i in range(30)]
    customers = [f"c{seed}-{i}" for i in range(10)]
    t = 1_760_000_000_000
    offsets = [0] * PARTITIONS

    def record(e: dict[str, Any]) -> Record:
        key = e.get("customer_id") or e["anonymous_id"]
        p = sum(key.encode()) % PARTITIONS
        offsets[p] += 1
        return Record("events", p, offsets[p], key.encode(), orjson.dumps(e))

    def identify(a: str, c: str, ts: int) -> dict[str, Any]:
        e = event("identify", a, ts_ms=ts)
        e["customer_id"] = c
        return e

    def behaviour(visitor: str, customer: bool, ts: int) -> dict[str, Any]:
        item = f"sku-{rng.randrange(40)}"
        category = f"cat-{rng.randrange(6)}"
        kind = rng.choice(["page_view", "page_view", "click", "add_to_cart"])
        if kind == "add_to_cart":
            return event(kind, visitor, customer=customer, ts_ms=ts, item_id=item, category=category,
                         price=10.0, quantity=1)
        return event(kind, visitor, customer=customer, ts_ms=ts, item_id=item, category=category)

    before = [record(behaviour(a, False, t + i)) for i, a in enumerate(anonymous[:5])]
    before.append(record(identify(anonymous[0], customers[0], t + 10)))  # a0 is already c0
    batch = []
    for i in range(600):
        ts = t + 1000 + 50 * i
        r = rng.random()
        if r < 0.04:
            batch.append(record(identify(rng.choice(anonymous), rng.choice(customers), ts)))
        elif r < 0.6:
            batch.append(record(behaviour(rng.choice(anonymous), False, ts)))
        else:
            batch.append(record(behaviour(rng.choice(customers), True, ts)))
    # the batch loop hands a batch over in partition, then offset order
    batch.sort(key=lambda rec: (rec.partition, rec.offset))
    return before, batch


async def _dump(store: Any) -> dict[str, Any]:
    r = store.redis
    out: dict[str, Any] = {}
    async for key in r.scan_iter(count=1000):
        kind = await r.type(key)
        if kind == "hash":
            out[key] = await r.hgetall(key)
        elif kind == "string":
            out[key] = await r.get(key)
        elif kind == "set":
            out[key] = sorted(await r.smembers(key))
        elif kind == "zset":  # popularity: sums added in another grouping differ in the last bits
            out[key] = {m: round(s, 6) for m, s in await r.zrange(key, 0, -1, withscores=True)}
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_with_identify_events_writes_what_one_record_at_a_time_writes(
        redis_server: local.RedisService, seed: int) -> None:
    before, batch = _records(seed)
    assert sum(b'"identify"' in rec.value for rec in batch) >= 10
    base = redis_server.url.rsplit("/", 1)[0]
    letters: list[bytes] = []

    async def dead(key: Any, value: bytes, headers: Any) -> None:
        letters.append(value)

    def run(db: int, one_at_a_time: bool) -> dict[str, Any]:
        async def go(store: Any) -> dict[str, Any]:
            await store.redis.flushdb()
            proc = BatchProcessor(store, dead)
            for rec in before:
                await proc.process([rec])
            if one_at_a_time:
                for rec in batch:
                    await proc.process([rec])
            else:
                stats = await proc.process(batch)
                assert stats.applied == len(batch)
            dump = await _dump(store)
            await store.redis.flushdb()
            return dump
        return with_store(f"{base}/{db}", go)

    reference = run(12, one_at_a_time=True)
    batched = run(13, one_at_a_time=False)
    assert letters == []
    stats_keys = [k for k in reference if k.startswith("stats:")]
    for k in stats_keys:  # counters of batches, not of profiles
        reference.pop(k), batched.pop(k, None)
    assert any(k.startswith("p:") for k in reference)
    assert batched == reference


def test_hooks_run_once_per_batch_even_when_the_writes_are_retried(redis_server: local.RedisService) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    visitor = f"anon-hooks-{random.randrange(10**9)}"
    records = [Record("events", 0, 10 + i, visitor.encode(),
                      orjson.dumps(event("page_view", visitor, category="hats"))) for i in range(5)]
    seen: list[int] = []

    async def hook(events: Any) -> None:
        seen.append(len(events))

    async def dead(key: Any, value: bytes, headers: Any) -> None:
        raise AssertionError("no dead letter expected")

    async def go(store: Any) -> tuple[int, int]:
        real_apply, failures = store.apply, [1]

        async def flaky_apply(batches: Any, on_sent: Any = None, **kw: Any) -> Any:
            if failures:  # Redis drops the connection once, after the hooks started
                failures.pop()
                await asyncio.sleep(0.01)
                raise RedisConnectionError("connection reset by peer")
            return await real_apply(batches, on_sent, **kw)

        store.apply = flaky_apply
        proc = BatchProcessor(store, dead, hooks=[hook])
        prepared = await proc.prepare(records)
        with pytest.raises(RedisConnectionError):
            await proc.apply(prepared)
        stats = await proc.apply(prepared)  # the worker's retry
        raw = await store.read_anonymous(visitor)
        return stats.applied, len(raw.hash)

    applied, fields = with_store(redis_server.url, go)
    assert applied == 5 and fields > 0
    assert seen == [5]
