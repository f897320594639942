"""The events hook of attribution (``engine.attribution``): touches and conversions of a batch, per person.

Per batch that has any (most events are neither a touch nor a conversion and cost one type test):

1. one pipelined round trip: per person one small script on the person's slot reads the erasure marker, the
   personalisation consent and, for an anonymous id, the customer it is linked to (an erased person or one
   without consent gets no touch list, and their conversions are not counted); and the decision record of a
   touch that names no placement (its placement and holdout arm);
2. only when anonymous ids resolved to customers: the same read for those customers;
3. the attribution script calls, one per person (``engine.attribution.AttributionStore.apply``);
4. when the batch has trusted ``identify`` events: the anonymous ids' touch lists are read and appended to their
   customers' (``_merge``), then deleted.

A touch's arm is its decision record's when that was read, else the sticky assignment decide makes
(``engine.decisions.holdout_arm`` of the event's visitor id: the same id gives the same arm), which spares a
read and a parse of a record (a JSON document) per touch.

A script error raises: the batch processor then runs the hook event by event and dead-letters the event it
fails on (``streams.pipeline.BatchProcessor._run_hooks``); the calls that succeeded before are not counted
twice (the script's offset guard and event tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from engine.attribution import (
    CLICK,
    CONVERSION,
    IMPRESSION,
    MERGED,
    OTHER,
    AttributionStore,
    PersonBatch,
    channel_of,
    conversion_value,
)
from engine.config import EngineConfig
from engine.consent import PERSONALISATION, personalisation_allowed
from engine.decisions import holdout_arm
from engine.layout import (
    DECISION_RECORD,
    PERSONALISATION_FIELD,
    anonymous_subject,
    customer_subject,
    decision_key,
    dedup_token,
    erasure_marker_key,
    identity_key,
    subject_profile_key,
    touches_key,
)
from engine.redis_connection import delete_per_slot, execute_with_scripts, queue_script
from schemas.events import Event
from streams.pipeline import Record

# One person's erasure marker, personalisation consent and, for an anonymous id, the customer it is linked to:
# the keys share the person's hash tag, so one call on its slot reads the three
_PERSON_LUA = """
local out = {redis.call('GET', KEYS[1]) or '', redis.call('HGET', KEYS[2], ARGV[1]) or '', ''}
if KEYS[3] then out[3] = redis.call('GET', KEYS[3]) or '' end
return out
"""


class AttributionFeed:
    """``on_events``: the worker's hook (``streams/app.py``), when ``[attribution] enabled``."""

    def __init__(self, redis: aioredis.Redis, config: EngineConfig) -> None:
        self.redis, self.config = redis, config
        self.store = AttributionStore(redis, config.attribution)
        self.conversions = frozenset(("purchase", *config.attribution.goals))
        self._person = redis.register_script(_PERSON_LUA)
        #: conversions credited to at least one touch, touches recorded (this process)
        self.credited = self.touches = 0

    def _kind(self, ev: Event) -> str | None:
        t = ev.type
        if t == "impression":
            return IMPRESSION
        if t == "click" and isinstance(ev.properties.get("action_id"), str):
            return CLICK
        if t in self.conversions:
            return CONVERSION
        return None

    async def on_events(self, events: Sequence[tuple[Record, Event]]) -> None:
        found = [(rec, ev, kind) for rec, ev in events if (kind := self._kind(ev)) is not None]
        withdrawn = [ev for _, ev in events
                     if ev.type == "consent" and ev.properties.get(PERSONALISATION) is False]
        if withdrawn:  # a withdrawal drops the person's touches (the profile is wiped the same way)
            await self._drop(withdrawn)
        merges = [(rec, ev) for rec, ev in events
                  if ev.type == "identify" and ev.anonymous_id and ev.customer_id]
        if found:
            await self._attribute(events, found)
        if merges:  # after the batch's own touches: the anonymous id's list is complete
            await self._merge(merges)

    async def _attribute(self, events: Sequence[tuple[Record, Event]],
                         found: list[tuple[Record, Event, str]]) -> None:
        # 1. per person, one script call on its slot: erasure marker, personalisation consent and (anonymous id)
        # the customer it is linked to; the decision records of touches that name no placement
        direct = list(dict.fromkeys(_direct(ev) for _, ev, _ in found))
        decisions = list(dict.fromkeys(
            ev.properties["decision_id"] for _, ev, k in found if k != CONVERSION
            and "placement" not in ev.properties and isinstance(ev.properties.get("decision_id"), str)))

        def reads(pipe: Any) -> None:
            for subject, anon in direct:
                self._read_person(pipe, subject, anon)
            for d in decisions:
                pipe.hget(decision_key(d), DECISION_RECORD)

        replies = await execute_with_scripts(self.redis, reads, [self._person])
        state = {subject: (r[0] or None, r[1] or None) for (subject, _), r in zip(direct, replies, strict=False)}
        identity = {anon: r[2] for (_, anon), r in zip(direct, replies, strict=False) if anon and r[2]}
        records = dict(zip(decisions, replies[len(direct):], strict=True))
        subjects = [_subject(ev, identity) for _, ev, _ in found]
        # 2. the customers anonymous ids are linked to (their own marker and consent)
        linked = list(dict.fromkeys(s for s in subjects if s not in state))
        if linked:
            def linked_reads(pipe: Any) -> None:
                for subject in linked:
                    self._read_person(pipe, subject, None)

            for subject, r in zip(linked, await execute_with_scripts(self.redis, linked_reads, [self._person]),
                                  strict=True):
                state[subject] = (r[0] or None, r[1] or None)
        marker = {s: m for s, (m, _) in state.items()}
        consent = {s: k for s, (_, k) in state.items()}
        mode = self.config.privacy.consent_mode
        # 3. one script call per person and partition, events in stream order
        batches: dict[tuple[str, str, int], PersonBatch] = {}
        latest: dict[str, bool] = {}  # a consent event earlier in the batch decides what follows it
        subject_of = {id(ev): s for (_, ev, _), s in zip(found, subjects, strict=True)}
        kind_of = {id(ev): k for _, ev, k in found}
        for rec, ev in events:
            if ev.type == "consent" and PERSONALISATION in ev.properties:
                latest[_subject(ev, identity)] = bool(ev.properties[PERSONALISATION])
            kind = kind_of.get(id(ev))
            if kind is None:
                continue
            subject = subject_of[id(ev)]
            m = marker[subject]
            if m is not None and ev.timestamp * 1000 <= int(m):
                continue
            stored = consent[subject]
            if not latest.get(subject, personalisation_allowed(
                    {} if stored is None else {PERSONALISATION: stored == "1"}, mode)):
                continue
            key = (subject, rec.topic, rec.partition)
            b = batches.get(key)
            if b is None:
                b = batches[key] = PersonBatch(subject, rec.topic, rec.partition, [])
            b.events += [rec.offset, dedup_token(ev.event_id), round(ev.timestamp * 1000), kind,
                         *self._arguments(ev, kind, records)]
        replies = await self.store.apply(list(batches.values()))
        for r in replies:
            if isinstance(r, Exception):
                raise r
        for r in replies:
            self.credited += int(r[1])

    def _read_person(self, pipe: Any, subject: str, anonymous_id: str | None) -> None:
        keys = [erasure_marker_key(subject), subject_profile_key(subject)]
        if anonymous_id is not None:
            keys.append(identity_key(anonymous_id))
        queue_script(pipe, self._person, keys, [PERSONALISATION_FIELD])

    def _arguments(self, ev: Event, kind: str, records: dict[str, Any]) -> list[Any]:
        props = ev.properties
        if kind == CONVERSION:
            return [conversion_value(ev.type, props)]
        self.touches += 1
        action = cast(str, props["action_id"])
        record = _record(records.get(props.get("decision_id")))  # type: ignore[arg-type]
        placement = props.get("placement") if isinstance(props.get("placement"), str) else None
        if placement is None and record is not None:
            placement = record.get("placement")
        declared = self.config.actions.get(action)
        if placement is None and declared is not None and len(declared.placements) == 1:
            placement = declared.placements[0]
        place = self.config.placements.get(placement) if isinstance(placement, str) else None
        if record is not None and isinstance(record.get("holdout_arm"), str):
            arm = record["holdout_arm"]
        elif place is not None:  # the record has not arrived (or expired): the sticky assignment decide made
            arm = holdout_arm(ev.visitor_id, place.id, place.learning.holdout_share)
        else:
            arm = OTHER
        return [action if declared is not None else OTHER, channel_of(props, ev.context),
                place.id if place is not None else OTHER, arm if arm in ("learning", "control") else OTHER]

    async def _merge(self, merges: Sequence[tuple[Record, Event]]) -> None:
        """A trusted ``identify`` (an untrusted one lost its customer id in ``prepare``): the anonymous id's touches
        join the customer's list (kept, not counted again), so a conversion made as the customer credits what
        was shown before the login; then the anonymous list is deleted. Neither side erased. Idempotent: a
        replayed identify finds the anonymous list gone, or the customer's merge guard past its offset."""
        pipe = self.redis.pipeline(transaction=False)
        for _, ev in merges:
            anon, customer = anonymous_subject(ev.anonymous_id or ""), customer_subject(ev.customer_id or "")
            pipe.get(touches_key(anon))
            pipe.get(erasure_marker_key(anon))
            pipe.get(erasure_marker_key(customer))
        replies = await pipe.execute()
        batches, drop = [], []
        for i, (rec, ev) in enumerate(merges):
            raw, *markers = replies[3 * i:3 * i + 3]
            if not raw or any(m is not None and ev.timestamp * 1000 <= int(m) for m in markers):
                continue
            touches = orjson.loads(raw).get("t") or []
            events: list[Any] = []
            for t in touches:
                events += [rec.offset, "", t[0], MERGED, *t[1:5]]
            if events:
                batches.append(PersonBatch(customer_subject(ev.customer_id or ""), rec.topic, rec.partition, events,
                                           guard=f"{rec.topic}:{rec.partition}:merge"))
            drop.append(touches_key(anonymous_subject(ev.anonymous_id or "")))
        for r in await self.store.apply(batches):
            if isinstance(r, Exception):
                raise r
        if drop:
            await delete_per_slot(self.redis, drop)

    async def _drop(self, withdrawn: Sequence[Event]) -> None:
        identity = {}
        anon = [ev.anonymous_id for ev in withdrawn if not ev.customer_id and ev.anonymous_id]
        if anon:
            pipe = self.redis.pipeline(transaction=False)
            for a in anon:
                pipe.get(identity_key(a))
            identity = {a: c for a, c in zip(anon, await pipe.execute(), strict=True) if c is not None}
        keys = {touches_key(_subject(ev, identity)) for ev in withdrawn}
        keys |= {touches_key(anonymous_subject(ev.anonymous_id)) for ev in withdrawn if ev.anonymous_id}
        await delete_per_slot(self.redis, keys)


def _direct(ev: Event) -> tuple[str, str | None]:
    """The subject an event names itself, and the anonymous id to resolve when it names no customer."""
    if ev.customer_id:
        return customer_subject(ev.customer_id), None
    anon = ev.anonymous_id or ""
    return anonymous_subject(anon), anon


def _subject(ev: Event, identity: dict[str, str]) -> str:
    """The person an event is attributed to: as the profile pipeline resolves it (``streams.pipeline._owner``)."""
    if ev.customer_id:
        return customer_subject(ev.customer_id)
    anon = ev.anonymous_id or ""
    customer = identity.get(anon)
    return customer_subject(customer) if customer is not None else anonymous_subject(anon)


def _record(raw: str | bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
