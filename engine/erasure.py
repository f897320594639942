"""Erasure (right to be forgotten) and export (portability) of one person, over every family of keys that
holds them (``engine.layout.PERSON_FAMILIES``).

An erasure of id ``x`` covers both key spaces (the customer ``c:x`` with every anonymous id merged into it,
and the anonymous id ``a:x``), in an order that a failure at any step leaves finishable:

1. the erasure markers ``erased:{<subject>}`` (value: a time in epoch ms) are set first: from then on the
   worker applies no event older than that time for the person (events in flight, a replay of the events
   topic from the beginning) and links nothing to them; they live ``ERASURE_RETENTION_DAYS``;
2. the ids covered are recorded in ``erasing:{c:x}`` before anything is deleted, so that a retry after the
   aliases set is gone still knows every alias;
3. every key of every family is deleted (profiles, aliases, identity entries both ways, the pending
   decisions of the reward join and their index);
4. the caller then publishes the tombstone (``erasures`` topic) and the learner's forget (``learning``), and
   only once Kafka confirmed both calls :meth:`ErasureStore.finish`, which drops the record of step 2.

Every step is idempotent: a 503 halfway and the same ``DELETE`` again finish the job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from engine.config import EngineConfig
from engine.decisions import decision_slot
from engine.features import RawProfile, decode
from engine.layout import (
    aliases_key,
    anonymous_subject,
    customer_subject,
    decision_key,
    decisions_index_key,
    due_key,
    erasure_marker_key,
    erasure_pending_key,
    identity_key,
    legacy_keys,
    segment_due_key,
    segment_due_slot,
    subject_id,
    subject_profile_key,
    touches_key,
)
from engine.redis_connection import per_slot

#: Events this far past the erasure time (s) are still refused: the worker accepts timestamps a little in the
#: future (``EVENT_MAX_FUTURE_S``, 300 s by default; keep it below this), so an event in flight from a fast
#: clock is covered too.
ERASURE_SKEW_S = 3600.0
#: Decisions wait in the reward join at most this long after their window (``engine.learning_store``), so the
#: per-person index of them needs to live no longer than the longest window plus this.
DECISION_INDEX_GRACE_S = 86400


@dataclass(frozen=True, slots=True)
class Erasure:
    keys_deleted: int
    #: every raw id the person was known by (the learner holds histories under them)
    visitors: list[str]
    #: the subjects erased (``c:<id>``, ``a:<id>``)
    subjects: list[str]


class ErasureStore:
    """Erase and export people; see the module docstring for the order of the steps."""

    def __init__(self, redis: aioredis.Redis, config: EngineConfig, retention_s: float) -> None:
        self.redis, self.config, self.retention_s = redis, config, int(retention_s)

    async def _subjects(self, person_id: str) -> tuple[list[str], str | None]:
        """The person's subjects (customer, its aliases, the anonymous id) and, when ``person_id`` is an
        anonymous id linked to a customer, that customer (whose aliases set lists it)."""
        customer = customer_subject(person_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(aliases_key(person_id))
        pipe.smembers(erasure_pending_key(customer))
        pipe.get(identity_key(person_id))
        aliases, pending, linked_to = await pipe.execute()
        ids = sorted((set(cast(set[str], aliases)) | set(cast(set[str], pending))) - {person_id})
        return [customer, anonymous_subject(person_id), *(anonymous_subject(a) for a in ids)], linked_to

    async def erase(self, person_id: str, now: float | None = None) -> Erasure:
        """Steps 1-3 of the module docstring; call :meth:`finish` once the tombstone and forget are sent."""
        now = time.time() if now is None else now
        cutoff_ms = str(round((now + ERASURE_SKEW_S) * 1000))
        customer, anon = customer_subject(person_id), anonymous_subject(person_id)
        pipe = self.redis.pipeline(transaction=False)
        for s in (customer, anon):  # markers first: the worker stops writing before anything is read
            pipe.set(erasure_marker_key(s), cutoff_ms, ex=self.retention_s)
        await pipe.execute()
        subjects, linked_to = await self._subjects(person_id)
        aliases = [subject_id(s) for s in subjects[2:]]
        pipe = self.redis.pipeline(transaction=False)
        for s in subjects[2:]:
            pipe.set(erasure_marker_key(s), cutoff_ms, ex=self.retention_s)
        if aliases:  # step 2: what a retry needs once the aliases set is gone
            pipe.sadd(erasure_pending_key(customer), *aliases)
            pipe.expire(erasure_pending_key(customer), self.retention_s)
        for s in subjects:
            pipe.smembers(decisions_index_key(s))
        replies = await pipe.execute()
        decisions = sorted({d for r in replies[-len(subjects):] for d in cast(set[str], r)})
        keys = [aliases_key(person_id), identity_key(person_id)]
        for s in subjects:
            keys += [subject_profile_key(s), decisions_index_key(s), touches_key(s), *legacy_keys(s, self.config)]
        keys += [identity_key(a) for a in aliases]
        keys += [decision_key(d) for d in decisions]
        pipe = self.redis.pipeline(transaction=False)
        groups = per_slot(dict.fromkeys(keys))  # one DEL per cluster slot (a person's keys share a few)
        for group in groups:
            pipe.delete(*group)
        for d in decisions:
            pipe.zrem(due_key(decision_slot(d)), d)
        for s in subjects:  # the clock's schedule of segment changes (streams/segments.py)
            pipe.zrem(segment_due_key(segment_due_slot(s)), s)
        if linked_to:  # an anonymous id erased on its own: its customer no longer lists it
            pipe.srem(aliases_key(linked_to), person_id)
        deleted = sum((await pipe.execute())[:len(groups)])
        return Erasure(int(deleted), [person_id, *aliases], subjects)

    async def drop_decisions(self, ids: Iterable[str]) -> int:
        """Delete the decisions waiting in the reward join for these ids (both key spaces): a withdrawal of
        personalisation stops the reward join for the person. Returns how many."""
        subjects = [s for i in ids for s in (customer_subject(i), anonymous_subject(i))]
        if not subjects:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for s in subjects:
            pipe.smembers(decisions_index_key(s))
        decisions = sorted({d for r in await pipe.execute() for d in cast(set[str], r)})
        pipe = self.redis.pipeline(transaction=False)
        for group in per_slot([*(decision_key(d) for d in decisions), *(decisions_index_key(s) for s in subjects)]):
            pipe.delete(*group)
        for d in decisions:
            pipe.zrem(due_key(decision_slot(d)), d)
        await pipe.execute()
        return len(decisions)

    async def finish(self, person_id: str) -> None:
        """Step 4: the tombstone and the learner's forget are confirmed; nothing is left to redo."""
        await self.redis.delete(erasure_pending_key(customer_subject(person_id)))

    async def family_keys(self, person_id: str) -> dict[str, list[str]]:
        """The keys that exist for a person, per family of ``PERSON_FAMILIES`` (what erasure must empty)."""
        subjects, linked_to = await self._subjects(person_id)
        aliases = [subject_id(s) for s in subjects[2:]]
        pipe = self.redis.pipeline(transaction=False)
        for s in subjects:
            pipe.smembers(decisions_index_key(s))
        decisions = sorted({d for r in await pipe.execute() for d in cast(set[str], r)})
        families = {
            "profile": [subject_profile_key(s) for s in subjects],
            "aliases": [aliases_key(person_id)],
            "identity": [identity_key(a) for a in [person_id, *aliases]],
            "decisions": [decisions_index_key(s) for s in subjects],
            "reward_join": [decision_key(d) for d in decisions],
            "erasing": [erasure_pending_key(subjects[0])],
            "touches": [touches_key(s) for s in subjects],
        }
        pipe = self.redis.pipeline(transaction=False)
        for s in subjects:
            pipe.zscore(segment_due_key(segment_due_slot(s)), s)
        scheduled = [s for s, score in zip(subjects, await pipe.execute(), strict=True) if score is not None]
        out: dict[str, list[str]] = {}
        for family, keys in families.items():
            pipe = self.redis.pipeline(transaction=False)
            for k in keys:
                pipe.exists(k)
            out[family] = [k for k, n in zip(keys, await pipe.execute(), strict=True) if n]
        out["segment_due"] = [f"{segment_due_key(segment_due_slot(s))} {s}" for s in scheduled]
        if linked_to is not None:
            out["identity"] += [aliases_key(linked_to)] if await self.redis.sismember(
                aliases_key(linked_to), person_id) else []
        return out

    async def export(self, person_id: str, now: float | None = None) -> dict[str, Any]:
        """Everything held about a person, as one JSON-ready document: the profiles of both key spaces
        (decoded features and the raw fields), the identities (aliases, the customer an anonymous id is linked
        to), consent, pending decisions and whether an erasure marker is set."""
        now = time.time() if now is None else now
        subjects, linked_to = await self._subjects(person_id)
        pipe = self.redis.pipeline(transaction=False)
        for s in subjects:
            pipe.hgetall(subject_profile_key(s))
            pipe.smembers(decisions_index_key(s))
        pipe.get(erasure_marker_key(subjects[0]))
        for s in subjects:
            pipe.get(touches_key(s))
        replies = await pipe.execute()
        touches = {s: orjson.loads(t).get("t") or []
                   for s, t in zip(subjects, replies[-len(subjects):], strict=True) if t}
        replies = replies[:-len(subjects)]
        profiles: dict[str, Any] = {}
        consent: dict[str, Any] = {}
        decisions: list[str] = []
        for i, s in enumerate(subjects):
            h, dec = cast(dict[str, str], replies[2 * i]), cast(set[str], replies[2 * i + 1])
            decisions += sorted(dec)
            if h:
                p = decode(subject_id(s), RawProfile(hash=h), self.config, now)
                profiles[s] = {"features": p.to_dict(), "fields": h}
                if p.consent:
                    consent[s] = p.consent
        return {
            "id": person_id,
            "profiles": profiles,
            "identities": {"customer_id": person_id, "anonymous_ids": [subject_id(s) for s in subjects[2:]],
                           "anonymous_id_linked_to": linked_to},
            "consent": consent,
            "pending_decisions": decisions,
            # attribution touches per subject: [time ms, action, channel, placement, holdout arm], oldest first
            "touches": touches,
            "erased_until_ms": replies[-1],
            "exported_at": now,
        }


def subjects_of(customer_ids: Iterable[str | None], anonymous_ids: Iterable[str | None]) -> list[str]:
    """The subjects of the given ids (None skipped), customers first."""
    return [customer_subject(c) for c in customer_ids if c] + [anonymous_subject(a) for a in anonymous_ids if a]
