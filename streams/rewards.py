"""The reward join in the stream: decisions meet their clicks and conversions, once.

* a decision record (from the ``decisions`` topic) opens a reward window;
* an event naming a ``decision_id`` (click, purchase, feedback) adds a reward - duplicates (same
  ``event_id``) are counted once, rewards after the decision was learned are counted as late;
* when the window ends, the aggregated reward (or the placement's default) is settled once and sent
  as a learning example to the ``learning`` topic, keyed by placement, so that exactly one learner
  owns each placement's model.

Faust-free: the worker wires it to topics, tests and benchmarks call it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine.config import EngineConfig, RewardSettings
from engine.decisions import Reward, reward_of, reward_value
from engine.learning_store import Finalised, JoinOutcome, LearningStore
from schemas.decision import validate_decision
from schemas.events import Event, InvalidEvent
from streams.pipeline import DeadLetterSink, Record

log = logging.getLogger(__name__)

#: Sends one learning example: (placement key, example JSON).
ExampleSink = Callable[[bytes, bytes], Awaitable[None]]


@dataclass(slots=True)
class JoinStats:
    decisions: int = 0
    rewards: int = 0
    duplicates: int = 0
    late: int = 0
    unknown_placement: int = 0
    learned: int = 0
    defaulted: int = 0


def learning_example(f: Finalised) -> dict[str, Any]:
    rec = f.record
    return {
        "decision_id": rec["decision_id"], "placement": rec["placement"], "context": rec["context"],
        "action_id": rec["actions"][0]["action_id"], "propensity": rec["propensity"],
        "policy": rec["policy"], "model_version": rec["model_version"], "arm": rec["holdout_arm"],
        "reward": f.reward, "defaulted": f.defaulted, "timestamp": rec["timestamp"],
        "action_features": rec.get("action_features"),
    }


def _outcome_increments(record: dict[str, Any], out: JoinOutcome) -> list[tuple[str, str, str, int]]:
    """The click and conversion counters a join adds to its decision's placement and holdout arm."""
    pid, arm = record["placement"], record["holdout_arm"]
    return ([(pid, arm, "clicks", 1)] if out.new_click else []) + (
        [(pid, arm, "conversions", 1)] if out.new_conversion else [])


class RewardJoiner:
    def __init__(self, store: LearningStore, config: EngineConfig, emit: ExampleSink,
                 dead_letters: DeadLetterSink) -> None:
        self.store, self.config, self.emit, self.dead_letters = store, config, emit, dead_letters
        self.stats = JoinStats()
        self._default_placement = next(iter(config.placements.values()), None)

    async def _settle(self, finalised: Sequence[Finalised]) -> None:
        increments: list[tuple[str, str, str, float]] = []
        for f in finalised:
            example = learning_example(f)
            await self.emit(example["placement"].encode(), orjson.dumps(example))
            increments.append((example["placement"], example["arm"], "learned", 1))
            increments.append((example["placement"], example["arm"], "reward_sum", f.reward))
            self.stats.learned += 1
            self.stats.defaulted += f.defaulted
        await self.store.count(increments)

    async def on_decisions(self, records: Sequence[Record], now: float) -> None:
        await self.apply_decisions(await self.prepare_decisions(records), now)

    async def prepare_decisions(self, records: Sequence[Record]) -> list[tuple[dict[str, Any], RewardSettings]]:
        """Decode and validate decision records (invalid ones are dead-lettered); no Redis."""
        logged: list[tuple[dict[str, Any], RewardSettings]] = []
        placements = self.config.placements
        for rec in records:
            try:
                record = orjson.loads(rec.value)
                validate_decision(record)
            except (orjson.JSONDecodeError, InvalidEvent) as exc:
                reason = exc.reason if isinstance(exc, InvalidEvent) else f"not JSON: {exc}"
                await self.dead_letters(rec.key, rec.value, [("dlq.reason", reason.encode()),
                                        ("dlq.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode())])
                continue
            placement = placements.get(record["placement"])
            if placement is None:
                self.stats.unknown_placement += 1
                continue
            logged.append((record, placement.learning.reward))
        return logged

    async def apply_decisions(self, logged: Sequence[tuple[dict[str, Any], RewardSettings]], now: float) -> None:
        """Open the reward windows of a batch of decisions: one pipeline of reward-join calls, counters in one more."""
        if not logged:
            return
        settled, increments = [], []
        for (record, _), out in zip(logged, await self.store.decisions_logged(logged, now), strict=True):
            if out.status == "duplicate":
                continue
            self.stats.decisions += 1
            increments.append((record["placement"], record["holdout_arm"], "impressions", 1))
            increments += _outcome_increments(record, out)
            if out.finalised:
                settled.append(out.finalised)
        await self.store.count(increments)
        await self._settle(settled)

    async def on_events(self, events: Sequence[tuple[Record, Event]]) -> None:
        """The events pipeline hook: rewards carried by events (one pipeline of reward-join calls per batch)."""
        rewards: list[tuple[Reward, str, float, RewardSettings]] = []
        placements = self.config.placements
        for _, ev in events:
            props = ev.properties
            if "decision_id" not in props:  # most events carry no reward: skip them cheaply
                continue
            reward = reward_of(ev.type, props)
            if reward is None:
                continue
            # the placement is known from the decision record; until it arrives use the first
            # placement's settings only for the value, which depends on the kind alone by default
            record_placement = props.get("placement")
            placement = placements.get(record_placement) if record_placement else None
            # None only for a configuration without any placement
            settings = (placement or self._default_placement).learning.reward  # type: ignore[union-attr]
            rewards.append((reward, ev.event_id, reward_value(reward, settings), settings))
        if not rewards:
            return
        settled, increments = [], []
        for out in await self.store.rewards_received(rewards):
            self.stats.rewards += 1
            if out.status == "duplicate":
                self.stats.duplicates += 1
                continue
            if out.status == "late":
                self.stats.late += 1
                increments.append((out.record["placement"] if out.record else "unknown", "all", "late_rewards", 1))
                continue
            if out.record is not None:
                increments += _outcome_increments(out.record, out)
            if out.finalised:
                settled.append(out.finalised)
        await self.store.count(increments)
        await self._settle(settled)

    async def expire(self, now: float) -> int:
        defaults = {p.id: p.learning.reward.default for p in self.config.placements.values()}
        finalised = await self.store.expire_due(now, defaults)
        await self._settle(finalised)
        return len(finalised)
