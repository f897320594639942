"""The Faust application: the agents of the write side.

* ``ingest``: ``events`` in batches -> profile features in Redis (+ rewards into the join);
* ``join_decisions``: ``decisions`` -> reward windows opened, impressions counted;
* ``learn``: ``learning`` (keyed by placement) -> River/numpy models -> signed snapshots in Redis;
* a timer settles decisions whose reward window ended (default reward).

Run a worker with ``python -m streams worker -l info`` (or ``faust -A streams.app worker``); scale by
starting more workers (partitions are shared among them by the consumer group).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis

from engine.config import load_config
from engine.learning_store import LearningStore
from engine.profile_store import ProfileStore
from engine.settings import load_settings
from streams.collaborative import CollaborativeFeed
from streams.learner import PlacementLearner
from streams.pipeline import BatchProcessor, Record
from streams.rewards import RewardJoiner

log = logging.getLogger(__name__)
settings = load_settings()
config = load_config(settings.engine_config)
signing_key = settings.model_signing_key.encode()

app = faust.App(
    settings.worker_app_id,
    broker=[f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")],
    store="memory://",
    datadir=settings.worker_data_dir,
    web_enabled=False,
    topic_partitions=settings.events_partitions,
    topic_allow_declare=False,  # topics are created by infra/topics.py with their partition counts
    broker_commit_every=1000,
    broker_commit_interval=1.0,
    producer_acks=-1,
    consumer_auto_offset_reset="earliest",
    # a crashed worker's partitions move to the others after this long (Kafka's default is 45 s)
    broker_session_timeout=settings.worker_session_timeout,
    broker_heartbeat_interval=min(3.0, settings.worker_session_timeout / 3),
)


def raw_topic(name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


events_topic = raw_topic(settings.events_topic)
dlq_topic = raw_topic(settings.dlq_topic)
decisions_topic = raw_topic(settings.decisions_topic)
learning_topic = raw_topic(settings.learning_topic)


async def send_dead_letter(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    # Faust flushes its producer before committing offsets, so a dead letter is durable before the
    # offset of the bad record is committed.
    await dlq_topic.send(key=key, value=value, headers=headers)


async def send_learning_example(key: bytes, value: bytes) -> None:
    await learning_topic.send(key=key, value=value)


class Components:
    """Created on first use inside the worker's event loop (Redis clients bind to a loop)."""

    def __init__(self) -> None:
        self.redis = aioredis.from_url(settings.redis_url, decode_responses=True)
        self.learning_store = LearningStore(self.redis)
        self.joiner = RewardJoiner(self.learning_store, config, send_learning_example, send_dead_letter)
        self.processor = BatchProcessor(ProfileStore(self.redis, config), send_dead_letter,
                                        hooks=[self.joiner.on_events,
                                               CollaborativeFeed(config, send_learning_example).on_events])
        self.learner = PlacementLearner(config)
        self.restored = False


_components: Components | None = None


def components() -> Components:
    global _components
    if _components is None:
        _components = Components()
    return _components


def to_records(events: Any) -> list[Record]:
    return [Record(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
            for e in events]


async def retry_forever(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Never drop a batch: retry until Redis answers (offsets are not committed meanwhile)."""
    delay = 0.1
    while True:
        try:
            return await fn()
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            log.warning("redis unavailable during %s (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@app.agent(events_topic)
async def ingest(stream: faust.StreamT) -> None:
    c = components()
    async for events in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_timeout):
        records = to_records(events)
        await retry_forever("ingest", lambda records=records: c.processor.process(records))


@app.agent(decisions_topic)
async def join_decisions(stream: faust.StreamT) -> None:
    c = components()
    async for events in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_timeout):
        records = to_records(events)
        await retry_forever("decisions", lambda records=records: c.joiner.on_decisions(records, time.time()))


@app.agent(learning_topic)
async def learn(stream: faust.StreamT) -> None:
    c = components()
    if not c.restored:
        await retry_forever("model restore", lambda: c.learner.restore(c.learning_store, signing_key))
        c.restored = True
    async for events in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_timeout):
        for e in events:
            try:
                c.learner.learn(orjson.loads(e.message.value))
            except Exception as exc:  # a malformed example must not stop learning
                log.warning("skipping learning example at %s/%s: %r", e.message.partition, e.message.offset, exc)
        for placement in c.learner.due_snapshots():
            await retry_forever("snapshot", lambda p=placement: c.learner.snapshot(c.learning_store, signing_key, p))


@app.timer(interval=1.0)
async def settle_expired_rewards() -> None:
    c = components()
    await retry_forever("reward expiry", lambda: c.joiner.expire(time.time()))
    # time-based snapshots also happen when no new example arrives
    for placement in c.learner.due_snapshots():
        await retry_forever("snapshot", lambda p=placement: c.learner.snapshot(c.learning_store, signing_key, p))
