"""The Faust application: consumes ``events`` in batches and applies them to Redis.

Run a worker with ``python -m streams worker -l info`` (or ``faust -A streams.app worker``); scale by
starting more workers (partitions are shared among them by the consumer group).
"""

from __future__ import annotations

import asyncio
import logging

import faust
import redis.asyncio as aioredis

from engine.config import load_config
from engine.profile_store import ProfileStore
from engine.settings import load_settings
from streams.pipeline import BatchProcessor, Record

log = logging.getLogger(__name__)
settings = load_settings()

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
events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
dlq_topic = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")


async def send_dead_letter(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    # Faust flushes its producer before committing offsets, so a dead letter is durable before the
    # offset of the bad record is committed.
    await dlq_topic.send(key=key, value=value, headers=headers)


_processor: BatchProcessor | None = None


def processor() -> BatchProcessor:
    global _processor
    if _processor is None:
        redis = aioredis.from_url(settings.redis_url, decode_responses=True)
        store = ProfileStore(redis, load_config(settings.engine_config))
        _processor = BatchProcessor(store, send_dead_letter)
    return _processor


@app.agent(events_topic)
async def ingest(stream: faust.StreamT) -> None:
    proc = processor()
    async for events in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_timeout):
        records = [
            Record(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
            for e in events
        ]
        delay = 0.1
        while True:  # never drop a batch: retry until Redis answers (offsets are not committed meanwhile)
            try:
                await proc.process(records)
                break
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("redis unavailable (%s); retrying batch of %d in %.1fs", exc, len(records), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
