"""Per-event isolation: whatever one event makes the worker raise, it is dead-lettered and the rest goes on."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.layout import anonymous_profile_key, profile_fields
from infra import local
from streams.pipeline import BatchProcessor, Record
from tests.support import Stack, event, produce, profile_of, read_topic, wait_until, with_store, worker_process

pytestmark = pytest.mark.integration


def dead_letters(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[Any]:
    """The messages of a dead-letter topic (from the start), once ``expect`` of them are there."""
    return read_topic(bootstrap, topic, lambda got: len(got) >= expect, timeout)


def test_an_accepted_event_that_crashed_the_worker_is_dead_lettered_and_its_partition_goes_on(
    kafka: local.KafkaService, redis_server: local.RedisService, log_dir: Path
) -> None:
    # the reported bug: "items": 1 passed the page_view schema, and the feature code iterated it (the schema
    # now types every property the stream reads, in every event type: refused while validated)
    stack = Stack(kafka.bootstrap, redis_server.url)
    stack.create_topics()
    visitor = f"iso-{stack.tag}"
    bad = event("page_view", visitor, items=1)
    evs = [event("page_view", visitor, category="books"), bad] + [
        event("page_view", visitor, category="books") for _ in range(8)]
    produce(stack.bootstrap, stack.events_topic, evs)  # one key: one partition, the bad event in the middle
    worker = worker_process(stack, log_dir, name=f"iso-worker-{stack.tag}").start()
    try:
        wait_until(lambda: profile_of(stack.redis_url, visitor).counts.get("page_view") == 9, timeout=90,
                   what=f"the events after the bad one\n{worker.log_tail()}")
        letters = dead_letters(stack.bootstrap, stack.dlq_topic, 1)
        assert [orjson.loads(m.value)["event_id"] for m in letters] == [bad["event_id"]]
        headers = dict(letters[0].headers)
        assert headers["dlq.stage"] == b"validate"
        assert headers["dlq.reason"] == b"properties.items: must be array, got integer"
        # still alive, and still applying: a sentinel event arrives within seconds
        produce(stack.bootstrap, stack.events_topic, [event("click", visitor, category="books")])
        wait_until(lambda: profile_of(stack.redis_url, visitor).counts.get("click") == 1, timeout=30,
                   what=f"the sentinel\n{worker.log_tail()}")
        assert worker.proc is not None and worker.proc.poll() is None
        time.sleep(1.0)
        assert profile_of(stack.redis_url, visitor).counts == {"page_view": 9, "click": 1}
    finally:
        worker.stop()


def _records(evs: list[dict[str, Any]], offset: int = 0) -> list[Record]:
    return [Record("events", 0, offset + i, str(e.get("customer_id") or e.get("anonymous_id")).encode(),
                   orjson.dumps(e)) for i, e in enumerate(evs)]


def _process(redis_url: str, records: list[Record], setup: Any = None) -> tuple[Any, list[tuple[bytes, dict]]]:
    letters: list[tuple[bytes, dict]] = []

    async def dead(key, value, headers):
        letters.append((value, dict(headers)))

    async def run(store):
        if setup is not None:
            await setup(store)
        return await BatchProcessor(store, dead).process(records)

    return with_store(redis_url, run), letters


def test_a_script_error_on_one_profile_dead_letters_its_event_and_the_others_are_written(
    redis_server: local.RedisService,
) -> None:
    tag = uuid.uuid4().hex[:6]
    victim, others = f"corrupt-{tag}", [f"fine-{tag}-{i}" for i in range(5)]

    async def corrupt(store):
        # a window ring the script cannot parse (written by hand, or by a layout of the past)
        field = next(iter(profile_fields(store.config).window.values()))
        await store.redis.hset(anonymous_profile_key(victim), field, "garbage")

    evs = [event("page_view", v, category="books") for v in [*others[:2], victim, *others[2:]]]
    stats, letters = _process(redis_server.url, _records(evs), corrupt)
    assert stats.applied == 5 and stats.isolated == 1
    assert [orjson.loads(v)["anonymous_id"] for v, _ in letters] == [victim]
    assert letters[0][1]["dlq.stage"] == b"apply" and b"user_script" in letters[0][1]["dlq.reason"]
    assert all(profile_of(redis_server.url, v).counts == {"page_view": 1} for v in others)


def test_one_bad_event_of_a_profile_is_dead_lettered_and_that_profiles_other_events_are_written(
    redis_server: local.RedisService,
) -> None:
    visitor = f"mixed-{uuid.uuid4().hex[:6]}"
    # a purchase value no float can hold once summed used to reach the profile script; the schema now bounds
    # an amount (schemas/limits.py: max_amount), so it is refused while validated, between two good events
    evs = [event("page_view", visitor, category="a"),
           event("purchase", visitor, order_id="o1", value=1e12, items=[{"item_id": "i1"}]),
           event("purchase", visitor, order_id="o2", value=1.7e308, items=[{"item_id": "i2"}]),
           event("page_view", visitor, category="b")]
    stats, letters = _process(redis_server.url, _records(evs))
    p = profile_of(redis_server.url, visitor)
    assert p.counts.get("page_view") == 2
    assert p.monetary == 1e12 and stats.applied == 3
    assert [orjson.loads(v)["event_id"] for v, _ in letters] == [evs[2]["event_id"]]
    assert letters[0][1]["dlq.stage"] == b"validate" and letters[0][1]["dlq.reason"].startswith(b"properties.value:")


def test_events_far_in_the_future_or_past_are_dead_lettered_not_applied(redis_server: local.RedisService) -> None:
    visitor = f"time-{uuid.uuid4().hex[:6]}"
    now_ms = int(time.time() * 1000)
    evs = [event("page_view", visitor, category="a", ts_ms=now_ms + 10 * 365 * 86400_000),
           event("page_view", visitor, category="a", ts_ms=1000),
           event("page_view", visitor, category="a")]
    stats, letters = _process(redis_server.url, _records(evs))
    assert stats.applied == 1 and stats.invalid == 2
    assert {h["dlq.stage"] for _, h in letters} == {b"validate"}
    p = profile_of(redis_server.url, visitor)
    assert p.counts == {"page_view": 1} and 0.99 < p.affinities["category"]["a"] <= 1.0
