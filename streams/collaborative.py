"""Feeds item interactions to the co-visitation learner.

Interactions go to the ``learning`` topic under one key, so exactly one learner owns the co-visitation
model, as with a placement's model. Events reach the hook in per-visitor order (Kafka keys), which is
what co-visitation needs: pairs are formed with the visitor's previous items.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.config import EngineConfig
from engine.learning_messages import interactions_message
from engine.recommend.signal import COVISIT_KEY
from schemas.events import Event
from streams.consent import ConsentGate
from streams.pipeline import Record
from streams.rewards import ExampleSink


class CollaborativeFeed:
    """``gate``: which visitors consent to personalisation (``streams/consent.py``); None: everyone."""

    def __init__(self, config: EngineConfig, emit: ExampleSink, gate: ConsentGate | None = None) -> None:
        self.weights = config.collaborative.weights if config.collaborative.enabled else {}
        self.emit = emit
        self.gate = gate

    async def on_events(self, events: Sequence[tuple[Record, Event]]) -> None:
        """One message per batch (not per event): a Kafka send per event cost more than the features."""
        if not self.weights:
            return
        candidates: list[tuple[Event, str, float]] = []
        for _, ev in events:
            w = self.weights.get(ev.type)
            item = ev.properties.get("item_id")
            # only string ids (the schemas' item_id): anything else would be a model key no catalogue item has
            if (w and item and type(item) is str) or ev.type == "consent":
                candidates.append((ev, item, w))  # type: ignore[arg-type]  # consent rows only steer the gate
        if not candidates:
            return
        allowed = await self.gate.allowed([ev for ev, _, _ in candidates]) if self.gate else [True] * len(candidates)
        rows = [[ev.visitor_id, item, w, ev.timestamp] for (ev, item, w), ok in zip(candidates, allowed, strict=True)
                if ok and ev.type != "consent"]
        if rows:
            await self.emit(COVISIT_KEY, interactions_message(rows))
