"""Decision records to Kafka in batches: no task, no coroutine and no future per request.

A request appends ``(visitor key, record bytes)`` to a buffer. A timer (``flush_interval``, 20 ms: one produce
request per 20 ms rather than per linger period) starts one flush task, which groups the buffer by partition -
the producer's own partitioner (murmur2 of the key, as ``AIOKafkaProducer.send`` does), so a visitor's decisions
stay in order on one partition - fills one ``BatchBuilder`` per partition and hands it over with
``send_batch``: still one Kafka record per decision, keyed by visitor, through the same idempotent ``acks=all``
producer. Delivery is confirmed in the background; a failed batch counts its records in
``pulse_errors_total{where="decision_log_delivery"}``. ``close()`` flushes what is left.

Memory is bounded: records buffered or taken by the running flush (not yet handed to the producer) may hold at
most ``max_buffered_bytes`` (16 MiB, about 8,000 records of ~2 KB); and at most ``max_buffered`` records
(``DECISION_LOG_MAX_BUFFERED``, 20,000) may be answered and not yet acknowledged by Kafka - buffered, in the
running flush, or handed to the producer and waiting for ``acks=all``. Beyond either a record is dropped and
counted in ``decision_log_overflow`` (Kafka slow or down for seconds). What the producer holds is also bounded
by its own ``max_batch_size`` per partition (``send_batch`` waits while a partition has a batch pending).
A record is buffered as a right-sized copy: the bytes ``orjson.dumps`` returns keep its whole output buffer,
several times the record.

What a crash loses: a SIGKILLed API loses the records it held unacknowledged, never more than ``max_buffered``
(the gauge ``pulse_decision_log_unacknowledged`` shows how many); with Kafka healthy a record is handed over
within ``flush_interval`` (20 ms) and acknowledged a round trip later, so about that much of the decisions
answered last. Measured by ``tests/integration/test_chaos.py`` (``docs/guarantees.md``).

Why: bounded by count only, with the producer's default 16 KiB batches shipping fewer decisions than a loaded
API made, the buffer grew to hundreds of MiB and glibc kept the heap mapped after the backlog drained
(``python -m bench.decide_rss``; the figures: ``docs/performance-history.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.partitioner import murmur2

from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)
#: bytes counted per buffered record besides its key and value (bytes headers, the tuple, the list slot)
RECORD_OVERHEAD = 128


class DecisionLog:
    def __init__(self, producer: Any, topic: str, metrics: ServingMetrics, flush_interval: float = 0.02,
                 max_buffered: int = 20_000, max_buffered_bytes: int = 16 << 20) -> None:
        self.producer, self.topic, self.metrics = producer, topic, metrics
        self.flush_interval = flush_interval
        self.max_buffered, self.max_buffered_bytes = max_buffered, max_buffered_bytes
        self._buf: list[tuple[bytes, bytes]] = []
        #: bytes of the records in ``_buf`` and of those the running flush has not handed to the producer yet
        self._held_bytes = 0
        self._inflight = 0
        #: records answered and not acknowledged by Kafka yet (nor given up): buffered, in the flush, in the producer
        self._unacked = 0
        self._handed = 0  # records of the running flush handed to the producer (or given up) so far
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._key_hash: dict[bytes, int] = {}
        self.sent = 0

    def publish(self, key: bytes, value: bytes) -> None:
        """Buffer one record; it is handed to the producer within ``flush_interval``."""
        buf = self._buf
        value = bytes(memoryview(value))  # right-sized (see the module docstring); cheap next to the record
        size = len(key) + len(value) + RECORD_OVERHEAD
        if self._unacked >= self.max_buffered or self._held_bytes + size > self.max_buffered_bytes:
            self.metrics.errors.inc("decision_log_overflow")
            return
        self._held_bytes += size
        self._unacked += 1
        self.metrics.decision_log_unacked.value = self._unacked
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
                self._inflight, self._handed = len(records), 0
                try:
                    await self._send(records)
                except Exception as exc:
                    self.metrics.errors.inc("decision_log", len(records) - self._handed)
                    self._settled(len(records) - self._handed)
                    log.debug("decision records not handed to Kafka: %r", exc)
                finally:
                    self._inflight = 0
                    self._held_bytes -= sum(len(k) + len(v) for k, v in records) + RECORD_OVERHEAD * len(records)
                    del records
        finally:
            self._task = None

    def _settled(self, count: int) -> None:
        """``count`` records left this process's hands: acknowledged by Kafka, or given up (and counted)."""
        self._unacked -= count
        self.metrics.decision_log_unacked.value = self._unacked

    @property
    def unacked(self) -> int:
        """Records answered and not yet acknowledged by Kafka: what a crash now would lose."""
        return self._unacked

    @property
    def held_bytes(self) -> int:
        """Bytes held by buffered records and by those the running flush has not handed over yet."""
        return self._held_bytes

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
            self._handed += count
            self._settled(count)
            return
        self._handed += count
        self.sent += count
        errors = self.metrics.errors

        def delivered(f: asyncio.Future[Any]) -> None:
            self._settled(count)
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
