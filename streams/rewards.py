"""The reward join in the stream: decisions meet their clicks and conversions, once.

* a decision record (from the ``decisions`` topic) opens a reward window;
* an event naming a ``decision_id`` (click, purchase, feedback) adds a reward - duplicates (same
  ``event_id``) are counted once, rewards after the decision was learned are counted as late;
* when the window ends, the aggregated reward (or the placement's default) is fixed once and sent
  as a learning example to the ``learning`` topic, keyed by placement, so that exactly one learner
  owns each placement's model;
* a decision is *settled* (never sent again; counted as learned) only once Kafka acknowledged its example
  (``confirm``). A worker that dies in between leaves it final but unsettled: after its lease
  (``engine.learning_store.SETTLE_LEASE_S``) the expiry sends it again, with the same decision id and
  reward, and the learner learns each decision id once (``streams.learner``).
* one decision or reward the join cannot take (a value it refuses, a bug) is dead-lettered; the others go on.

Faust-free: the worker wires it to topics, tests and benchmarks call it directly.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine.config import EngineConfig, RewardSettings
from engine.decisions import Reward, holdout_arm, reward_of, reward_value
from engine.erasure import DECISION_INDEX_GRACE_S
from engine.layout import anonymous_subject, customer_subject
from engine.learning_store import Finalised, JoinOutcome, LearningStore
from schemas.decision import validate_decision
from schemas.events import Event, InvalidEvent
from streams.pipeline import DeadLetterSink, Record

log = logging.getLogger(__name__)

#: Sends one learning example: (placement key, example JSON); may return a future that resolves once Kafka
#: acknowledged it (None: taken as acknowledged at once).
ExampleSink = Callable[[bytes, bytes], Awaitable["asyncio.Future[None] | None"]]


@dataclass(slots=True)
class JoinStats:
    decisions: int = 0
    rewards: int = 0
    duplicates: int = 0
    late: int = 0
    unknown_placement: int = 0
    learned: int = 0
    defaulted: int = 0
    #: examples sent again (a lease ran out before Kafka acknowledged them)
    resent: int = 0
    dead_letters: int = 0


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


def _subject(record: dict[str, Any]) -> str:
    """The person a decision record was made for (``engine.layout`` subject)."""
    cid = record.get("customer_id")
    return customer_subject(cid) if cid else anonymous_subject(str(record.get("anonymous_id") or ""))


class RewardJoiner:
    def __init__(self, store: LearningStore, config: EngineConfig, emit: ExampleSink,
                 dead_letters: DeadLetterSink) -> None:
        self.store, self.config, self.emit, self.dead_letters = store, config, emit, dead_letters
        self.stats = JoinStats()
        self._default_placement = next(iter(config.placements.values()), None)
        #: examples sent, waiting for Kafka's acknowledgement before their decisions are settled
        self._unconfirmed: list[tuple[asyncio.Future[None] | None, Finalised]] = []
        #: their decision ids: a lease that runs out while Kafka is away (the outbox still holds the example,
        #: it never gives one up for its age) must not send a second copy from this process
        self._unconfirmed_ids: set[str] = set()

    async def _settle(self, finalised: Sequence[Finalised]) -> None:
        for f in finalised:
            if f.decision_id in self._unconfirmed_ids:
                continue
            self._unconfirmed_ids.add(f.decision_id)
            example = learning_example(f)
            self._unconfirmed.append((await self.emit(example["placement"].encode(), orjson.dumps(example)), f))
        await self.confirm()

    async def confirm(self) -> int:
        """Settle the decisions whose examples Kafka acknowledged (one pipeline), and count them as learned
        once; an example whose send failed is left to its lease. Returns how many were settled now."""
        done = [(fut, f) for fut, f in self._unconfirmed if fut is None or fut.done()]
        if not done:
            return 0
        self._unconfirmed = [(fut, f) for fut, f in self._unconfirmed if not (fut is None or fut.done())]
        self._unconfirmed_ids.difference_update(f.decision_id for _, f in done)
        acked = [f for fut, f in done if fut is None or (not fut.cancelled() and fut.exception() is None)]
        try:
            newly = await self.store.settle([f.decision_id for f in acked])
        except BaseException:
            self._unconfirmed = done + self._unconfirmed  # a retry settles them (the script is idempotent)
            self._unconfirmed_ids.update(f.decision_id for _, f in done)
            raise
        increments: list[tuple[str, str, str, float]] = []
        for f, new in zip(acked, newly, strict=True):
            if not new:
                self.stats.resent += 1
                continue
            placement, arm = f.record["placement"], f.record["holdout_arm"]
            increments.append((placement, arm, "learned", 1))
            increments.append((placement, arm, "reward_sum", f.reward))
            self.stats.learned += 1
            self.stats.defaulted += f.defaulted
        await self.store.count(increments)
        return len(increments) // 2

    async def _dead_letter(self, rec: Record, reason: str, stage: str) -> None:
        self.stats.dead_letters += 1
        log.warning("dead-lettering %s:%s@%s (%s): %s", rec.topic, rec.partition, rec.offset, stage, reason)
        await self.dead_letters(rec.key, rec.value, [
            ("dlq.reason", reason[:1000].encode()), ("dlq.stage", stage.encode()),
            ("dlq.source", f"{rec.topic}/{rec.partition}/{rec.offset}".encode())])

    async def on_decisions(self, records: Sequence[Record], now: float) -> None:
        await self.apply_decisions(await self.prepare_decisions(records), now)

    async def prepare_decisions(self, records: Sequence[Record]
                                ) -> list[tuple[dict[str, Any], RewardSettings, Record]]:
        """Decode and validate decision records (invalid ones are dead-lettered); no Redis."""
        logged: list[tuple[dict[str, Any], RewardSettings, Record]] = []
        placements = self.config.placements
        for rec in records:
            try:
                record = orjson.loads(rec.value)
                validate_decision(record)
                placement = placements.get(record["placement"])
                if placement is not None:
                    self.store._decision_call(record, placement.learning.reward, 0.0)  # what apply will send
            except (orjson.JSONDecodeError, InvalidEvent) as exc:
                reason = exc.reason if isinstance(exc, InvalidEvent) else f"not JSON: {exc}"
                await self._dead_letter(rec, reason, "validate")
                continue
            except Exception as exc:  # a record the join cannot take must not stop the decisions
                await self._dead_letter(rec, f"internal error: {exc!r}", "reward_join")
                continue
            if placement is None:
                self.stats.unknown_placement += 1
                continue
            logged.append((record, placement.learning.reward, rec))
        return logged

    async def apply_decisions(self, logged: Sequence[tuple[dict[str, Any], RewardSettings, Record]],
                              now: float) -> None:
        """Open the reward windows of a batch of decisions: one pipeline of reward-join calls, counters in one more."""
        if not logged:
            return
        # an erased person's decisions (a replay of the decisions topic) do not reopen their windows
        people = [(_subject(r), r["timestamp"] / 1000.0) for r, _, _ in logged]
        erased = await self.store.erased_subjects(people)
        if erased:
            logged = [x for x, (s, _) in zip(logged, people, strict=True) if s not in erased]
            if not logged:
                return
        settled, increments = [], []
        # "nothing now" (no action shown): counted per arm, no reward window (nothing can be clicked or credited)
        empty = [r for r, _, _ in logged if not r["actions"]]
        if empty:
            self.stats.decisions += len(empty)
            increments += [(r["placement"], r["holdout_arm"], "nothing_now", 1) for r in empty]
            logged = [x for x in logged if x[0]["actions"]]
        outcomes = await self.store.decisions_logged([(r, s) for r, s, _ in logged], now)
        await self.store.index_decisions([
            (_subject(r), r["decision_id"], r["timestamp"] / 1000.0, int(s.window_seconds) + DECISION_INDEX_GRACE_S)
            for (r, s, _), out in zip(logged, outcomes, strict=True) if out.status != "error"])
        for (record, _, rec), out in zip(logged, outcomes, strict=True):
            if out.status == "error":
                await self._dead_letter(rec, str(out.error), "reward_join")
                continue
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
        sources: list[Record] = []
        placements = self.config.placements
        shown: list[tuple[str, str, str, float]] = []
        impressions: list[tuple[str, RewardSettings]] = []
        for rec, ev in events:
            props = ev.properties
            if "decision_id" not in props:  # most events carry no reward: skip them cheaply
                continue
            if ev.type == "impression":  # a decision actually shown: the CTR's denominator (serving/experiments)
                pid, did = props.get("placement"), props.get("decision_id")
                place = placements.get(pid) if isinstance(pid, str) else None
                if place is not None and ev.visitor_id and isinstance(did, str) and 0 < len(did) <= 256:
                    shown.append((place.id, holdout_arm(ev.visitor_id, place.id, place.learning.holdout_share),
                                  "shown", 1))
                    impressions.append((did, place.learning.reward))
                continue
            try:
                reward = reward_of(ev.type, props)
                if reward is None:
                    continue
                # the placement is known from the decision record; until it arrives use the first
                # placement's settings only for the value, which depends on the kind alone by default
                record_placement = props.get("placement")
                placement = placements.get(record_placement) if isinstance(record_placement, str) else None
                settings = (placement or self._default_placement).learning.reward  # type: ignore[union-attr]
                value = float(reward_value(reward, settings))
                if len(reward.decision_id) > 256 or not isinstance(reward.kind, str) or not math.isfinite(value):
                    raise ValueError(f"decision_id {reward.decision_id[:300]!r}, kind {reward.kind!r}, "
                                     f"value {value!r}: not a reward the join can take")
            except Exception as exc:
                await self._dead_letter(rec, f"{type(exc).__name__}: {exc}", "reward_join")
                continue
            rewards.append((reward, ev.event_id, value, settings))
            sources.append(rec)
        if shown:  # once per decision: the first impression of each
            first = await self.store.first_impressions(impressions)
            await self.store.count([inc for inc, new in zip(shown, first, strict=True) if new])
        if not rewards:
            return
        settled, increments = [], []
        for rec, out in zip(sources, await self.store.rewards_received(rewards), strict=True):
            if out.status == "error":
                await self._dead_letter(rec, str(out.error), "reward_join")
                continue
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
        """Settle what Kafka acknowledged since the last call, then fix and send the decisions now due."""
        await self.confirm()
        defaults = {p.id: p.learning.reward.default for p in self.config.placements.values()}
        finalised = await self.store.expire_due(now, defaults)
        await self._settle(finalised)
        return len(finalised)
