"""Publishes segment entries and exits on the ``segments`` topic, so email and CRM tools can react.

Decide and the profile endpoint evaluate segments when they read a profile (``engine.segments``); this
tracker is the stream's side: after a batch is applied it evaluates the profiles the batch touched, and on
the clock those whose segments time alone can change (``lapsed``: no visit in 30 days), and publishes each
change as a ``segment_entered`` / ``segment_exited`` message (``schemas/json/segment_change.v1.schema.json``)
keyed by the profile id.

Delivery: at least once. The message is handed to the outbox first (the batch's offsets are committed only
once Kafka acknowledged it), then the profile's ``S`` field records what was published; a crash between the
two publishes the change again with the same ``event_id`` (derived from the profile, the segment, the kind
and the profile's last-seen time), so consumers can drop the repeat.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from engine.config import EngineConfig
from engine.layout import (
    LAST_SEEN,
    SEGMENT_DUE_SLOTS,
    SEGMENTS_FIELD,
    segment_due_key,
    segment_due_slot,
    subject_id,
    subject_profile_key,
)
from engine.redis_connection import execute_with_scripts, queue_script
from engine.segment_view import RawView
from engine.segments import Segments, transitions

log = logging.getLogger(__name__)

#: Sends one message (key, value) and returns when it is queued; the returned future resolves on Kafka's ack.
Send = Callable[[bytes, bytes], Awaitable["asyncio.Future[None]"]]

# HSET only on a profile that still exists: an erasure or a TTL expiry between the read and the write must not
# leave a one-field profile behind
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""
# the due profiles of one slot, leased: their score moves LEASE seconds ahead, so a worker that dies before
# it evaluated them leaves them to be claimed again then, and two workers never claim the same ones at once
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[3]), member)
end
return due
"""
#: Profiles evaluated per clock tick at most (the rest wait for the next tick).
TICK_LIMIT = 1024
#: Seconds a claimed profile is left to the worker that claimed it.
CLAIM_LEASE_S = 60.0


def change_message(owner: str, segment: str, kind: str, cause: str, segments: list[str], last_seen_ms: str | None,
                   now: float) -> dict[str, Any]:
    """
    >>> m = change_message("c1", "lapsed", "segment_entered", "clock", ["lapsed"], "1700000000000", 1.7e9 + 9)
    >>> m["type"], m["segment"], m["profile_id"], m["cause"], len(m["event_id"])
    ('segment_entered', 'lapsed', 'c1', 'clock', 32)
    """
    basis = "\x1f".join((owner, segment, kind, last_seen_ms or ""))
    return {"schema_version": 1, "event_id": hashlib.blake2b(basis.encode(), digest_size=16).hexdigest(),
            "type": kind, "segment": segment, "profile_id": owner, "cause": cause, "segments": segments,
            "timestamp": int(now * 1000)}


class SegmentTracker:
    def __init__(self, redis: aioredis.Redis, config: EngineConfig, send: Send) -> None:
        self.redis, self.config, self.send = redis, config, send
        self.segments = Segments(config.segments)
        self._set_if_exists = redis.register_script(_SET_IF_EXISTS)
        self._claim = redis.register_script(_CLAIM)
        self.published = 0

    def __bool__(self) -> bool:
        return bool(self.segments)

    async def update(self, owners: Collection[str], now: float, cause: str = "event",
                     views: Mapping[str, dict[str, str] | None] | None = None) -> int:
        """Evaluate these profiles as of ``now`` and publish what changed; returns the messages sent.
        ``views``: what the applier returned of some of them (``BatchStats.views``: the fields the segments
        read, None for a profile gone); the others are read here.
        Idempotent: run again after a fault, it publishes only what is not recorded yet."""
        if not self.segments or not owners:
            return 0
        owners = list(dict.fromkeys(owners))
        views = views or {}
        unread = [o for o in owners if o not in views]
        pipe = self.redis.pipeline(transaction=False)
        for o in unread:
            pipe.hgetall(subject_profile_key(o))
        read = dict(zip(unread, cast(list[dict[str, str]], await pipe.execute()) if unread else [], strict=True))
        hashes = [views[o] if o in views else read[o] or None for o in owners]
        deliveries: list[asyncio.Future[None]] = []
        records: list[tuple[str, str]] = []
        due: dict[int, dict[str, float]] = {}
        done: dict[int, list[str]] = {}
        for owner, h in zip(owners, hashes, strict=True):
            slot = segment_due_slot(owner)
            if h is None:  # erased or expired: nothing to publish, nothing to look at again
                done.setdefault(slot, []).append(owner)
                continue
            view = RawView(h, self.config)  # only the fields the conditions name are read
            after = self.segments.members_of(view, now)
            stored = h.get(SEGMENTS_FIELD, "")
            before = stored.split(",") if stored else []
            entered, left = transitions(before, after)
            for kind, names in (("segment_entered", entered), ("segment_exited", left)):
                for name in names:
                    message = change_message(subject_id(owner), name, kind, cause, after, h.get(LAST_SEEN), now)
                    deliveries.append(await self.send(subject_id(owner).encode(), orjson.dumps(message)))
            if entered or left:
                records.append((owner, ",".join(after)))
            when = self.segments.next_change(view, now)
            if when is None:
                done.setdefault(slot, []).append(owner)
            else:
                due.setdefault(slot, {})[owner] = when
        if deliveries:
            await asyncio.gather(*deliveries)  # acknowledged before recorded: a crash re-publishes, never loses
        def record(pipe: Any) -> None:
            for owner, value in records:
                queue_script(pipe, self._set_if_exists, [subject_profile_key(owner)], [SEGMENTS_FIELD, value])
            for slot, members in due.items():
                pipe.zadd(segment_due_key(slot), members)
            for slot, gone in done.items():
                pipe.zrem(segment_due_key(slot), *gone)

        if records or due or done:  # every command is safe to repeat
            await execute_with_scripts(self.redis, record, [self._set_if_exists])
        self.published += len(deliveries)
        return len(deliveries)

    async def tick(self, now: float, limit: int = TICK_LIMIT) -> int:
        """Evaluate the profiles whose time has come (leased first: see ``_CLAIM``); returns messages sent."""
        if not self.segments:
            return 0
        per_slot = max(1, limit // SEGMENT_DUE_SLOTS)
        def claim(pipe: Any) -> None:
            for slot in range(SEGMENT_DUE_SLOTS):
                queue_script(pipe, self._claim, [segment_due_key(slot)], [now, per_slot, CLAIM_LEASE_S])

        # a repeat after NOSCRIPT: no claim ran (every call failed) or, on a cluster, a node's claims ran; those
        # wait for their lease, as after a crash
        claimed = [o for owners in cast(list[list[str]], await execute_with_scripts(self.redis, claim, [self._claim]))
                   for o in owners]
        return await self.update(claimed, now, cause="clock") if claimed else 0
