"""Decision records to Kafka in batches: no task, no coroutine and no future per request.

A request appends ``(visitor key, record bytes)`` to a buffer. A timer (``flush_interval``, 20 ms: one produce
request per 20 ms rather than per linger period) starts one flush task, which groups the buffer by partition -
the producer's own partitioner (murmur2 of the key, as ``AIOKafkaProducer.send`` does), so a visitor's decisions
stay in order on one partition - fills one ``BatchBuilder`` per partition and hands it over with
``send_batch``: still one Kafka record per decision, keyed by visitor, through the same idempotent ``acks=all``
producer. Delivery is confirmed in the background; a failed batch counts its records in
``pulse_errors_total{where="decision_log_delivery"}``, a full buffer (Kafka down for long) drops and counts in
``decision_log_overflow``. ``close()`` flushes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.partitioner import murmur2

from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


class DecisionLog:
    def __init__(self, producer: Any, topic: str, metrics: ServingMetrics, flush_interval: float = 0.02,
                 max_buffered: int = 50_000) -> None:
        self.producer, self.topic, self.metrics = producer, topic, metrics
        self.flush_interval, self.max_buffered = flush_interval, max_buffered
        self._buf: list[tuple[bytes, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._key_hash: dict[bytes, int] = {}
        self.sent = 0

    def publish(self, key: bytes, value: bytes) -> None:
        """Buffer one record; it is handed to the producer within ``flush_interval``."""
        buf = self._buf
        if len(buf) >= self.max_buffered:
            self.metrics.errors.inc("decision_log_overflow")
            return
        buf.append((key, value))
        if self._timer is None and self._task is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self._start_flush)

    def _start_flush(self) -> None:
        self._timer = None
        if self._task is None and self._buf:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._buf:
                records, self._buf = self._buf, []
                try:
                    await self._send(records)
                except Exception as exc:
                    self.metrics.errors.inc("decision_log", len(records))
                    log.debug("decision records not handed to Kafka: %r", exc)
        finally:
            self._task = None

    def _partition_of(self, key: bytes, partitions: list[int]) -> int:
        h = self._key_hash.get(key)
        if h is None:
            if len(self._key_hash) >= 100_000:
                self._key_hash.clear()
            h = self._key_hash[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[h % len(partitions)]

    async def _send(self, records: list[tuple[bytes, bytes]]) -> None:
        producer = self.producer
        known = producer.client.cluster.partitions_for_topic(self.topic)
        if not known:
            await producer.partitions_for(self.topic)  # waits for the topic's metadata
            known = producer.client.cluster.partitions_for_topic(self.topic)
        partitions = list(known)  # the order AIOKafkaProducer._partition uses
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in records:
            by_partition.setdefault(self._partition_of(key, partitions), []).append((key, value))
        for partition, items in by_partition.items():
            builder, count = producer.create_batch(), 0
            for key, value in items:
                if builder.append(timestamp=None, key=key, value=value) is None:  # full: ship it, start another
                    await self._submit(builder, partition, count)
                    builder, count = producer.create_batch(), 0
                    builder.append(timestamp=None, key=key, value=value)
                count += 1
            await self._submit(builder, partition, count)

    async def _submit(self, builder: Any, partition: int, count: int) -> None:
        try:
            delivery = await self.producer.send_batch(builder, self.topic, partition=partition)
        except Exception:
            self.metrics.errors.inc("decision_log", count)
            return
        self.sent += count
        errors = self.metrics.errors

        def delivered(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                errors.inc("decision_log_delivery", count)

        delivery.add_done_callback(delivered)

    async def close(self) -> None:
        """Hand over everything buffered (called before the producer stops, which waits for delivery)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self._buf:
            self._task = asyncio.get_running_loop().create_task(self._flush())
            with contextlib.suppress(Exception):
                await self._task
