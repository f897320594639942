"""One batch of raw Kafka records -> validated events -> profile updates in Redis (+ dead letters).

Kept free of Faust so the same code runs in the worker, in benchmarks and in tests.
Order matters only within one customer, and Kafka keys guarantee that; an ``identify`` event splits
the batch so that the anonymous history written before it is merged, and what follows goes to the
customer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.layout import dedup_token
from engine.profile_store import OwnerBatch, ProfileStore
from schemas.events import Event, InvalidEvent, parse_event

log = logging.getLogger(__name__)


class Record(NamedTuple):
    """One Kafka record (a tuple: building a frozen dataclass per record cost ~1 us more)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class BatchStats:
    received: int = 0
    applied: int = 0
    invalid: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


#: Sends a dead letter: (key, original bytes, headers).
DeadLetterSink = Callable[[bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[None]]
#: Receives the valid events of a batch after their profile updates were applied (rewards, models).
EventHook = Callable[[Sequence[tuple[Record, Event]]], Awaitable[None]]


@dataclass(slots=True)
class PreparedBatch:
    """A batch parsed and compiled to operations: everything that needs no Redis (see ``BatchProcessor``)."""

    stats: BatchStats
    #: valid events in record order, each with its profile row ``[offset, token, ts, ops, is_consent]``
    #: and its popularity operations (or None)
    items: list[tuple[Record, Event, list[Any], list[Any] | None]]


class BatchProcessor:
    """``process`` = ``prepare`` (no Redis: parse, validate, compile operations, dead letters) then ``apply``
    (Redis: identity, the Lua applier, hooks, counters). Only ``apply`` is retried when Redis is down."""

    def __init__(self, store: ProfileStore, dead_letters: DeadLetterSink, hooks: Sequence[EventHook] = ()) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.hooks = list(hooks)
        self.extractor = store.extractor

    async def process(self, records: Sequence[Record]) -> BatchStats:
        return await self.apply(await self.prepare(records))

    async def prepare(self, records: Sequence[Record]) -> PreparedBatch:
        stats = BatchStats(received=len(records))
        items: list[tuple[Record, Event, list[Any], list[Any] | None]] = []
        by_type = stats.by_type
        ops_for, popularity_ops_for = self.extractor.ops_for, self.extractor.popularity_ops_for
        for rec in records:
            try:
                ev = parse_event(rec.value)
            except InvalidEvent as exc:
                stats.invalid += 1
                await self.dead_letters(rec.key, rec.value, _dlq_headers(rec, exc.reason))
                continue
            except Exception as exc:  # a bug must not stall the partition: dead-letter with the cause
                log.exception("unexpected error parsing record %s:%s@%s", rec.topic, rec.partition, rec.offset)
                stats.invalid += 1
                await self.dead_letters(rec.key, rec.value, _dlq_headers(rec, f"internal error: {exc!r}"))
                continue
            etype, ts = ev.type, ev.timestamp
            by_type[etype] = by_type.get(etype, 0) + 1
            if etype == "identify" and ev.anonymous_id and ev.customer_id:
                items.append((rec, ev, [], None))  # merged in apply: its operations depend on the stored profile
                continue
            row = [rec.offset, dedup_token(ev.event_id), ts, ops_for(etype, ts, ev.properties, ev.context),
                   1 if etype == "consent" else 0]
            items.append((rec, ev, row, popularity_ops_for(etype, ts, ev.properties) or None))
        return PreparedBatch(stats, items)

    async def apply(self, prepared: PreparedBatch) -> BatchStats:
        stats, items = prepared.stats, prepared.items
        stats.applied = 0  # apply may be retried (Redis outage): count once
        # Resolve anonymous ids once per batch (one round trip); identify events update the map.
        anon = [ev.anonymous_id for _, ev, _, _ in items if ev.customer_id is None and ev.anonymous_id]
        identity = await self.store.resolve(anon)
        segment: list[tuple[Record, Event, list[Any], list[Any] | None]] = []
        for item in items:
            rec, ev = item[0], item[1]
            if ev.type == "identify" and ev.anonymous_id and ev.customer_id:
                stats.applied += await self._apply(segment, identity)
                segment = []
                await self.store.merge_identity(
                    ev.anonymous_id, ev.customer_id, rec.topic, rec.partition, rec.offset, ev.event_id,
                    ev.timestamp,
                )
                identity[ev.anonymous_id] = ev.customer_id
                stats.applied += 1
            else:
                segment.append(item)
        stats.applied += await self._apply(segment, identity)
        valid = [(rec, ev) for rec, ev, _, _ in items]
        for hook in self.hooks:
            await hook(valid)
        await self.store.incr_worker_counters(
            {"events_received": stats.received, "events_applied": stats.applied, "dead_letters": stats.invalid}
        )
        return stats

    async def _apply(self, items: Sequence[tuple[Record, Event, list[Any], list[Any] | None]],
                     identity: dict[str, str]) -> int:
        if not items:
            return 0
        owners: dict[tuple[str, int], OwnerBatch] = {}
        popularity: dict[tuple[str, int], OwnerBatch] = {}
        for rec, ev, row, pop_ops in items:
            owner = ev.customer_id or identity.get(ev.anonymous_id or "", ev.anonymous_id or "")
            key = (owner, rec.partition)
            batch = owners.get(key)
            if batch is None:
                batch = owners[key] = self.store.customer_batch(owner, rec.topic, rec.partition)
            batch.events.append(row)
            if pop_ops:
                pkey = (rec.topic, rec.partition)
                pb = popularity.get(pkey)
                if pb is None:
                    pb = popularity[pkey] = self.store.popularity_batch(rec.topic, rec.partition)
                pb.events.append([rec.offset, "", row[2], pop_ops, 0])
        results = await self.store.apply([*owners.values(), *popularity.values()])
        return sum(results[: len(owners)])  # popularity is bookkeeping, not customer events


def _dlq_headers(rec: Record, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
    ]
