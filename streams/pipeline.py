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

from engine.layout import dedup_token
from engine.profile_store import OwnerBatch, ProfileStore
from schemas.events import Event, InvalidEvent, parse_event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
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


class BatchProcessor:
    def __init__(self, store: ProfileStore, dead_letters: DeadLetterSink, hooks: Sequence[EventHook] = ()) -> None:
        self.store = store
        self.dead_letters = dead_letters
        self.hooks = list(hooks)
        self.extractor = store.extractor

    async def process(self, records: Sequence[Record]) -> BatchStats:
        stats = BatchStats(received=len(records))
        valid: list[tuple[Record, Event]] = []
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
            valid.append((rec, ev))
            stats.by_type[ev.type] = stats.by_type.get(ev.type, 0) + 1

        # Resolve anonymous ids once per batch (one round trip); identify events update the map.
        anon = [ev.anonymous_id for _, ev in valid if ev.customer_id is None and ev.anonymous_id]
        identity = await self.store.resolve(anon)
        segment: list[tuple[Record, Event]] = []
        for rec, ev in valid:
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
                segment.append((rec, ev))
        stats.applied += await self._apply(segment, identity)
        for hook in self.hooks:
            await hook(valid)
        await self.store.incr_worker_counters(
            {"events_received": stats.received, "events_applied": stats.applied, "dead_letters": stats.invalid}
        )
        return stats

    async def _apply(self, items: Sequence[tuple[Record, Event]], identity: dict[str, str]) -> int:
        if not items:
            return 0
        owners: dict[tuple[str, int], OwnerBatch] = {}
        popularity: dict[tuple[str, int], OwnerBatch] = {}
        for rec, ev in items:
            owner = ev.customer_id or identity.get(ev.anonymous_id or "", ev.anonymous_id or "")
            key = (owner, rec.partition)
            batch = owners.get(key)
            if batch is None:
                batch = owners[key] = self.store.customer_batch(owner, rec.topic, rec.partition)
            ops = self.extractor.ops_for(ev.type, ev.timestamp, ev.properties, ev.context)
            is_consent = 1 if ev.type == "consent" else 0
            batch.events.append([rec.offset, dedup_token(ev.event_id), ev.timestamp, ops, is_consent])
            pop_ops = self.extractor.popularity_ops_for(ev.type, ev.timestamp, ev.properties)
            if pop_ops:
                pkey = (rec.topic, rec.partition)
                pb = popularity.get(pkey)
                if pb is None:
                    pb = popularity[pkey] = self.store.popularity_batch(rec.topic, rec.partition)
                pb.events.append([rec.offset, "", ev.timestamp, pop_ops, 0])
        results = await self.store.apply([*owners.values(), *popularity.values()])
        return sum(results[: len(owners)])  # popularity is bookkeeping, not customer events


def _dlq_headers(rec: Record, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
    ]
