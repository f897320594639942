"""The event model: parse and validate raw events against the JSON Schema contract.

Validators are compiled once, at import, from ``schemas/json/<type>.v<N>.schema.json``; an event
is validated in a single pass by the schema of its ``(type, schema_version)``, which includes the
envelope. Segment-style payloads are recognised and mapped first (see :mod:`schemas.segment`).

>>> event = parse_event(
...     b'{"event_id": "e-1", "type": "add_to_cart", "timestamp": "2024-05-01T12:00:00Z",'
...     b' "anonymous_id": "a-1", "properties": {"item_id": "sku-1", "price": 9.5}}'
... )
>>> event.type, event.timestamp, event.visitor_id, event.properties["quantity"]
('add_to_cart', 1714564800.0, 'a-1', 1)
>>> dumps_event(event)[:70]
b'{"event_id":"e-1","type":"add_to_cart","schema_version":1,"timestamp":'
>>> parse_event({"event_id": "e-2", "type": "add_to_cart", "timestamp": 1714564800000,
...              "customer_id": "c-9", "properties": {}})
Traceback (most recent call last):
    ...
schemas.InvalidEvent: properties.item_id: is required for add_to_cart
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import fastjsonschema
import orjson
from fastjsonschema import JsonSchemaValueException

from schemas._validation import (
    ENVELOPE_SCHEMA,
    SCHEMA_DIR,
    InvalidEvent,
    Validator,
    _resolve_ref,
    compile_schema,
    inline_refs,
    json_type,
    load_schema,
    reason_from,
)
from schemas.segment import from_segment, is_segment_payload

__all__ = [
    "EVENT_TYPES",
    "Event",
    "InvalidEvent",
    "dumps_event",
    "event_to_dict",
    "parse_event",
]

_ENVELOPE = load_schema(ENVELOPE_SCHEMA)

#: Every event type, in the order of the envelope schema's ``type`` enum.
EVENT_TYPES: tuple[str, ...] = tuple(_ENVELOPE["properties"]["type"]["enum"])

_ENVELOPE_REQUIRED: tuple[str, ...] = tuple(_ENVELOPE["required"])
_TYPE_FILE_RE = re.compile(r"^(?P<type>[a-z_]+)\.v(?P<version>[0-9]+)\.schema\.json$")


#: The envelope's ``anyOf`` (an ``anonymous_id`` or a ``customer_id`` string), checked in Python instead.
_ID_ANY_OF = [{"required": ["anonymous_id"], "properties": {"anonymous_id": {"type": "string"}}},
              {"required": ["customer_id"], "properties": {"customer_id": {"type": "string"}}}]
_ID_ANY_OF_REASON = "anonymous_id or customer_id: at least one is required (a non-empty string)"


def _compile_type(name: str) -> tuple[Validator, bool]:
    """Compile one type schema; the envelope's id ``anyOf`` is taken out when it is exactly ``_ID_ANY_OF``.

    fastjsonschema runs an ``anyOf`` by raising and catching an exception per failed branch (a customer event
    fails the ``anonymous_id`` branch), which costs more than the rest of the validation. ``_build`` checks the same
    condition first, which is where the generated code checked it (the envelope comes first in ``allOf`` and
    ``anyOf`` is its first keyword after ``type``), so the same events fail, with the same reason.
    Returns the validator and whether ``_build`` must check the ids.
    """
    schema = inline_refs(name)
    parts = schema.get("allOf")
    if isinstance(parts, list) and parts and isinstance(parts[0], dict) and parts[0].get("anyOf") == _ID_ANY_OF:
        envelope = {k: v for k, v in parts[0].items() if k != "anyOf"}
        schema = {**schema, "allOf": [envelope, *parts[1:]]}
        return fastjsonschema.compile(schema, handlers={"https": _resolve_ref, "http": _resolve_ref},
                                      use_default=True, use_formats=False), True
    return compile_schema(name), False


def _compile_type_validators() -> dict[tuple[str, int], tuple[Validator, bool]]:
    validators: dict[tuple[str, int], tuple[Validator, bool]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.v*.schema.json")):
        match = _TYPE_FILE_RE.match(path.name)
        if match and match["type"] in EVENT_TYPES:
            validators[(match["type"], int(match["version"]))] = _compile_type(path.name)
    missing = [t for t in EVENT_TYPES if not any(key[0] == t for key in validators)]
    if missing:
        raise RuntimeError(f"no schema file for event type(s) {missing} in {SCHEMA_DIR}")
    return validators


_VALIDATORS = _compile_type_validators()
_VALIDATE_ENVELOPE = compile_schema(ENVELOPE_SCHEMA)


@dataclass(slots=True)
class Event:
    """A validated event.

    ``timestamp`` is in epoch seconds (float). ``context`` and ``properties`` are the JSON
    objects of the event, with schema defaults filled in (e.g. ``quantity`` = 1 on cart events).

    >>> Event("e-1", "search", 1714564800.0, anonymous_id="a-1", properties={"query": "shoes"}).visitor_id
    'a-1'
    """

    event_id: str
    type: str
    timestamp: float
    anonymous_id: str | None = None
    customer_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1

    @property
    def visitor_id(self) -> str:
        """The id events are keyed and profiled by: ``customer_id`` if known, else ``anonymous_id``."""
        return self.customer_id or self.anonymous_id  # type: ignore[return-value]  # validated: one is set


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    """Parse and validate one event; raise :class:`InvalidEvent` with a precise reason.

    ``raw`` is the JSON (bytes or str, decoded with orjson) or an already decoded dict (which is
    not modified). Pulse envelopes and Segment ``track``/``page``/``identify`` payloads are both
    accepted. ``timestamp`` may be an RFC3339 string with a timezone or epoch milliseconds.

    >>> parse_event('{"event_id": "e-1", "type": "search", "timestamp": 1714564800250,'
    ...             ' "customer_id": "c-1", "properties": {"query": "red shoes"}}').timestamp
    1714564800.25
    >>> parse_event({"event_id": "e-1", "type": "search", "timestamp": "yesterday",
    ...              "customer_id": "c-1", "properties": {"query": "red shoes"}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    schemas.InvalidEvent: timestamp: not RFC3339 (...) nor epoch milliseconds, got 'yesterday'
    """
    if isinstance(raw, dict):
        if is_segment_payload(raw):
            data = from_segment(raw)
        else:
            # Validation fills in defaults in place: never modify the caller's dicts.
            data = dict(raw)
            props = data.get("properties")
            if type(props) is dict:
                data["properties"] = dict(props)
    elif isinstance(raw, bytes | bytearray | memoryview | str):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"event: not valid JSON ({exc})") from None
        if type(data) is not dict:
            raise InvalidEvent(f"event: must be a JSON object, got {json_type(data)}")
        if is_segment_payload(data):
            data = from_segment(data)
    else:
        raise InvalidEvent(f"event: must be JSON bytes/str or a dict, got {type(raw).__name__}")
    return _build(data)


def _build(data: dict[str, Any]) -> Event:
    etype: Any = data.get("type")
    try:
        compiled = _VALIDATORS.get((etype, data.get("schema_version", 1)))
    except TypeError:  # unhashable type/schema_version: let the envelope report it
        compiled = None
    if compiled is None:
        _reject_unknown(data)
    validator, check_ids = compiled
    if check_ids and not (isinstance(data.get("anonymous_id"), str) or isinstance(data.get("customer_id"), str)):
        raise InvalidEvent(_ID_ANY_OF_REASON, event_id=_event_id(data))
    try:
        validator(data)
    except JsonSchemaValueException as exc:
        raise InvalidEvent(
            reason_from(exc, subject=etype, envelope_required=_ENVELOPE_REQUIRED),
            event_id=_event_id(data),
        ) from None
    ts = data["timestamp"]
    if type(ts) is str:
        timestamp = _parse_rfc3339(ts, data)
    elif ts == ts:
        timestamp = ts / 1000.0
    else:  # NaN (only possible for dict input; JSON has no NaN)
        raise InvalidEvent("timestamp: must be a number, got NaN", event_id=_event_id(data))
    return Event(
        data["event_id"],
        etype,
        timestamp,
        data.get("anonymous_id"),
        data.get("customer_id"),
        data.get("context") or {},
        data.get("properties") or {},
        data.get("schema_version", 1),
    )


def _reject_unknown(data: dict[str, Any]) -> NoReturn:
    """No schema for this (type, schema_version): explain why, via the envelope if possible."""
    try:
        _VALIDATE_ENVELOPE(dict(data))
    except JsonSchemaValueException as exc:
        reason = reason_from(exc, envelope_required=_ENVELOPE_REQUIRED)
        if data.get("type") in ("track", "page", "identify", "screen", "group", "alias"):
            reason += " (Segment payloads are recognised by messageId, or anonymousId/userId)"
        raise InvalidEvent(reason, event_id=_event_id(data)) from None
    etype, version = data["type"], data.get("schema_version", 1)
    supported = ", ".join(str(v) for t, v in sorted(_VALIDATORS) if t == etype)
    raise InvalidEvent(
        f"schema_version: unsupported version {version!r} for {etype} (supported: {supported})",
        event_id=_event_id(data),
    )


def _event_id(data: dict[str, Any]) -> str | None:
    event_id = data.get("event_id")
    return event_id if type(event_id) is str else None


def _parse_rfc3339(text: str, data: dict[str, Any]) -> float:
    # The schema pattern already guarantees the RFC3339 shape with a timezone; this catches
    # impossible dates ("2024-02-30") and converts.
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        try:  # RFC3339 allows lower-case "t" and "z"; fromisoformat does not
            return datetime.fromisoformat(text.upper()).timestamp()
        except ValueError as exc:
            raise InvalidEvent(
                f"timestamp: not a valid RFC3339 date-time ({exc}), got {text!r}",
                event_id=_event_id(data),
            ) from None


def _to_millis(timestamp: float) -> int | float:
    millis = timestamp * 1000.0
    whole = round(millis)
    return whole if abs(millis - whole) < 5e-4 else round(millis, 3)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The envelope of ``event`` as a JSON-ready dict (``timestamp`` in epoch milliseconds).

    ``parse_event(event_to_dict(e)) == e``. ``anonymous_id``/``customer_id`` are omitted when None.

    >>> event_to_dict(Event("e-1", "search", 1714564800.25, customer_id="c-1", properties={"query": "x"}))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'event_id': 'e-1', 'type': 'search', 'schema_version': 1, 'timestamp': 1714564800250,
     'customer_id': 'c-1', 'context': {}, 'properties': {'query': 'x'}}
    """
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "schema_version": event.schema_version,
        "timestamp": _to_millis(event.timestamp),
    }
    if event.anonymous_id is not None:
        out["anonymous_id"] = event.anonymous_id
    if event.customer_id is not None:
        out["customer_id"] = event.customer_id
    out["context"] = dict(event.context)
    out["properties"] = dict(event.properties)
    return out


def dumps_event(event: Event) -> bytes:
    """``event_to_dict(event)`` serialised with orjson; ``parse_event(dumps_event(e)) == e``.

    >>> dumps_event(Event("e-1", "search", 1714564800.0, "a-1", properties={"query": "x"}))
    b'{"event_id":"e-1","type":"search","schema_version":1,"timestamp":1714564800000,"anonymous_id":"a-1","context":{},"properties":{"query":"x"}}'
    """
    return orjson.dumps(event_to_dict(event))
