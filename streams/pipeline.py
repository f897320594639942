"""One batch of raw Kafka records -> validated events -> profile updates in Redis (+ dead letters).

Kept free of Faust so the same code runs in the worker, in benchmarks and in tests.
Order matters only within one customer, and Kafka keys guarantee that; an ``identify`` event splits
the batch so that the anonymous history written before it is merged, and what follows goes to the
customer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from engine.faults import is_infrastructure
from engine.identity import IdentityPolicy, needs_belief
from engine.layout import anonymous_subject, customer_subject, dedup_token
from engine.profile_store import OwnerBatch, ProfileStore
from schemas.events import Event, InvalidEvent, parse_event
from schemas.limits import DEFAULT_LIMITS, EventLimits, check_event, check_size

log = logging.getLogger(__name__)

#: Events further into the future than ``EVENT_MAX_FUTURE_S`` (by the worker's clock), before 2000, or larger
#: than the collector publishes are dead-lettered by the same checks as the collector's
#: (``schemas.limits.check_event``): a far-future time would move the decay landmarks and time-window rings
#: there, zeroing the global popularity and every later event of the profile. This covers events produced
#: straight to the topic.
#: Stages named in a dead letter's ``dlq.stage`` header.
STAGE_VALIDATE, STAGE_PREPARE, STAGE_IDENTITY, STAGE_APPLY, STAGE_POPULARITY = (
    "validate", "prepare", "identity", "apply", "popularity")


class Record(NamedTuple):
    """One Kafka record (a tuple: a frozen dataclass per record costs more, once per event)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    #: the record's Kafka headers: ``pulse-source`` says who sent it (``engine/trust.py``)
    headers: Sequence[tuple[str, bytes]] | None = None


@dataclass(slots=True)
class BatchStats:
    received: int = 0
    applied: int = 0
    #: dead-lettered while prepared (invalid, or a value the feature code could not take)
    invalid: int = 0
    #: dead-lettered while written (a script error on its profile, a failed identity merge, a hook's error)
    isolated: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    #: the profiles the batch wrote to (for what follows the writes: segments)
    owners: set[str] = field(default_factory=set)
    #: of those, the ones whose hash as last written the applier returned, narrowed to what the segments read
    #: (``ProfileStore.apply``'s views; None: no hash left); the others must be read
    views: dict[str, dict[str, str] | None] = field(default_factory=dict)


