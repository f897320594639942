"""The stream's side of segments on a real broker and Redis: entries and exits published on the segments topic,
after events and on the clock, once each (a worker restart does not publish them again)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.layout import SEGMENTS_FIELD, anonymous_profile_key
from infra import local
from tests.support import Stack, event, produce, profile_of, read_topic, wait_until, worker_process

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).parent / "config" / "segments.toml")


def changes(stack: Stack, visitor: str, done: Any, linger: float = 0.0) -> list[dict[str, Any]]:
    records = read_topic(stack.bootstrap, stack.segments_topic,
                         lambda got: done([orjson.loads(m.value) for m in got]), timeout=60,
                         keep=lambda m: m.key == visitor.encode(), linger=linger)
    return [orjson.loads(m.value) for m in records]


def kinds(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(m["type"], m["segment"], m["cause"]) for m in messages]


def test_entries_and_exits_are_published_after_events_and_on_the_clock(
        kafka: local.KafkaService, redis_url: str, log_dir: Path) -> None:
    import redis

    # a database of its own: the clock claims the oldest due profiles first, and in a full run the shared
    # database holds thousands of other tests' profiles due before this one's
    redis_url = redis_url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(redis_url).flushdb()
    stack = Stack(kafka.bootstrap, redis_url)
    stack.create_topics()
    worker = worker_process(stack, log_dir, name=f"segments-worker-{stack.tag}", ENGINE_CONFIG=CONFIG).start()
    shopper, early = f"anon-segtopic-{uuid.uuid4().hex[:6]}", f"anon-segtopic-{uuid.uuid4().hex[:6]}"
    try:
        # the worker is consuming before the test's events go out (idle must come from the clock, not from a
        # worker that applied an event more than 10 s after its time)
        produce(stack.bootstrap, stack.events_topic, [event("page_view", early, category="books")])
        wait_until(lambda: profile_of(redis_url, early).exists, timeout=90, what=f"the worker\n{worker.log_tail()}")
        produce(stack.bootstrap, stack.events_topic,
                [event("add_to_cart", shopper, category="shoes", item_id="sku-shoe-1", quantity=1)])
        entered = changes(stack, shopper, lambda ms: ("segment_entered", "idle", "clock") in kinds(ms))
        # the cart put the visitor in has_cart at once; 10 s without an event put them in idle, by the clock
        assert kinds(entered)[:2] == [("segment_entered", "has_cart", "event"),
                                      ("segment_entered", "idle", "clock")], kinds(entered)
        assert entered[1]["segments"] == ["has_cart", "idle"] and entered[0]["profile_id"] == shopper
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        # the profile records what was published once Kafka acknowledged it: just after the message is readable
        wait_until(lambda: client.hget(anonymous_profile_key(shopper), SEGMENTS_FIELD) == "has_cart,idle",
                   timeout=10, what="the published segments to be recorded on the profile")
        # a purchase: out of has_cart (cart emptied) and out of idle (an event just now), then idle again
        produce(stack.bootstrap, stack.events_topic,
                [event("purchase", shopper, order_id="o-1", value=80.0,
                       items=[{"item_id": "sku-shoe-1", "quantity": 1, "price": 80.0}])])
        every = changes(stack, shopper, lambda ms: kinds(ms).count(("segment_entered", "idle", "clock")) == 2)
        assert sorted(kinds(every)[2:4]) == [("segment_exited", "has_cart", "event"),
                                             ("segment_exited", "idle", "event")], kinds(every)
        assert kinds(every)[4] == ("segment_entered", "idle", "clock")
        assert len({m["event_id"] for m in every}) == len(every)
        # a restart with the offsets committed publishes nothing again
        worker.stop()
        worker = worker_process(stack, log_dir, name=f"segments-worker2-{stack.tag}", ENGINE_CONFIG=CONFIG).start()
        wait_until(lambda: worker.proc is not None and worker.proc.poll() is None, timeout=10, what="restart")
        again = changes(stack, shopper, lambda ms: len(ms) >= len(every), linger=6.0)
        assert kinds(again) == kinds(every), "published again after a restart"
    finally:
        worker.stop()
