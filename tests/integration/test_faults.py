"""Redis faults the worker waits out, losing and doubling nothing: Redis restarted mid-stream (its scripts gone),
Redis full (``noeviction``: writes refused).

The Kafka faults (Kafka stopped during ingest and during reward expiry, the worker SIGKILLed between reward
expiry and the Kafka flush, the API SIGKILLed) are in ``tests/integration/test_chaos.py`` on their own brokers
(``make chaos`` runs both files with a longer outage; docs/guarantees.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from infra import local
from tests.support import Stack, event, produce, profile_of, wait_until, with_store, worker_process

pytestmark = pytest.mark.integration


def counts_of(redis_url: str, visitors: list[str], kind: str = "page_view") -> list[int]:
    return [profile_of(redis_url, v).counts.get(kind, 0) for v in visitors]


def redis_call(url: str, fn: Callable[[aioredis.Redis], Any]) -> Any:
    async def run() -> Any:
        client = aioredis.from_url(url, decode_responses=True)
        try:
            return await fn(client)
        finally:
            await client.aclose()
    return asyncio.run(run())


def worker_counter(url: str, name: str) -> float:
    return float(with_store(url, lambda store: store.read_worker_counters()).get(name, 0))


def test_redis_restarted_mid_stream_leaves_exact_counts(kafka: local.KafkaService, log_dir: Path) -> None:
    own_redis = local.start_redis()
    try:
        stack = Stack(kafka.bootstrap, own_redis.url)
        stack.create_topics()
        visitors = [f"restart-{stack.tag}-{i}" for i in range(20)]
        per_visitor = 150
        half = per_visitor // 2
        worker = worker_process(stack, log_dir, name=f"restart-worker-{stack.tag}", WORKER_BATCH_SIZE="50").start()
        try:
            produce(stack.bootstrap, stack.events_topic,
                    [event("page_view", v, category="books") for _ in range(half) for v in visitors])
            wait_until(lambda: counts_of(stack.redis_url, visitors) == [half] * len(visitors), timeout=90,
                       interval=0.05, what=f"the first half\n{worker.log_tail()}")
            # the second half arrives while Redis is down, so the worker meets the fault for certain (not only
            # if it happens to be mid-stream); the restart empties the script cache (the AOF keeps the data)
            own_redis.stop()
            produce(stack.bootstrap, stack.events_topic,
                    [event("page_view", v, category="books") for _ in range(per_visitor - half) for v in visitors])
            time.sleep(2.0)
            own_redis.start()
            wait_until(lambda: counts_of(stack.redis_url, visitors) == [per_visitor] * len(visitors), timeout=120,
                       interval=0.5, what=f"the rest of the stream\n{worker.log_tail()}")
            wait_until(lambda: worker_counter(stack.redis_url, "infra_pauses") >= 1, timeout=10,
                       what="the pause to be counted")
            time.sleep(2.0)  # anything applied twice would show now
            assert counts_of(stack.redis_url, visitors) == [per_visitor] * len(visitors)
            assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        finally:
            worker.stop()
    finally:
        own_redis.close()


def test_redis_at_maxmemory_pauses_ingest_which_resumes_when_memory_is_freed(
    kafka: local.KafkaService, log_dir: Path
) -> None:
    own_redis = local.start_redis()
    try:
        stack = Stack(kafka.bootstrap, own_redis.url)
        stack.create_topics()
        visitors = [f"oom-{stack.tag}-{i}" for i in range(10)]
        worker = worker_process(stack, log_dir, name=f"oom-worker-{stack.tag}").start()
        try:
            produce(stack.bootstrap, stack.events_topic, [event("page_view", v, category="books") for v in visitors])
            wait_until(lambda: counts_of(stack.redis_url, visitors) == [1] * len(visitors), timeout=90,
                       what=f"events before memory runs out\n{worker.log_tail()}")
            # memory "full": every write is refused with OOM (noeviction), reads still answer
            redis_call(stack.redis_url, lambda r: r.config_set("maxmemory", 1))
            produce(stack.bootstrap, stack.events_topic,
                    [event("page_view", v, category="books") for _ in range(5) for v in visitors])
            time.sleep(4.0)
            assert counts_of(stack.redis_url, visitors) == [1] * len(visitors)  # nothing half-applied
            assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
            redis_call(stack.redis_url, lambda r: r.config_set("maxmemory", 0))  # memory freed
            wait_until(lambda: counts_of(stack.redis_url, visitors) == [6] * len(visitors), timeout=60,
                       what=f"ingest to resume\n{worker.log_tail()}")
            wait_until(lambda: worker_counter(stack.redis_url, "infra_pauses") >= 1, timeout=10,
                       what="the pause to be counted")
            time.sleep(1.0)
            assert counts_of(stack.redis_url, visitors) == [6] * len(visitors)
            assert "paused: OutOfMemoryError" in worker.log_tail(400)
        finally:
            worker.stop()
    finally:
        own_redis.close()
