"""Faults the worker waits out, losing and doubling nothing: Redis restarted mid-stream (its scripts gone),
Redis full (``noeviction``: writes refused), the worker SIGKILLed between reward expiry and the Kafka flush.

Each scenario is bounded in time; the longer ones (Kafka stopped for a minute, the API killed) are in
``tests/integration/test_chaos.py`` (``make chaos``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from engine.layout import arms_key, decision_key
from infra import local
from tests.support import Stack, event, produce, profile_of, read_topic, wait_until, with_store, worker_process

pytestmark = pytest.mark.integration
LEARNING_CONFIG = str(Path(__file__).parent / "config" / "learning.toml")


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


def decision_record(decision_id: str, visitor: str, ts: float) -> dict[str, Any]:
    return {"decision_id": decision_id, "placement": "offers", "context": {"bias": 1.0},
            "candidates": ["offer-a", "offer-b"], "actions": [{"action_id": "offer-a", "score": 1.0}],
            "propensity": 0.5, "policy": "linucb", "model_version": "0", "holdout_arm": "learning",
            "degraded": False, "timestamp": int(ts * 1000), "anonymous_id": visitor}


def learning_examples(bootstrap: str, topic: str, wanted: set[str], timeout: float = 60.0) -> list[dict]:
    """The examples of ``wanted`` decisions on the learning topic (from its start), once all are there
    and a little longer (a second copy would show up then)."""
    found = read_topic(bootstrap, topic, lambda got: {orjson.loads(m.value)["decision_id"] for m in got} >= wanted,
                       timeout, keep=lambda m: orjson.loads(m.value).get("decision_id") in wanted, linger=2.0)
    return [orjson.loads(m.value) for m in found]


def test_a_worker_killed_between_reward_expiry_and_the_kafka_flush_loses_no_learning_example(
    kafka: local.KafkaService, redis_server: local.RedisService, log_dir: Path
) -> None:
    stack = Stack(kafka.bootstrap, redis_server.url.rsplit("/", 1)[0] + "/9")
    stack.create_topics()
    redis_call(stack.redis_url, lambda r: r.flushdb())
    env = {"ENGINE_CONFIG": LEARNING_CONFIG, "REWARD_SETTLE_LEASE_S": "3"}
    n = 20
    ids = [uuid.uuid4().hex for _ in range(n)]

    def state(field: str) -> list[Any]:
        return redis_call(stack.redis_url, lambda r: asyncio.gather(*(r.hget(decision_key(d), field) for d in ids)))

    worker = worker_process(stack, log_dir, name=f"expiry-worker-{stack.tag}", **env).start()
    try:
        sentinel = f"sentinel-{stack.tag}"
        produce(stack.bootstrap, stack.events_topic, [event("page_view", sentinel)])
        wait_until(lambda: counts_of(stack.redis_url, [sentinel]) == [1], timeout=90,
                   what=f"the worker to start\n{worker.log_tail()}")
        # decisions whose reward windows end once Kafka is stopped, never rewarded: the expiry fixes each one's
        # default reward and sends its example, which Kafka cannot acknowledge
        produce(stack.bootstrap, stack.decisions_topic,
                [decision_record(d, f"v-{i}", time.time() + 15.0) for i, d in enumerate(ids)])
        wait_until(lambda: all(state("record")), timeout=30, what=f"the decisions to be joined\n{worker.log_tail()}")
        kafka.stop()  # the examples the expiry sends now cannot be acknowledged
        try:
            wait_until(lambda: all(v == "1" for v in state("final")), timeout=30,
                       what=f"the expiry to fix the rewards\n{worker.log_tail()}")
            worker.kill()  # between the expiry and the flush
            assert not any(state("settled")), "settled before Kafka had the examples"
        finally:
            kafka.start()
        worker = worker_process(stack, log_dir, name=f"expiry-worker2-{stack.tag}", **env).start()
        examples = learning_examples(stack.bootstrap, stack.learning_topic, set(ids))
        assert sorted(e["decision_id"] for e in examples) == sorted(ids)  # each once: none lost, none twice
        assert all(e["defaulted"] and e["reward"] == 0.0 for e in examples)
        wait_until(lambda: all(v == "1" for v in state("settled")), timeout=30, what="settlement")
        learned = redis_call(stack.redis_url, lambda r: r.hget(arms_key("offers"), "learning:learned"))
        assert int(learned) == n
    finally:
        worker.stop()
