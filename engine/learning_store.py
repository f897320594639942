"""Redis side of learning: the reward join, per-arm experiment counters and model snapshots.

The keys and fields (``dec:``, ``due:``, ``arms:``, ``model:``) are those of ``engine.layout``. A model hash
holds ``version`` and ``blob`` (signed snapshot, ``engine.snapshots``), and for a model whose learner keeps
more than serving needs, ``state``: the learner's own snapshot, which it resumes from (co-visitation: with
its per-visitor histories, which serving never loads).
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, FieldT

from engine.config import RewardSettings
from engine.decisions import Reward, decision_slot
from engine.faults import is_infrastructure
from engine.layout import (
    DECISION_SLOTS,
    HOT_KEY_SHARDS,
    MODEL_BLOB,
    MODEL_STATE,
    MODEL_VERSION,
    arm_field,
    arms_key,
    decision_key,
    decision_key_prefix,
    decisions_index_key,
    due_key,
    erasure_marker_key,
    model_key,
    sum_counters,
)
from engine.redis_connection import is_cluster

log = logging.getLogger(__name__)
REWARD_JOIN_LUA = resources.files("engine").joinpath("lua/reward_join.lua").read_text()
#: Decision state outlives its window by this much, so late rewards are recognised as late.
LATE_GRACE_S = 3600
#: State created by a reward whose decision record has not arrived lives this long (``lua/reward_join.lua``).
EARLY_REWARD_TTL_S = 300
#: A final decision whose learning example Kafka has not acknowledged within this long is sent again.
SETTLE_LEASE_S = 120.0


@dataclass(slots=True)
class Finalised:
    """A decision whose reward is settled: learn ``reward`` for its shown action, exactly once."""

    record: dict[str, Any]
    reward: float
    clicked: bool
    converted: bool
    defaulted: bool

    @property
    def decision_id(self) -> str:
        return str(self.record["decision_id"])


@dataclass(slots=True)
class JoinOutcome:
    status: str  # final | pending | late | duplicate | error (the script refused this one: ``error``)
    finalised: Finalised | None = None
    record: dict[str, Any] | None = None
    new_click: bool = False
    new_conversion: bool = False
    error: Exception | None = None


class LearningStore:
    def __init__(self, redis: aioredis.Redis, settle_lease: float = SETTLE_LEASE_S) -> None:
        self.redis = redis
        self.settle_lease = settle_lease
        self._sha: str | None = None
        #: the experiment counters' shards (``engine.layout.HOT_KEY_SHARDS``): on a single Redis shard 0 alone
        self.shards = HOT_KEY_SHARDS if is_cluster(redis) else 1

    # -- the join -----------------------------------------------------------------------------
    async def _eval_many(self, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Several script calls in one pipelined round trip, executed by Redis in this order. A call the script
        refused has its error in its place; infrastructure errors (``engine.faults``) are raised."""
        if not calls:
            return []
        for attempt in (0, 1):
            if self._sha is None:
                self._sha = await self.redis.script_load(REWARD_JOIN_LUA)
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)  # a cluster pipeline too
            replies = await pipe.execute(raise_on_error=False)
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                return replies
            if not attempt and any(isinstance(e, NoScriptError) for e in errors):
                self._sha = None  # Redis restarted or flushed its scripts: the calls that failed wrote nothing
                continue
            infra = next((e for e in errors if is_infrastructure(e)), None)
            if infra is not None:
                raise infra
            return replies
        raise AssertionError("unreachable")

    @staticmethod
    def _decision_call(record: dict[str, Any], settings: RewardSettings, lease_until: float
                       ) -> tuple[list[str], list[Any]]:
        did = record["decision_id"]
        expires_at = record["timestamp"] / 1000.0 + settings.window_seconds
        ttl = int(settings.window_seconds + LATE_GRACE_S)
        return ([decision_key(did), due_key(decision_slot(did))],
                ["decision", did, orjson.dumps(record), expires_at, ttl, settings.aggregation, lease_until])

    @staticmethod
    def _decision_outcome(record: dict[str, Any], reply: Any) -> JoinOutcome:
        if isinstance(reply, Exception):
            return JoinOutcome("error", record=record, error=reply)
        status, reward, clicked, converted, _ = reply
        out = JoinOutcome(status, record=record, new_click=clicked == "1", new_conversion=converted == "1")
        if status == "final":
            out.finalised = Finalised(record, float(reward), clicked == "1", converted == "1", False)
        return out

    async def decision_logged(self, record: dict[str, Any], settings: RewardSettings, now: float) -> JoinOutcome:
        return (await self.decisions_logged([(record, settings)], now))[0]

    async def decisions_logged(self, items: Sequence[tuple[dict[str, Any], RewardSettings]], now: float
                               ) -> list[JoinOutcome]:
        """``decision_logged`` for a batch of decision records: one pipeline, applied in order."""
        lease_until = time.time() + self.settle_lease
        replies = await self._eval_many([self._decision_call(r, s, lease_until) for r, s in items])
        return [self._decision_outcome(r, reply) for (r, _), reply in zip(items, replies, strict=True)]

    # -- the decisions of a person (erasure: engine/erasure.py) -----------------------------------
    async def erased_subjects(self, items: Sequence[tuple[str, float]]) -> set[str]:
        """Of (subject, decision time s), the subjects whose erasure marker covers that time."""
        if not items:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for subject, _ in items:
            pipe.get(erasure_marker_key(subject))
        markers = await pipe.execute()
        return {s for (s, ts), m in zip(items, markers, strict=True) if m is not None and ts * 1000 <= int(m)}

    async def index_decisions(self, items: Sequence[tuple[str, str, float, int]]) -> int:
        """Record each (subject, decision id, decision time s, TTL s) under its person, so that an erasure finds
        the person's decisions waiting in the join. A person erased meanwhile (its marker read after the
        write: the erasure sets it before it reads the index) has the decision deleted again; returns how
        many were."""
        if not items:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for subject, did, _, ttl in items:
            pipe.sadd(decisions_index_key(subject), did)
            pipe.expire(decisions_index_key(subject), ttl)
            pipe.get(erasure_marker_key(subject))
        replies = await pipe.execute()
        erased = [(s, d) for (s, d, ts, _), m in zip(items, replies[2::3], strict=True)
                  if m is not None and ts * 1000 <= int(m)]
        if erased:
            pipe = self.redis.pipeline(transaction=False)
            for s, d in erased:
                pipe.delete(decision_key(d))
                pipe.zrem(due_key(decision_slot(d)), d)
                pipe.srem(decisions_index_key(s), d)
            await pipe.execute()
        return len(erased)

    @staticmethod
    def _reward_call(reward: Reward, event_id: str, value: float, settings: RewardSettings, lease_until: float
                     ) -> tuple[list[str], list[Any]]:
        did = reward.decision_id
        ttl = int(settings.window_seconds + LATE_GRACE_S)
        return ([decision_key(did), due_key(decision_slot(did))],
                ["reward", did, event_id, value, reward.kind, ttl, settings.aggregation, lease_until])

    @staticmethod
    def _reward_outcome(reply: Any) -> JoinOutcome:
        if isinstance(reply, Exception):
            return JoinOutcome("error", error=reply)
        status, agg, clicked, converted, record, new_click, new_conv = reply
        rec = orjson.loads(record) if record else None
        out = JoinOutcome(status, record=rec, new_click=new_click == "1", new_conversion=new_conv == "1")
        if status == "final" and rec is not None:
            out.finalised = Finalised(rec, float(agg), clicked == "1", converted == "1", False)
        return out

    async def reward_received(self, reward: Reward, event_id: str, value: float,
                              settings: RewardSettings) -> JoinOutcome:
        return (await self.rewards_received([(reward, event_id, value, settings)]))[0]

    async def rewards_received(self, items: Sequence[tuple[Reward, str, float, RewardSettings]]
                               ) -> list[JoinOutcome]:
        """``reward_received`` for a batch of rewards: one pipeline, applied in order (so a duplicate
        within the batch is still counted once)."""
        lease_until = time.time() + self.settle_lease
        replies = await self._eval_many([self._reward_call(*item, lease_until) for item in items])
        return [self._reward_outcome(reply) for reply in replies]

    async def first_impressions(self, items: Sequence[tuple[str, RewardSettings]]) -> list[bool]:
        """For each ``(decision_id, settings)`` of an impression: True if it is the decision's first (the CTR's
        denominator counts decisions shown, once each, whatever the snippet or a redelivery repeats)."""
        calls = [([decision_key(did), due_key(decision_slot(did))],
                  ["shown", did, int(settings.window_seconds + LATE_GRACE_S)]) for did, settings in items]
        replies = await self._eval_many(calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [reply == 1 for reply in replies]

    async def expire_due(self, now: float, default_reward: dict[str, float], limit: int = 500) -> list[Finalised]:
        """Fix the reward of every decision whose window ended (its aggregated reward, or the placement's
        default), and of every final one whose lease ran out before it was settled: learn them, then
        ``settle`` them once Kafka has their examples."""
        out: list[Finalised] = []
        for attempt in (0, 1):
            sha = self._sha or await self.redis.script_load(REWARD_JOIN_LUA)
            self._sha = sha
            # the ids due per slot, then one script call per slot that has some, with every key it touches
            # declared (a Redis Cluster routes by them): a second round trip only when something is due
            pipe = self.redis.pipeline(transaction=False)
            for slot in range(DECISION_SLOTS):
                pipe.zrangebyscore(due_key(slot), "-inf", now, start=0, num=limit)
            due = [(slot, ids) for slot, ids in enumerate(await pipe.execute()) if ids]
            if not due:
                return out
            pipe = self.redis.pipeline(transaction=False)
            for slot, ids in due:
                keys = [due_key(slot), *(decision_key_prefix(slot) + d for d in ids)]
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, "expire", now, self.settle_lease, *ids)
            replies = await pipe.execute(raise_on_error=False)
            if not attempt and any(isinstance(r, NoScriptError) for r in replies):
                self._sha = None
                continue
            for flat in replies:
                if isinstance(flat, Exception):
                    if is_infrastructure(flat):
                        raise flat
                    log.error("reward expiry failed for a slot: %s", flat)
                    continue
                for i in range(0, len(flat), 5):
                    try:
                        record = orjson.loads(flat[i + 1])
                        has_reward = flat[i + 2] != ""
                        reward = float(flat[i + 2]) if has_reward else default_reward.get(record["placement"], 0.0)
                        out.append(Finalised(record, reward, flat[i + 3] == "1", flat[i + 4] == "1", not has_reward))
                    except (ValueError, KeyError, TypeError) as exc:  # a record that cannot be learned: drop it
                        log.error("dropping decision %s from the reward join: %r", flat[i], exc)
                        await self.settle([flat[i]])
            return out
        raise AssertionError("unreachable")

    async def settle(self, decision_ids: Sequence[str]) -> list[bool]:
        """Mark decisions settled (their examples are in Kafka): never sent again. True where newly settled."""
        replies = await self._eval_many([([decision_key(d), due_key(decision_slot(d))], ["settled", d])
                                         for d in decision_ids])
        return [r == 1 for r in replies]

    # -- experiment counters -----------------------------------------------------------------
    async def count(self, increments: Sequence[tuple[str, str, str, float]]) -> None:
        """``(placement, arm, counter, n)`` increments, pipelined."""
        if not increments:
            return
        shard = random.randrange(self.shards) if self.shards > 1 else 0  # a cluster: any shard, summed on read
        pipe = self.redis.pipeline(transaction=False)
        for placement, arm, counter, n in increments:
            if float(n).is_integer():
                pipe.hincrby(arms_key(placement, shard), arm_field(arm, counter), int(n))
            else:
                pipe.hincrbyfloat(arms_key(placement, shard), arm_field(arm, counter), n)
        await pipe.execute()

    async def arm_counters(self, placement: str) -> dict[str, dict[str, float]]:
        if self.shards == 1:
            raw = cast(dict[str, str], await self.redis.hgetall(arms_key(placement)))  # a decoding client
        else:
            pipe = self.redis.pipeline(transaction=False)
            for shard in range(self.shards):
                pipe.hgetall(arms_key(placement, shard))
            raw = sum_counters(cast(list[dict[str, str]], await pipe.execute()))
        out: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            arm, _, counter = field.partition(":")
            out.setdefault(arm, {})[counter] = float(value)
        return out

    # -- model snapshots ----------------------------------------------------------------------
    async def publish_model(self, placement: str, version: int, blob: bytes, state: bytes | None = None) -> None:
        """``blob``: what serving loads; ``state``: what the learner resumes from, when it differs."""
        # base64 because the shared client decodes replies as text
        mapping: dict[FieldT, EncodableT] = {MODEL_VERSION: version, MODEL_BLOB: base64.b64encode(blob)}
        if state is not None:
            mapping[MODEL_STATE] = base64.b64encode(state)
        await self.redis.hset(model_key(placement), mapping=mapping)

    async def model_version(self, placement: str) -> int | None:
        v = await self.redis.hget(model_key(placement), MODEL_VERSION)
        return int(v) if v is not None else None

    async def model_blob(self, placement: str) -> bytes | None:
        blob = await self.redis.hget(model_key(placement), MODEL_BLOB)
        return base64.b64decode(blob) if blob is not None else None

    async def model_snapshot(self, placement: str) -> tuple[int, bytes] | None:
        """The published version and blob, read together (one HMGET: a publication between two reads would
        pair a version with another version's blob)."""
        version, blob = await self.redis.hmget(model_key(placement), ["version", "blob"])
        if version is None or blob is None:
            return None
        return int(version), base64.b64decode(blob)

    async def learner_state(self, placement: str) -> bytes | None:
        """The learner's own snapshot: ``state`` when one was published, else the serving ``blob``."""
        state, blob = await self.redis.hmget(model_key(placement), [MODEL_STATE, MODEL_BLOB])
        chosen = state if state is not None else blob
        return base64.b64decode(chosen) if chosen is not None else None
