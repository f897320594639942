"""Pulse event contracts.

The JSON Schema files in ``schemas/json/`` are the source of truth for producers in any language
(one envelope, one schema per event type, one for the decision record); ``schemas/examples/``
holds a valid example of each. This package compiles them once at import (fastjsonschema) and
exposes:

* :func:`parse_event` -- bytes/str/dict (Pulse envelope or Segment payload) -> :class:`Event`,
  or :class:`InvalidEvent` with a precise ``reason`` (for the dead-letter topic);
* :func:`event_to_dict` / :func:`dumps_event` -- the way back (timestamp in epoch milliseconds);
* :func:`from_segment` -- the Segment mapping on its own;
* :func:`validate_decision` -- checks a decision record before it is published;
* :func:`validate_learning_message` -- checks a message of the ``learning`` topic (:mod:`schemas.learning`).

>>> import schemas
>>> event = schemas.parse_event(b'{"event_id": "e-1", "type": "page_view",'
...     b' "timestamp": "2024-05-01T12:00:00+02:00", "anonymous_id": "a-1",'
...     b' "context": {"channel": "web"}, "properties": {"item_id": "sku-1"}}')
>>> event.visitor_id, event.timestamp, event.properties
('a-1', 1714557600.0, {'item_id': 'sku-1'})
>>> schemas.parse_event(schemas.dumps_event(event)) == event
True
>>> "feedback" in schemas.EVENT_TYPES
True
"""

from schemas._validation import SCHEMA_DIR, InvalidEvent, load_schema
from schemas.decision import DECISION_SCHEMA, validate_decision
from schemas.events import EVENT_TYPES, Event, dumps_event, event_to_dict, parse_event
from schemas.learning import LEARNING_SCHEMA, validate_learning_message
from schemas.segment import SEGMENT_CALLS, TRACK_EVENTS, from_segment, is_segment_payload

__all__ = [
    "DECISION_SCHEMA",
    "EVENT_TYPES",
    "LEARNING_SCHEMA",
    "SCHEMA_DIR",
    "SEGMENT_CALLS",
    "TRACK_EVENTS",
    "Event",
    "InvalidEvent",
    "dumps_event",
    "event_to_dict",
    "from_segment",
    "is_segment_payload",
    "load_schema",
    "parse_event",
    "validate_decision",
    "validate_learning_message",
]
