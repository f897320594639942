"""The local services of ``infra.local`` really start, stop and restart. Each test starts its own (it
stops or closes it), not the shared ``kafka``/``redis_server`` fixtures."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from engine.kafka_client import kafka_client_kwargs
from infra import local
from infra.probe import kafka_ready
from infra.topics import ensure_topics
from tests.support import start_or_fail


def test_local_kafka_creates_topics_and_round_trips_a_message() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    kafka = start_or_fail("Kafka", lambda: local.start_kafka(partitions=4))
    data_dir = getattr(kafka, "data_dir", None)
    topic = f"infra-test-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        await ensure_topics(kafka.bootstrap, 4, [topic, f"{topic}.dlq"])
        await ensure_topics(kafka.bootstrap, 4, [topic])  # idempotent
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, **kafka_client_kwargs())
        await admin.start()
        try:
            (info,) = await admin.describe_topics([topic])
            assert len(info["partitions"]) == 4
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True,
                                    **kafka_client_kwargs())
        await producer.start()
        try:
            sent = await producer.send_and_wait(topic, b"hello", key=b"visitor-1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka.bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest",
            **kafka_client_kwargs(),
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        assert (msg.key, msg.value, msg.partition, msg.offset) == (b"visitor-1", b"hello", sent.partition, 0)

    try:
        kafka.start()  # starting twice is a no-op
        asyncio.run(scenario())
    finally:
        kafka.close()
    assert not kafka_ready(kafka.bootstrap, timeout=0.5)
    if data_dir is not None:
        assert not Path(data_dir).exists()


def test_local_redis_survives_stop_and_start_on_the_same_port() -> None:
    import redis

    server = start_or_fail("Redis", local.start_redis)
    data_dir = getattr(server, "data_dir", None)
    try:
        url = server.url
        redis.Redis.from_url(url).set("infra-test", "1")
        server.stop()
        assert not server.is_running()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        server.start()
        assert server.url == url
        assert redis.Redis.from_url(url).get("infra-test") == b"1"  # AOF kept the write
    finally:
        server.close()
    if data_dir is not None:
        assert not Path(data_dir).exists()
