"""The high-volume topics (``events``, ``decisions``) in batches on a plain aiokafka group consumer.

Why not a Faust agent: an agent that only takes batches and counts them costs more CPU per event than our
whole feature pipeline, and events reach Redis later (``bench/throughput.py``; the figures:
``docs/performance-history.md``). Faust keeps the low-volume ``learning`` agent, the reward
expiry timer and the worker's lifecycle (``streams/app.py`` starts this loop as a Faust service).

Delivery: at-least-once + idempotent Redis updates (offset guards and event-id dedup in the Lua scripts) =
exactly-once effect.

* offsets are committed by hand, only for batches whose Redis writes are done and whose dead letters and
  learning examples are acknowledged by Kafka (``acks=all``): every send of a batch is awaited before a
  commit that covers it;
* commits happen every ``commit_interval`` seconds (and on rebalance and shutdown), not per batch: a crash
  replays at most that much, which the idempotent scripts absorb;
* two batches are in flight at most: while batch N's Redis writes run (``write``), batch N+1 is fetched and
  prepared (parsed, validated, compiled to operations: no Redis). Batch N+1's writes start only after batch
  N's are done, so per-customer order holds. The loop gives batch N's writes a head start: it fetches and
  prepares batch N+1 once they say their commands are sent (the ``sent`` callback), not before, since
  preparing first would keep Redis idle while the writes wait for the CPU (with streamed writes,
  ``engine.redis_connection.execute_streamed``, and batches no longer cut at identify events,
  ``streams.pipeline.split_linked``);
* a rebalance waits for the batch in progress, then commits it (``on_partitions_revoked``); a batch fetched
  across a rebalance is not processed, its partitions are rewound (or left to their new owner);
* Redis unavailable (or out of memory, or restarted: ``engine.faults``): the batch is retried with a bounded
  backoff until Redis answers, nothing is committed meanwhile (``streams.app.retry_forever``);
* Kafka unavailable: sends that fail are sent again by ``Outbox.flush`` until acknowledged, and the commit waits
  for them; a failed commit is retried with the next one. Nothing stops the loop for good but a bug. A flush
  or commit waiting longer than ``KAFKA_PAUSE_AFTER_S``, or polls finding nothing while no fetch was answered that
  long, is a pause (``KafkaWaits``): logged when it starts and ends, counted in
  ``pulse_worker_kafka_pauses_total`` and ``pulse_worker_kafka_pause_seconds_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)

from engine.kafka_client import kafka_client_kwargs
from engine.kafka_producer import keep_batches_until_delivered
from streams.pipeline import Record

log = logging.getLogger(__name__)
#: A wait on Kafka (the outbox's acknowledgements, an offset commit) longer than this is logged as a pause.
KAFKA_PAUSE_AFTER_S = 3.0

#: The step of a batch that writes (Redis, Kafka sends); returned by a ``BatchHandler``. It is given a
#: callback to call once the bulk of its Redis commands is sent: the loop waits for that (or for the step's
#: end) before it fetches and prepares the next batch, so that Redis runs those commands meanwhile.
Write = Callable[[Callable[[], None]], Awaitable[Any]]
#: Prepares one topic's records of a batch (all partitions, in partition then offset order) without touching
#: Redis, and returns the step that writes them; the loop runs that step after the previous batch's writes.
BatchHandler = Callable[[Sequence[Record]], Awaitable[Write]]


def transient_kafka_error(exc: BaseException) -> bool:
    """A Kafka error that waiting can cure (broker away, leader moving, a batch expired while it was away)."""
    return isinstance(exc, KafkaTimeoutError | KafkaConnectionError) or (
        isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)))


class _Send:
    """One message of the outbox: sent again until Kafka acknowledges it; ``delivered`` resolves then."""

    __slots__ = ("topic", "key", "value", "headers", "ack", "delivered")

    def __init__(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None,
                 delivered: asyncio.Future[None]) -> None:
        self.topic, self.key, self.value, self.headers, self.delivered = topic, key, value, headers, delivered
        self.ack: asyncio.Future[Any] | None = None

    def on_ack(self, fut: asyncio.Future[Any]) -> None:
        if not self.delivered.done() and not fut.cancelled() and fut.exception() is None:
            self.delivered.set_result(None)


class Outbox:
    """Kafka sends (dead letters, learning examples) whose acknowledgement a commit must wait for.

    A send that fails for a transient reason (Kafka stopped, a leader moving) is sent again by ``flush``,
    with a bounded backoff, until Kafka takes it: ``flush`` (and so the commit that waits for it) pauses
    meanwhile instead of failing the worker. The producer is idempotent, so a resend the broker had already
    written is not written twice."""

    def __init__(self, bootstrap: str, linger_ms: int = 5, max_backoff: float = 5.0, *,
                 kafka_kwargs: Mapping[str, Any] | None = None) -> None:
        """``kafka_kwargs``: the connection's security (``KafkaSecurity.client_kwargs``; default: the
        environment's, ``engine.kafka_client``)."""
        # kept until delivered: an outage longer than the request timeout must not break it (engine.kafka_producer)
        self.producer = keep_batches_until_delivered(AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms, enable_idempotence=True,
            **(kafka_client_kwargs() if kafka_kwargs is None else kafka_kwargs)))
        self.pending: list[_Send] = []
        self.max_backoff = max_backoff
        #: sends given up (a permanent error such as a message too large), and resends after a failure
        self.dropped = self.resent = 0
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self.producer.start()
            self._started = True

    async def send(self, topic: str, key: bytes | None, value: bytes,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[None]:
        """Queue a message; the returned future resolves once Kafka acknowledged it (``acks=all``)."""
        entry = _Send(topic, key, value, headers, asyncio.get_running_loop().create_future())
        await self._send(entry)
        if len(self.pending) >= 1024:  # sends outside batches (the expiry timer): forget the delivered ones
            self.pending = [e for e in self.pending if not e.delivered.done()]
        self.pending.append(entry)
        return entry.delivered

    async def _send(self, entry: _Send) -> None:
        try:
            ack = await self.producer.send(entry.topic, value=entry.value, key=entry.key, headers=entry.headers)
        except KafkaError as exc:  # e.g. no metadata while the broker is away: flush sends it again
            ack = asyncio.get_running_loop().create_future()
            ack.set_exception(exc)
            ack.exception()  # retrieved: no "exception never retrieved" warning
        entry.ack = ack
        ack.add_done_callback(entry.on_ack)

    async def flush(self) -> None:
        """Wait until every send so far is acknowledged, sending again those that failed transiently."""
        delay, started = 0.1, None
        while self.pending:
            pending, self.pending = self.pending, []
            await asyncio.gather(*(e.ack for e in pending if e.ack is not None), return_exceptions=True)
            failed = []
            for e in pending:
                exc = e.ack.exception() if e.ack is not None and not e.ack.cancelled() else None
                if exc is None:
                    continue
                if not transient_kafka_error(exc):  # waiting cannot cure it: give it up, loudly
                    self.dropped += 1
                    log.error("dropping a message to %s (%d bytes): %r", e.topic, len(e.value), exc)
                    if not e.delivered.done():
                        e.delivered.set_exception(exc)
                        e.delivered.exception()
                    continue
                failed.append(e)
            if not failed:
                continue
            if started is None:
                started = time.monotonic()
                log.warning("kafka unavailable (%r): %d sends wait, nothing is committed meanwhile",
                            failed[0].ack.exception() if failed[0].ack else None, len(failed))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
            for e in failed:
                self.resent += 1
                await self._send(e)
            self.pending = failed + self.pending
        if started is not None:
            log.warning("kafka back: sends acknowledged after %.1fs", time.monotonic() - started)

    async def stop(self) -> None:
        if self._started:
            try:
                await self.flush()
            finally:
                await self.producer.stop()
                self._started = False


class KafkaWaits:
    """Kafka outages as the loop sees them: a flush or commit waiting longer than ``after`` seconds, or polls that
    find nothing while no fetch was answered for that long. One outage is one pause, logged as it starts and as it
    ends and counted (``pauses``, ``seconds``). Waits are not bounded: nothing is committed past what Kafka has
    not acknowledged."""

    def __init__(self, after: float = KAFKA_PAUSE_AFTER_S) -> None:
        self.after = after
        self.pauses = 0
        self.seconds = 0.0
        self.since: float | None = None  # wall-clock start of the pause in progress

    def begin(self, since: float, why: str) -> bool:
        """Start a pause (unless one is in progress: then False)."""
        if self.since is not None:
            return False
        self.since = since
        log.warning("kafka unavailable: %s (%.0fs); paused, nothing is committed meanwhile", why, time.time() - since)
        return True

    def end(self, why: str) -> None:
        if self.since is None:
            return
        paused, self.since = time.time() - self.since, None
        self.pauses += 1
        self.seconds += paused
        log.warning("kafka back (%s) after %.1fs; resumed", why, paused)

    async def run(self, what: str, aw: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.after)
            if done:
                return task.result()
            mine = self.begin(time.time() - self.after, f"the {what} waits")
            try:
                return await task
            finally:
                if mine:
                    self.end(f"the {what} ended")
        except asyncio.CancelledError:
            task.cancel()
            raise

    def polled(self, consumer: AIOKafkaConsumer, got_records: bool, empty_since: float | None) -> None:
        """Judge a poll: empty polls for ``after`` seconds while no fetch was answered that long (the consumer
        stamps every fetch answer, even an empty one) mean the brokers are away; records or a fresh answer, back."""
        if got_records:
            self.end("records fetched")
            return
        stamps = [s for tp in consumer.assignment() if (s := consumer.last_poll_timestamp(tp))]
        if not stamps:  # nothing fetched yet (starting, or no partitions): nothing to judge
            return
        now, last = time.time(), max(stamps) / 1000.0
        if now - last <= self.after:
            self.end("fetches answered")
        elif empty_since is not None and now - empty_since >= self.after:
            self.begin(last, "no fetch answered")


class BatchLoop(ConsumerRebalanceListener):
    """``getmany`` -> handlers per topic -> periodic manual commit; see the module docstring."""

    def __init__(self, consumer_factory: Callable[[], AIOKafkaConsumer], topics: Sequence[str],
                 handlers: Mapping[str, BatchHandler], outbox: Outbox, *, max_records: int = 500,
                 commit_interval: float = 1.0, poll_timeout: float = 0.5) -> None:
        self._factory = consumer_factory
        self.topics = list(topics)
        self.handlers = handlers
        self.outbox = outbox
        self.max_records = max_records
        self.commit_interval = commit_interval
        self.poll_timeout_ms = int(poll_timeout * 1000)
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # held while a batch is processed or offsets are committed
        self._generation = 0  # bumped by every rebalance callback
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._last_commit = time.monotonic()
        self._stopping = False
        self._failure: BaseException | None = None  # a batch or a commit that failed: nothing more is committed
        self._writing: asyncio.Task[None] | None = None  # the previous batch's writes, if still running
        self.batches = 0
        self.commit_failures = 0
        self.kafka = KafkaWaits()
        self._empty_since: float | None = None  # since when every poll found nothing
        # where the loop's wall time went: fetching, preparing, waiting for the previous batch's writes, committing
        self.seconds = {"poll": 0.0, "prepare": 0.0, "wait_writes": 0.0, "head_start": 0.0, "commit": 0.0}

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.outbox.start()
        self.consumer = self._factory()
        self.consumer.subscribe(self.topics, listener=self)
        await self.consumer.start()

    async def run(self) -> None:
        consumer = self.consumer
        assert consumer is not None, "start() first"
        seconds = self.seconds
        while not self._stopping:
            if self._failure is not None:
                raise RuntimeError("a batch could not be completed or committed") from self._failure
            generation = self._generation
            t0 = time.perf_counter()
            try:
                batch = await consumer.getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
            except (ConsumerStoppedError, IllegalStateError):
                if self._stopping:
                    break
                raise
            except KafkaError as exc:  # the broker away: the consumer reconnects on its own
                if not transient_kafka_error(exc):
                    raise
                log.warning("fetch failed (%r); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            t1 = time.perf_counter()
            seconds["poll"] += t1 - t0
            if batch:
                self._empty_since = None
            elif self._empty_since is None:
                self._empty_since = time.time()
            try:
                self.kafka.polled(consumer, bool(batch), self._empty_since)
            except Exception as exc:  # watching for outages must never stop the loop
                log.debug("could not judge the poll: %r", exc)
            async with self._lock:
                if self._stopping or generation != self._generation:
                    # fetched across a rebalance (or stopping): the partitions' owner (us again, or another
                    # worker) reads them again from their committed offsets
                    self._rewind(batch)
                    continue
                if batch:
                    writes = await self._prepare(batch)
                    t2 = time.perf_counter()
                    seconds["prepare"] += t2 - t1
                    await self._drain()  # batch N's writes end before batch N+1's begin
                    t1 = time.perf_counter()
                    seconds["wait_writes"] += t1 - t2
                    sent = asyncio.Event()
                    self._writing = asyncio.create_task(self._write(batch, writes, sent.set))
                    await self._head_start(sent)
                    t2 = time.perf_counter()
                    seconds["head_start"] += t2 - t1
                    t1 = t2
                if time.monotonic() - self._last_commit >= self.commit_interval:
                    await self._commit()  # commits the batches whose writes are done
                    seconds["commit"] += time.perf_counter() - t1

    async def stop(self) -> None:
        """Finish the batch in progress, commit it, leave the group."""
        self._stopping = True
        log.info("batch loop: %d batches; seconds polling %.2f, preparing %.2f, waiting for writes %.2f, "
                 "giving writes a head start %.2f, committing %.2f", self.batches, *self.seconds.values())
        try:
            async with self._lock:
                await self._drain()
                await self._commit()
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            await self.outbox.stop()

    # -- batches ----------------------------------------------------------------------------------------
    async def _prepare(self, batch: dict[TopicPartition, list[Any]]) -> list[Write]:
        by_topic: dict[str, list[Record]] = {}
        for tp in sorted(batch, key=lambda t: (t.topic, t.partition)):
            topic, partition = tp.topic, tp.partition
            records = by_topic.setdefault(topic, [])
            records.extend([Record(topic, partition, m.offset, m.key, m.value, m.headers) for m in batch[tp]])
        writes = []
        for topic in self.topics:  # events first, then decisions (the reward join is order-free)
            todo = by_topic.get(topic)
            if todo:
                writes.append(await self.handlers[topic](todo))
        return writes

    async def _head_start(self, sent: asyncio.Event) -> None:
        """Let the new batch's writes run until their Redis commands are sent (or they end), before this loop
        takes the CPU to fetch and prepare the next batch: Redis then runs them meanwhile."""
        writing = self._writing
        if writing is None:
            return
        waiter = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait((writing, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _write(self, batch: dict[TopicPartition, list[Any]], writes: Sequence[Write],
                     sent: Callable[[], None]) -> None:
        try:
            for write in writes:
                await write(sent)
        except BaseException as exc:
            self._failure = self._failure or exc  # the loop stops; nothing of this batch is committed
            raise
        for tp, msgs in batch.items():
            self._processed[tp] = msgs[-1].offset + 1
        self.batches += 1

    async def _drain(self) -> None:
        """Wait for the previous batch's writes (raises what they raised)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def _rewind(self, batch: dict[TopicPartition, list[Any]]) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        for tp, msgs in batch.items():
            if msgs and tp in assigned:
                try:
                    consumer.seek(tp, msgs[0].offset)
                except (IllegalStateError, KafkaError):  # no longer ours: the new owner starts at the commit
                    pass

    async def _commit(self) -> None:
        self._last_commit = time.monotonic()
        # offsets taken before the flush: every send of these batches was queued before their offsets were
        # recorded, so the flush covers them (a batch finishing during the flush waits for the next commit).
        # The flush runs even with nothing to commit: it resends what the expiry timer's sends lost.
        offsets, self._processed = self._processed, {}
        try:
            # dead letters and learning examples of these batches are durable first
            await self.kafka.run("outbox flush", self.outbox.flush())
        except Exception as exc:
            self._failure = exc  # never commit past a lost send: the worker stops, a restart replays
            raise
        if not offsets:
            return
        try:
            await self.kafka.run("offset commit", self.consumer.commit(offsets))  # type: ignore[union-attr]
        except (CommitFailedError, IllegalStateError) as exc:
            # we were removed from the group: the partitions' new owner replays from the last commit, and the
            # idempotent scripts make that replay harmless
            log.warning("offset commit failed (%s); the new owner of these partitions replays them", exc)
        except KafkaError as exc:
            if not transient_kafka_error(exc):
                raise
            # the coordinator is away: commit these offsets with the next ones (later batches' are newer)
            for tp, offset in offsets.items():
                self._processed.setdefault(tp, offset)
            self.commit_failures += 1
            log.warning("offset commit failed (%r); retried at the next commit", exc)

    async def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet fetched, per assigned partition: its high watermark minus this consumer's position
        (partitions whose watermark or position is not known yet are left out)."""
        consumer, out = self.consumer, {}
        if consumer is None:
            return {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:  # known once fetching began; until then it would wait for the offset reset
                position = await asyncio.wait_for(consumer.position(tp), 0.5)
            except (TimeoutError, KafkaError, IllegalStateError):
                continue
            out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    # -- rebalance listener ---------------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._generation += 1
        async with self._lock:  # the batch in progress is finished, then committed
            try:
                await self._drain()
                await self._commit()
            except Exception as exc:  # aiokafka only logs a listener's errors: make the loop stop
                self._failure = self._failure or exc
                raise

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._generation += 1
