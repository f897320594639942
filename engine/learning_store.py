"""Redis side of learning: the reward join, per-arm experiment counters and model snapshots.

Layout (see also ``engine.layout``):

* ``dec:{<slot>}:<decision_id>`` hash - a decision waiting for rewards (``lua/reward_join.lua``);
* ``due:{<slot>}`` zset - decision ids by the end of their reward window, 256 slots;
* ``arms:{<placement>}`` hash - ``<arm>:impressions|clicks|conversions|reward_sum|learned``;
* ``model:{<placement>}`` hash - ``version`` and ``blob`` (signed snapshot, ``engine.snapshots``), and for a
  model whose learner keeps more than serving needs, ``state``: the learner's own snapshot, which it resumes
  from (co-visitation: with its per-visitor histories, which serving never loads).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine.config import RewardSettings
from engine.decisions import Reward, decision_slot
from engine.layout import model_key

REWARD_JOIN_LUA = resources.files("engine").joinpath("lua/reward_join.lua").read_text()
#: Decision state outlives its window by this much, so late rewards are recognised as late.
LATE_GRACE_S = 3600
SLOTS = 256


def decision_key(decision_id: str) -> str:
    return f"dec:{{{decision_slot(decision_id):02x}}}:{decision_id}"


def due_key(slot: int) -> str:
    return f"due:{{{slot:02x}}}"


def arms_key(placement: str) -> str:
    return f"arms:{{{placement}}}"


@dataclass(slots=True)
class Finalised:
    """A decision whose reward is settled: learn ``reward`` for its shown action, exactly once."""

    record: dict[str, Any]
    reward: float
    clicked: bool
    converted: bool
    defaulted: bool


@dataclass(slots=True)
class JoinOutcome:
    status: str  # final | pending | late | duplicate
    finalised: Finalised | None = None
    record: dict[str, Any] | None = None
    new_click: bool = False
    new_conversion: bool = False


class LearningStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._sha: str | None = None

    # -- the join -----------------------------------------------------------------------------
    async def _eval_many(self, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Several script calls in one pipelined round trip, executed by Redis in this order."""
        if not calls:
            return []
        for attempt in (0, 1):
            if self._sha is None:
                self._sha = await self.redis.script_load(REWARD_JOIN_LUA)
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            try:
                return await pipe.execute()
            except NoScriptError:  # Redis restarted or flushed its scripts: every call failed, none applied
                self._sha = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _decision_call(record: dict[str, Any], settings: RewardSettings) -> tuple[list[str], list[Any]]:
        did = record["decision_id"]
        expires_at = record["timestamp"] / 1000.0 + settings.window_seconds
        ttl = int(settings.window_seconds + LATE_GRACE_S)
        return ([decision_key(did), due_key(decision_slot(did))],
                ["decision", did, orjson.dumps(record), expires_at, ttl, settings.aggregation])

    @staticmethod
    def _decision_outcome(record: dict[str, Any], reply: Sequence[Any]) -> JoinOutcome:
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
        replies = await self._eval_many([self._decision_call(r, s) for r, s in items])
        return [self._decision_outcome(r, reply) for (r, _), reply in zip(items, replies, strict=True)]

    @staticmethod
    def _reward_call(reward: Reward, event_id: str, value: float, settings: RewardSettings
                     ) -> tuple[list[str], list[Any]]:
        did = reward.decision_id
        ttl = int(settings.window_seconds + LATE_GRACE_S)
        return ([decision_key(did), due_key(decision_slot(did))],
                ["reward", did, event_id, value, reward.kind, ttl, settings.aggregation])

    @staticmethod
    def _reward_outcome(reply: Sequence[Any]) -> JoinOutcome:
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
        replies = await self._eval_many([self._reward_call(*item) for item in items])
        return [self._reward_outcome(reply) for reply in replies]

    async def expire_due(self, now: float, default_reward: dict[str, float], limit: int = 500) -> list[Finalised]:
        """Settle every decision whose window ended: its aggregated reward, or the placement's default."""
        pipe = self.redis.pipeline(transaction=False)
        sha = self._sha or await self.redis.script_load(REWARD_JOIN_LUA)
        self._sha = sha
        for slot in range(SLOTS):
            pipe.evalsha(sha, 1, due_key(slot), "expire", now, limit, f"dec:{{{slot:02x}}}:")
        out: list[Finalised] = []
        for flat in await pipe.execute():
            for i in range(0, len(flat), 4):
                record = orjson.loads(flat[i])
                has_reward = flat[i + 1] != ""
                reward = float(flat[i + 1]) if has_reward else default_reward.get(record["placement"], 0.0)
                out.append(Finalised(record, reward, flat[i + 2] == "1", flat[i + 3] == "1", not has_reward))
        return out

    # -- experiment counters -----------------------------------------------------------------
    async def count(self, increments: Sequence[tuple[str, str, str, float]]) -> None:
        """``(placement, arm, counter, n)`` increments, pipelined."""
        if not increments:
            return
        pipe = self.redis.pipeline(transaction=False)
        for placement, arm, counter, n in increments:
            if float(n).is_integer():
                pipe.hincrby(arms_key(placement), f"{arm}:{counter}", int(n))
            else:
                pipe.hincrbyfloat(arms_key(placement), f"{arm}:{counter}", n)
        await pipe.execute()

    async def arm_counters(self, placement: str) -> dict[str, dict[str, float]]:
        raw = await self.redis.hgetall(arms_key(placement))
        out: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            arm, _, counter = field.partition(":")
            out.setdefault(arm, {})[counter] = float(value)
        return out

    # -- model snapshots ----------------------------------------------------------------------
    async def publish_model(self, placement: str, version: int, blob: bytes, state: bytes | None = None) -> None:
        """``blob``: what serving loads; ``state``: what the learner resumes from, when it differs."""
        # base64 because the shared client decodes replies as text
        mapping: dict[str, Any] = {"version": version, "blob": base64.b64encode(blob)}
        if state is not None:
            mapping["state"] = base64.b64encode(state)
        await self.redis.hset(model_key(placement), mapping=mapping)

    async def model_version(self, placement: str) -> int | None:
        v = await self.redis.hget(model_key(placement), "version")
        return int(v) if v is not None else None

    async def model_blob(self, placement: str) -> bytes | None:
        blob = await self.redis.hget(model_key(placement), "blob")
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
        state, blob = await self.redis.hmget(model_key(placement), ["state", "blob"])
        chosen = state if state is not None else blob
        return base64.b64decode(chosen) if chosen is not None else None
