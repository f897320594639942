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
from streams.pipeline import Record
from streams.rewards import ExampleSink


class CollaborativeFeed:
    def __init__(self, config: EngineConfig, emit: ExampleSink) -> None:
        self.weights = config.collaborative.weights if config.collaborative.enabled else {}
        self.emit = emit

    async def on_events(self, events: Sequence[tuple[Record, Event]]) -> None:
        """One message per batch (not per event): a Kafka send per event cost more than the features."""
        if not self.weights:
            return
        rows = []
        for _, ev in events:
            w = self.weights.get(ev.type)
            item = ev.properties.get("item_id")
            # only string ids (the schemas' item_id): anything else would be a model key no catalogue item has
            if w and item and type(item) is str:
                rows.append([ev.visitor_id, item, w, ev.timestamp])
        if rows:
            await self.emit(COVISIT_KEY, interactions_message(rows))