#: Sends a dead letter: (key, original bytes, headers).
DeadLetterSink = Callable[[bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[None]]
#: Receives the valid events of a batch while their profile updates are written (rewards, models): a hook
#: reads and writes none of the profiles, and runs once per batch even when the batch's writes are retried.
EventHook = Callable[[Sequence[tuple[Record, Event]]], Awaitable[None]]
#: A valid event of a prepared batch: its record, the event, its profile row, its popularity operations.
PreparedItem = tuple[Record, Event, list[Any], list[Any] | None]


@dataclass(slots=True)
class PreparedBatch:
    """A batch parsed and compiled to operations: everything that needs no Redis (see ``BatchProcessor``)."""

    stats: BatchStats
    #: valid events in record order, each with its profile row ``[offset, token, ts, ops, is_consent]``
    #: and its popularity operations (or None)
    items: list[PreparedItem]
    #: the hooks have run (a retried ``apply`` does not run them again), or how many of them did
    hooks_done: bool = False
    hooks_run: int = 0
    #: events a hook failed on (dead-lettered)
    hook_isolated: int = 0


class BatchProcessor:
    """``process`` = ``prepare`` (no Redis: parse, validate, compile operations, dead letters) then ``apply``
    (Redis: identity, the Lua applier, hooks, counters). Only ``apply`` is retried when Redis is down."""

    def __init__(self, store: ProfileStore, dead_letters: DeadLetterSink, hooks: Sequence[EventHook] = (),
                 limits: EventLimits = DEFAULT_LIMITS, identity: IdentityPolicy | None = None,
                 views: bool = False) -> None:
        self.store = store
        self.limits = limits
        self.dead_letters = dead_letters
        self.hooks = list(hooks)
        self.extractor = store.extractor
        #: who may link ids and set a customer's consent (default: the site only, no browser proofs)
        self.identity = identity or IdentityPolicy(None)
        #: have the applier return what the segments read of each profile written (``BatchStats.views``)
        self.views = views

    async def process(self, records: Sequence[Record]) -> BatchStats:
        return await self.apply(await self.prepare(records))

    async def prepare(self, records: Sequence[Record]) -> PreparedBatch:
        stats = BatchStats(received=len(records))
        items: list[PreparedItem] = []
        by_type = stats.by_type
        ops_for, popularity_ops_for = self.extractor.ops_for, self.extractor.popularity_ops_for
        now = time.time()
        limits = self.limits
        for rec in records:
            # one try per event: whatever this event makes the code raise, it is dead-lettered, the batch goes on
            try:
                size = len(rec.value)
                check_size(size, limits)  # before parsing: the collector never publishes more
                ev = parse_event(rec.value)
                check_event(ev, size, now, limits)
                etype, ts = ev.type, ev.timestamp
                if needs_belief(etype, rec.headers, ev.customer_id):
                    ev = self._believed(rec, ev)
                if etype == "identify" and ev.anonymous_id and ev.customer_id:
                    item: PreparedItem = (rec, ev, [], None)  # merged in apply: its ops depend on the stored profile
                else:
                    row = [rec.offset, dedup_token(ev.event_id), ts, ops_for(etype, ts, ev.properties, ev.context),
                           1 if etype == "consent" else 0]
                    item = (rec, ev, row, popularity_ops_for(etype, ts, ev.properties, ev.context) or None)
            except InvalidEvent as exc:
                stats.invalid += 1
                await self.dead_letters(rec.key, rec.value, _dlq_headers(rec, exc.reason, STAGE_VALIDATE))
                continue
            except Exception as exc:  # a value the feature code cannot take must not stall the partition
                log.warning("dead-lettering %s:%s@%s (prepare): %r", rec.topic, rec.partition, rec.offset, exc)
                stats.invalid += 1
                await self.dead_letters(rec.key, rec.value, _dlq_headers(rec, f"internal error: {exc!r}",
                                                                         STAGE_PREPARE))
                continue
            by_type[etype] = by_type.get(etype, 0) + 1
            items.append(item)
        return PreparedBatch(stats, items)

    def _believed(self, rec: Record, ev: Event) -> Event:
        """An event as far as its customer id is trusted: an untrusted one loses it (an identify is then
        recorded on the anonymous id and links nothing, a browser's page view goes to its anonymous id;
        ``engine/identity.py``)."""
        if self.identity.trusted(rec.headers, ev.customer_id or "", ev.properties):
            return ev
        if not ev.anonymous_id:
            raise InvalidEvent(f"customer_id: a {ev.type} from a browser naming a customer id needs an "
                               "anonymous_id, a server key or a valid properties.user_hash (docs/security.md)",
                               event_id=ev.event_id)
        return replace(ev, customer_id=None)

    async def apply(self, prepared: PreparedBatch, on_sent: Callable[[], None] | None = None) -> BatchStats:
        """Write a prepared batch. ``on_sent`` is called once the bulk of its profile writes is sent to Redis
        (the batch loop then prepares the next batch while Redis runs them; see ``streams/consumer.py``).

        An event whose write fails (a script error on its profile, a failed merge, a hook's error) is
        dead-lettered and the rest is written; only an infrastructure fault (``engine.faults``) raises, and
        the caller retries the whole batch (every write is idempotent)."""
        stats, items = prepared.stats, prepared.items
        stats.applied = stats.isolated = 0  # apply may be retried (Redis outage): count once
        stats.views.clear()
        # Resolve anonymous ids once per batch (one round trip); identify events update the map.
        anon = [ev.anonymous_id for _, ev, _, _ in items if ev.customer_id is None and ev.anonymous_id]
        identity = await self.store.resolve(anon)
        bulk, linked = split_linked(items, identity)
        # The owners that identify events link are written in record order, one segment after another; the
        # others' events at the same time, in one pipeline: the two share no profile. Popularity (global,
        # order-free sums) goes with the bulk, for every event.
        # The hooks (reward join, co-visitation feed) run meanwhile: Redis runs their few commands between the
        # bulk's, and their CPU no longer waits for the bulk's replies.
        results = await asyncio.gather(self._apply(bulk, identity, items, stats, on_sent, bulk=True),
                                       self._apply_linked(linked, identity, stats), self._run_hooks(prepared),
                                       return_exceptions=True)
        for r in results:  # every part ran to its end: a retry never overlaps a write still running
            if isinstance(r, BaseException):
                raise r
        stats.applied = results[0] + results[1]  # type: ignore[operator]  # ints: exceptions raised above
        await self.store.incr_worker_counters(
            {"events_received": stats.received, "events_applied": stats.applied, "dead_letters": stats.invalid,
             "dead_letters_isolated": stats.isolated + prepared.hook_isolated}
        )
        return stats

    async def _dead_letter(self, rec: Record, exc: BaseException, stage: str) -> None:
        log.warning("dead-lettering %s:%s@%s (%s): %s", rec.topic, rec.partition, rec.offset, stage, exc)
        await self.dead_letters(rec.key, rec.value, _dlq_headers(rec, f"{type(exc).__name__}: {exc}", stage))

    async def _run_hooks(self, prepared: PreparedBatch) -> None:
        if prepared.hooks_done or not self.hooks:
            return
        valid = [(rec, ev) for rec, ev, _, _ in prepared.items]
        for i, hook in enumerate(self.hooks):
            if i < prepared.hooks_run:
                continue  # done before an infrastructure fault interrupted a later hook
            try:
                await hook(valid)
            except Exception as exc:
                if is_infrastructure(exc):
                    raise
                # a bug a hook did not isolate itself: find the events it fails on, one at a time
                log.warning("hook %s failed on a batch (%r); running it event by event", hook, exc)
                for item in valid:
                    try:
                        await hook([item])
                    except Exception as one:
                        if is_infrastructure(one):
                            raise
                        prepared.hook_isolated += 1
                        await self._dead_letter(item[0], one, f"hook:{getattr(hook, '__qualname__', hook)}")
            prepared.hooks_run = i + 1
        prepared.hooks_done = True

    async def _apply_linked(self, items: Sequence[PreparedItem], identity: dict[str, str], stats: BatchStats) -> int:
        """Events of owners linked by identify events, in record order: the anonymous history before an
        identify is written, then merged into the customer's profile, and what follows goes to the customer."""
        applied = 0
        segment: list[PreparedItem] = []
        for item in items:
            rec, ev = item[0], item[1]
            if _merges(ev):
                applied += await self._apply(segment, identity, (), stats)
                segment = []
                try:
                    merged = await self.store.merge_identity(
                        ev.anonymous_id, ev.customer_id, rec.topic, rec.partition, rec.offset,  # type: ignore[arg-type]
                        ev.event_id, ev.timestamp, ev.properties,
                    )
                except Exception as exc:
                    if is_infrastructure(exc):
                        raise
                    stats.isolated += 1  # the ids stay apart: later events go to their own profiles
                    await self._dead_letter(rec, exc, STAGE_IDENTITY)
                    continue
                if merged:  # else one side is erased: nothing was linked
                    identity[ev.anonymous_id] = ev.customer_id  # type: ignore[index,assignment]
                    stats.owners.add(customer_subject(ev.customer_id))  # type: ignore[arg-type]  # its segments
                    applied += 1
            else:
                segment.append(item)
        return applied + await self._apply(segment, identity, (), stats)

    async def _apply(self, items: Sequence[PreparedItem], identity: dict[str, str],
                     popularity_items: Sequence[PreparedItem], stats: BatchStats,
                     on_sent: Callable[[], None] | None = None, bulk: bool = False) -> int:
        """One pipeline: the owners' events of ``items`` and the popularity operations of ``popularity_items``."""
        owners: dict[tuple[str, int], OwnerBatch] = {}
        sources: dict[tuple[str, int], list[Record]] = {}  # the records of each owner batch, for dead letters
        popularity: dict[tuple[str, int], OwnerBatch] = {}
        pop_sources: dict[tuple[str, int], list[Record]] = {}
        for rec, ev, row, _ in items:
            owner = _owner(ev, identity)
            key = (owner, rec.partition)
            batch = owners.get(key)
            if batch is None:
                batch = owners[key] = self.store.subject_batch(owner, rec.topic, rec.partition)
                sources[key] = []
            batch.events.append(row)
            sources[key].append(rec)
        for rec, _, row, pop_ops in popularity_items:
            if pop_ops:
                pkey = (rec.topic, rec.partition)
                pb = popularity.get(pkey)
                if pb is None:
                    pb = popularity[pkey] = self.store.popularity_batch(rec.topic, rec.partition)
                    pop_sources[pkey] = []
                pb.events.append([rec.offset, "", row[2], pop_ops, 0])
                pop_sources[pkey].append(rec)
        if not owners and not popularity:
            if on_sent is not None:
                on_sent()
            return 0
        batches = [*owners.values(), *popularity.values()]
        # views only for the bulk: a linked owner's profile changes again when it is merged
        views: dict[int, dict[str, str] | None] | None = {} if self.views and bulk else None
        results = await self.store.apply(batches, on_sent, raise_on_error=False, views=views)
        stats.owners.update(owner for owner, _ in owners)
        if views is not None:
            for i, (owner, _) in enumerate(owners):  # in pipeline order: an owner's last batch is its hash now
                if i in views:
                    stats.views[owner] = views[i]
                else:
                    stats.views.pop(owner, None)  # its script failed: read it after the batch
        applied = 0
        srcs = [*sources.values(), *pop_sources.values()]
        for i, (batch, r) in enumerate(zip(batches, results, strict=True)):
            if isinstance(r, Exception):  # this owner's script failed (and wrote nothing): find the bad events
                r = await self._isolate(batch, srcs[i], r, STAGE_APPLY if i < len(owners) else STAGE_POPULARITY,
                                        stats)
            if i < len(owners):  # popularity is bookkeeping, not customer events
                applied += r
        return applied

    async def _isolate(self, batch: OwnerBatch, records: Sequence[Record], error: Exception, stage: str,
                       stats: BatchStats) -> int:
        """Apply one failed owner batch event by event (in order, one pipeline): dead-letter those that fail."""
        log.warning("profile script failed for %s (%s); applying its %d events one by one",
                    batch.owner_keys.keys[0], error, len(batch.events))
        singles = [OwnerBatch(batch.owner_keys, batch.topic, batch.partition, batch.dedup, [row])
                   for row in batch.events]
        applied = 0
        for rec, r in zip(records, await self.store.apply(singles, raise_on_error=False), strict=True):
            if isinstance(r, Exception):
                stats.isolated += 1
                await self._dead_letter(rec, r, stage)
            else:
                applied += r
        return applied


def _merges(ev: Event) -> bool:
    """An identify event that merges an anonymous profile into a customer's (a trusted one: an untrusted
    identify lost its customer id in ``prepare``)."""
    return ev.type == "identify" and bool(ev.anonymous_id) and bool(ev.customer_id)


def _owner(ev: Event, identity: dict[str, str]) -> str:
    """The subject (``engine.layout``: ``c:<customer>`` or ``a:<anonymous id>``) whose profile an event feeds."""
    if ev.customer_id:
        return customer_subject(ev.customer_id)
    anon = ev.anonymous_id or ""
    customer = identity.get(anon)
    return customer_subject(customer) if customer is not None else anonymous_subject(anon)


def split_linked(items: Sequence[PreparedItem],
                 identity: dict[str, str]) -> tuple[list[PreparedItem], list[PreparedItem]]:
    """Split a batch into the events that identify events do not concern and those they do.

    An identify links its anonymous id, its customer and the customer the anonymous id resolved to before:
    those owners' events, the identify events themselves and the anonymous events of a merged id (their
    owner changes at the identify) must be written in record order around the merge. No other event
    writes to any of those owners, so the rest can be written all at once.

    >>> import orjson
    >>> from schemas.events import parse_event
    >>> def item(offset, **fields):
    ...     ev = parse_event(orjson.dumps({"event_id": f"e{offset}", "timestamp": "2026-01-01T00:00:00Z",
    ...                                    "properties": {}, **fields}))
    ...     return (Record("events", 0, offset, None, b""), ev, [], None)
    >>> batch = [item(1, type="page_view", anonymous_id="a1"), item(2, type="page_view", customer_id="c9"),
    ...          item(3, type="identify", anonymous_id="a1", customer_id="c1"),
    ...          item(4, type="page_view", anonymous_id="a1"), item(5, type="click", customer_id="c1",
    ...          properties={"item_id": "i1"})]
    >>> bulk, linked = split_linked(batch, {})
    >>> [r.offset for r, *_ in bulk], [r.offset for r, *_ in linked]
    ([2], [1, 3, 4, 5])
    """
    merges = [(ev.anonymous_id or "", ev.customer_id or "") for _, ev, _, _ in items if _merges(ev)]
    if not merges:
        return list(items), []
    merged_anonymous = {a for a, _ in merges}
    linked_owners = {anonymous_subject(a) for a in merged_anonymous} | {customer_subject(c) for _, c in merges} | {
        customer_subject(identity[a]) for a in merged_anonymous if a in identity}
    bulk: list[PreparedItem] = []
    linked: list[PreparedItem] = []
    for item in items:
        ev = item[1]
        if (_merges(ev) or _owner(ev, identity) in linked_owners
                or (ev.customer_id is None and ev.anonymous_id in merged_anonymous)):
            linked.append(item)
        else:
            bulk.append(item)
    return bulk, linked


def _dlq_headers(rec: Record, reason: str, stage: str) -> list[tuple[str, bytes]]:
    """A dead letter is the original bytes with these headers: why, where in the worker, and where from."""
    return [
        ("dlq.reason", reason[:1000].encode()),
        ("dlq.stage", stage.encode()),
        ("dlq.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode()),
    ]
