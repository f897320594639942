"""Consent in the stream, besides the profile itself (which ``lua/apply_ops.lua`` wipes and guards):

* ``ConsentGate``: whether a visitor's interactions may feed the co-visitation learner (their personalisation
  consent as stored, or as set by a consent event earlier in the same batch; ``engine/consent.py``);
* ``ConsentWithdrawals``: a withdrawal of personalisation also sends the learner's ``forget`` for every id the
  person is known by and deletes their decisions waiting in the reward join (``engine/erasure.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from engine.config import EngineConfig
from engine.consent import PERSONALISATION, personalisation_allowed
from engine.erasure import ErasureStore
from engine.layout import aliases_key
from engine.learning_messages import forget_message
from engine.profile_store import ProfileStore
from engine.recommend.signal import COVISIT_KEY
from schemas.events import Event
from streams.pipeline import Record
from streams.rewards import ExampleSink


def _withdraws(ev: Event) -> bool:
    return ev.type == "consent" and ev.properties.get(PERSONALISATION) is False


class ConsentGate:
    """Which visitors of a batch may be personalised (and so fed to the co-visitation learner)."""

    def __init__(self, store: ProfileStore, config: EngineConfig) -> None:
        self.store, self.mode = store, config.privacy.consent_mode

    async def allowed(self, events: Sequence[Event]) -> list[bool]:
        flags = await self.store.personalisation_flags([(ev.customer_id, ev.anonymous_id) for ev in events])
        out: list[bool] = []
        latest: dict[str, bool] = {}  # a consent event earlier in the batch decides what follows it
        for ev, flag in zip(events, flags, strict=True):
            if ev.type == "consent" and PERSONALISATION in ev.properties:
                latest[ev.visitor_id] = bool(ev.properties[PERSONALISATION])
            stored = {} if flag is None else {PERSONALISATION: flag == "1"}
            out.append(latest.get(ev.visitor_id, personalisation_allowed(stored, self.mode)))
        return out


class ConsentWithdrawals:
    """The events hook: for each personalisation withdrawal, the learner's forget and the pending decisions."""

    def __init__(self, store: ProfileStore, erasures: ErasureStore, emit: ExampleSink, collaborative: bool) -> None:
        self.store, self.erasures, self.emit, self.collaborative = store, erasures, emit, collaborative

    async def on_events(self, events: Sequence[tuple[Record, Event]]) -> None:
        withdrawn = [ev for _, ev in events if _withdraws(ev)]
        if not withdrawn:
            return
        identity = await self.store.resolve(
            ev.anonymous_id for ev in withdrawn if not ev.customer_id and ev.anonymous_id)
        visitors: list[str] = []
        for ev in withdrawn:
            customer = ev.customer_id or identity.get(ev.anonymous_id or "")
            visitors.append(ev.visitor_id)
            if customer:
                visitors.append(customer)
                visitors += sorted(cast(set[str], await self.store.redis.smembers(aliases_key(customer))))
        visitors = list(dict.fromkeys(visitors))
        await self.erasures.drop_decisions(visitors)
        if self.collaborative:
            fut = await self.emit(COVISIT_KEY, forget_message(visitors))
            if fut is not None:
                await fut
