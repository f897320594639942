"""The bounds on one event, in one place, enforced at both doors (the collector and the worker).

The JSON Schemas carry every bound a schema can say (string lengths, list lengths, member counts, nesting
depth, numeric ranges): :data:`SCHEMA_BOUNDS` names where each number sits in ``schemas/json/``, and
``tests/test_limits.py`` checks the files carry the same numbers as :class:`EventLimits`. The code enforces
what a schema cannot say - the size of the published bytes and the clock - with :func:`check_event`, which
the collector runs before publishing and the worker before applying: an event the collector would refuse is
dead-lettered when it reaches the topic another way.

>>> from schemas.events import parse_event
>>> ev = parse_event({"event_id": "e-1", "type": "search", "timestamp": 4102444800000,  # 2100-01-01
...                   "anonymous_id": "a-1", "properties": {"query": "x"}})
>>> check_event(ev, 120, now=1714564800.0)
Traceback (most recent call last):
    ...
schemas.InvalidEvent: timestamp: 2100-01-01T00:00:00Z is 2387880000 s after the receiver's clock (at most 300 s)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from schemas._validation import InvalidEvent
from schemas.events import Event

__all__ = ["DEFAULT_LIMITS", "SCHEMA_BOUNDS", "EventLimits", "check_event", "check_size"]


@dataclass(frozen=True, slots=True)
class EventLimits:
    """Every bound on an event. The first group is enforced in code (settings may change the clock ones), the
    second is carried by the JSON Schemas (see :data:`SCHEMA_BOUNDS`); docs/limits.md lists them all."""

    #: one event as published to Kafka (``dumps_event``), well under the broker's 1 MiB ``message.max.bytes``
    max_event_bytes: int = 256 * 1024
    #: events in one ``POST /v1/events``, counted before any of them is validated
    max_events_per_request: int = 500
    #: body of ``POST /v1/events`` (setting ``COLLECTOR_MAX_BODY_BYTES``), refused (413) while it is read
    max_body_bytes: int = 1 << 20
    #: how far after the receiver's clock a timestamp may be (setting ``EVENT_MAX_FUTURE_S``)
    max_future_s: float = 300.0
    #: the earliest timestamp (2000-01-01T00:00:00Z): earlier ones are zeros or epoch seconds taken for millis
    #: (a number's floor; a string's is its year, 2000, by the schema's pattern)
    min_timestamp_ms: int = 946_684_800_000

    # --- carried by the schemas ---
    #: ids (event, decision, action, order, session, visitor)
    max_id_chars: int = 128
    #: catalogue item ids and categories
    max_item_id_chars: int = 256
    #: free text (search query, page title, any string in custom properties or context)
    max_text_chars: int = 1024
    #: urls and referrers
    max_url_chars: int = 8192
    #: line items of a purchase (``items``)
    max_line_items: int = 1000
    #: members of ``properties``, ``context``, ``traits`` and of any object or list inside custom data
    max_members: int = 64
    #: containers deep, the event itself included: event > properties > custom object > custom list > scalar
    max_depth: int = 4
    #: unit ``price``, order ``value`` (and a reward's ``value``, within +-) and custom numbers (within +-)
    max_amount: float = 1e12
    #: a cart or line-item ``quantity``
    max_quantity: int = 1_000_000


DEFAULT_LIMITS = EventLimits()

#: Where each schema-carried bound sits: field -> [(schema file, JSON pointer, keyword, sign)], sign -1 for a
#: ``minimum`` that is the negated bound.
SCHEMA_BOUNDS: dict[str, list[tuple[str, str, str, int]]] = {
    "min_timestamp_ms": [("envelope.v1.schema.json", "/definitions/timestamp", "minimum", 1)],
    "max_id_chars": [("envelope.v1.schema.json", "/definitions/id", "maxLength", 1),
                     ("envelope.v1.schema.json", "/definitions/optional_visitor_id", "maxLength", 1)],
    "max_item_id_chars": [("envelope.v1.schema.json", "/definitions/item_id", "maxLength", 1),
                          ("envelope.v1.schema.json", "/definitions/category", "maxLength", 1)],
    "max_text_chars": [("envelope.v1.schema.json", "/definitions/text", "maxLength", 1),
                       ("envelope.v1.schema.json", "/definitions/scalar", "maxLength", 1),
                       ("search.v1.schema.json", "/properties/properties/properties/query", "maxLength", 1),
                       ("page_view.v1.schema.json", "/properties/properties/properties/title", "maxLength", 1)],
    "max_url_chars": [("envelope.v1.schema.json", "/definitions/url", "maxLength", 1)],
    "max_line_items": [("envelope.v1.schema.json", "/definitions/properties/properties/items", "maxItems", 1),
                       ("purchase.v1.schema.json", "/properties/properties/properties/items", "maxItems", 1)],
    "max_members": [("envelope.v1.schema.json", "/definitions/properties", "maxProperties", 1),
                    ("envelope.v1.schema.json", "/definitions/context", "maxProperties", 1),
                    ("envelope.v1.schema.json", "/definitions/custom", "maxProperties", 1),
                    ("envelope.v1.schema.json", "/definitions/custom", "maxItems", 1),
                    ("envelope.v1.schema.json", "/definitions/custom_leaf", "maxProperties", 1),
                    ("envelope.v1.schema.json", "/definitions/custom_leaf", "maxItems", 1),
                    ("envelope.v1.schema.json", "/definitions/line_item", "maxProperties", 1),
                    ("envelope.v1.schema.json", "/definitions/properties/properties/traits", "maxProperties", 1),
                    ("identify.v1.schema.json", "/properties/properties/properties/traits", "maxProperties", 1)],
    "max_amount": [("envelope.v1.schema.json", "/definitions/price", "maximum", 1),
                   ("envelope.v1.schema.json", "/definitions/amount", "maximum", 1),
                   ("envelope.v1.schema.json", "/definitions/amount", "minimum", -1),
                   ("envelope.v1.schema.json", "/definitions/scalar", "maximum", 1),
                   ("envelope.v1.schema.json", "/definitions/scalar", "minimum", -1),
                   ("purchase.v1.schema.json", "/properties/properties/properties/value", "maximum", 1)],
    "max_quantity": [("envelope.v1.schema.json", "/definitions/quantity", "maximum", 1),
                     ("add_to_cart.v1.schema.json", "/properties/properties/properties/quantity", "maximum", 1),
                     ("remove_from_cart.v1.schema.json", "/properties/properties/properties/quantity", "maximum",
                      1)],
}


def check_size(size: int, limits: EventLimits = DEFAULT_LIMITS) -> None:
    """Refuse an event whose published bytes exceed :attr:`EventLimits.max_event_bytes`.

    >>> check_size(300_000)
    Traceback (most recent call last):
        ...
    schemas.InvalidEvent: event: 300000 bytes once serialised, at most 262144
    """
    if size > limits.max_event_bytes:
        raise InvalidEvent(f"event: {size} bytes once serialised, at most {limits.max_event_bytes}")


def check_event(event: Event, size: int, now: float, limits: EventLimits = DEFAULT_LIMITS) -> None:
    """What the schemas cannot say, for a validated ``event`` of ``size`` published bytes, at ``now`` (epoch s).

    >>> ev = Event("e-1", "search", 946598399.0, "a-1", properties={"query": "x"})  # built by hand, not parsed
    >>> check_event(ev, 100, now=1714564800.0)
    Traceback (most recent call last):
        ...
    schemas.InvalidEvent: timestamp: 1999-12-30T23:59:59Z is before 2000-01-01T00:00:00Z
    """
    if size > limits.max_event_bytes:
        raise InvalidEvent(f"event: {size} bytes once serialised, at most {limits.max_event_bytes}",
                           event_id=event.event_id)
    ts = event.timestamp
    if ts > now + limits.max_future_s:
        raise InvalidEvent(f"timestamp: {_iso(ts)} is {ts - now:.0f} s after the receiver's clock "
                           f"(at most {limits.max_future_s:.0f} s)", event_id=event.event_id)
    # a number below the floor fails its schema; a string's year is 2000 or later by the schema's pattern, so
    # with its offset (under a day) it may be a few hours before the floor instant, which it is allowed
    if ts * 1000.0 < limits.min_timestamp_ms - 86_400_000:
        raise InvalidEvent(f"timestamp: {_iso(ts)} is before {_iso(limits.min_timestamp_ms / 1000.0)}",
                           event_id=event.event_id)


def _iso(ts: float) -> str:
    try:
        moment = datetime.fromtimestamp(ts, UTC)
        return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"
    except (OverflowError, ValueError, OSError):
        return f"{ts:.0f} s"
