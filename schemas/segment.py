"""Map Segment-spec payloads (``track``, ``page``, ``identify``) onto the Pulse envelope.

Producers already instrumented with Segment (analytics.js, server libraries, or a Segment
webhook destination) can send their payloads unchanged; :func:`schemas.parse_event` detects them
(see :func:`is_segment_payload`) and calls :func:`from_segment`. The result is then validated
against the Pulse schemas like any other event.

Mapping:

* ``messageId`` -> ``event_id``; ``anonymousId`` -> ``anonymous_id``; ``userId`` -> ``customer_id``;
  ``timestamp`` (else ``originalTimestamp``, ``sentAt``, ``receivedAt``) -> ``timestamp``.
* ``context.page.url``/``referrer`` -> ``context.url``/``referrer``; ``context.userAgent`` ->
  ``user_agent``; ``context.locale``, ``context.ip``, ``context.campaign`` as is; ``channel``
  browser -> web, mobile -> app, server -> server.
* ``page`` -> ``page_view``; ``identify`` -> ``identify`` (``traits`` -> ``properties.traits``).
* ``track`` by e-commerce spec name: Product Clicked -> click, Product Added -> add_to_cart,
  Product Removed -> remove_from_cart, Product Viewed -> page_view, Order Completed -> purchase
  (``total``, else ``revenue`` -> ``value``; ``products`` -> ``items``), Products Searched ->
  search. ``product_id`` (else ``sku``, ``id``) -> ``item_id``. A track event named after a Pulse
  type (``"consent"``, ``"feedback"``, ...) maps to that type with its properties unchanged.
  Any other name is rejected with :class:`InvalidEvent` naming it.

>>> from_segment({"type": "track", "event": "Product Added", "messageId": "m-1",
...               "anonymousId": "a-1", "timestamp": "2024-05-01T12:00:00Z",
...               "properties": {"product_id": "sku-1", "price": 9.5}})
... # doctest: +NORMALIZE_WHITESPACE
{'event_id': 'm-1', 'timestamp': '2024-05-01T12:00:00Z', 'anonymous_id': 'a-1', 'context': {},
 'type': 'add_to_cart', 'properties': {'price': 9.5, 'item_id': 'sku-1'}}
"""

from __future__ import annotations

from typing import Any

from schemas._validation import ENVELOPE_SCHEMA, InvalidEvent, json_type, load_schema

__all__ = ["SEGMENT_CALLS", "TRACK_EVENTS", "from_segment", "is_segment_payload"]

#: Segment call types that are mapped.
SEGMENT_CALLS: frozenset[str] = frozenset({"track", "page", "identify"})

#: Segment e-commerce spec event name -> Pulse event type.
TRACK_EVENTS: dict[str, str] = {
    "Product Clicked": "click",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Product Viewed": "page_view",
    "Order Completed": "purchase",
    "Products Searched": "search",
}

_PULSE_TYPES: frozenset[str] = frozenset(load_schema(ENVELOPE_SCHEMA)["properties"]["type"]["enum"])
_CHANNELS = {"browser": "web", "mobile": "app", "server": "server"}
_PRODUCT_ID_KEYS = ("product_id", "sku", "id")
_TIMESTAMP_KEYS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")


def is_segment_payload(payload: dict[str, Any]) -> bool:
    """True if ``payload`` looks like a Segment call rather than a Pulse envelope.

    >>> is_segment_payload({"type": "page", "anonymousId": "a-1"})
    True
    >>> is_segment_payload({"type": "page_view", "anonymous_id": "a-1"})
    False
    """
    if "messageId" in payload:
        return True
    call = payload.get("type")
    return type(call) is str and call in SEGMENT_CALLS and ("anonymousId" in payload or "userId" in payload)


def from_segment(payload: dict[str, Any]) -> dict[str, Any]:
    """Map one Segment payload onto a (not yet validated) Pulse envelope dict.

    Raises :class:`InvalidEvent` for unsupported calls or track event names, and for missing
    ``messageId``/timestamp; everything else is left to schema validation. ``payload`` is not
    modified.

    >>> from_segment({"type": "track", "event": "Cart Viewed", "messageId": "m-2",
    ...               "userId": "c-1", "timestamp": "2024-05-01T12:00:00Z"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    schemas.InvalidEvent: event: unsupported Segment track event 'Cart Viewed' (supported: Order Completed, ...)
    """
    message_id = payload.get("messageId")
    event_id = message_id if type(message_id) is str else None
    call = payload.get("type")
    if type(call) is not str or call not in SEGMENT_CALLS:
        raise InvalidEvent(
            f"type: unsupported Segment call {call!r} (supported: identify, page, track)", event_id=event_id
        )
    if message_id is None:
        raise InvalidEvent("messageId: is required (Segment payload)")
    timestamp = next((payload[k] for k in _TIMESTAMP_KEYS if payload.get(k) is not None), None)
    if timestamp is None:
        raise InvalidEvent(
            "timestamp: is required (Segment payload: timestamp, originalTimestamp, sentAt or receivedAt)",
            event_id=event_id,
        )
    seg_context = _object(payload, "context", event_id)
    seg_props = _object(payload, "properties", event_id)

    out: dict[str, Any] = {"event_id": message_id, "timestamp": timestamp}
    if payload.get("anonymousId") is not None:
        out["anonymous_id"] = _as_id(payload["anonymousId"])
    if payload.get("userId") is not None:
        out["customer_id"] = _as_id(payload["userId"])
    context = _context(payload, seg_context)
    out["context"] = context

    if call == "page":
        out["type"] = "page_view"
        out["properties"] = _page_properties(payload, seg_props, context)
    elif call == "identify":
        out["type"] = "identify"
        traits = payload.get("traits")
        if traits is None:
            traits = seg_context.get("traits")
        out["properties"] = {} if traits is None else {"traits": traits}
    else:
        name = payload.get("event")
        if name is None:
            raise InvalidEvent("event: is required for a Segment track call", event_id=event_id)
        etype = TRACK_EVENTS.get(name) if type(name) is str else None
        if etype is None:
            if type(name) is str and name in _PULSE_TYPES:
                out["type"] = name
                out["properties"] = dict(seg_props)
                return out
            supported = ", ".join(sorted(TRACK_EVENTS))
            raise InvalidEvent(
                f"event: unsupported Segment track event {name!r} (supported: {supported}, or a Pulse event type)",
                event_id=event_id,
            )
        out["type"] = etype
        if etype == "purchase":
            out["properties"] = _order_properties(seg_props, event_id)
        elif etype == "search":
            out["properties"] = dict(seg_props)
        elif etype == "page_view":
            out["properties"] = _page_properties(payload, _item(seg_props), context)
        else:
            out["properties"] = _item(seg_props)
    return out


def _object(payload: dict[str, Any], key: str, event_id: str | None) -> dict[str, Any]:
    value = payload.get(key)
    if value is None:
        return {}
    if type(value) is not dict:
        raise InvalidEvent(f"{key}: must be object, got {json_type(value)}", event_id=event_id)
    return value


def _as_id(value: Any) -> Any:
    """Numeric ids are common in Segment payloads; the Pulse contract uses strings."""
    if type(value) is int:
        return str(value)
    return value


def _context(payload: dict[str, Any], seg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    page = seg.get("page")
    if type(page) is dict:
        if page.get("url"):
            out["url"] = page["url"]
        if page.get("referrer"):
            out["referrer"] = page["referrer"]
    for src, dst in (("userAgent", "user_agent"), ("locale", "locale"), ("ip", "ip"), ("campaign", "campaign")):
        if seg.get(src):
            out[dst] = seg[src]
    given: Any = payload.get("channel")
    channel = _CHANNELS.get(given) if type(given) is str else None
    if channel is None and type(seg.get("app")) is dict:
        channel = "app"
    if channel is not None:
        out["channel"] = channel
    return out


def _page_properties(payload: dict[str, Any], props: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    out = dict(props)
    if "url" not in out and "url" in context:
        out["url"] = context["url"]
    if "title" not in out and type(payload.get("name")) is str:
        out["title"] = payload["name"]
    if "category" not in out and payload.get("category") is not None:
        out["category"] = payload["category"]
    if "referrer" in out and "referrer" not in context and out["referrer"]:
        context["referrer"] = out["referrer"]
    return out


def _item(product: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in product.items() if k not in _PRODUCT_ID_KEYS}
    item_id = next((product[k] for k in _PRODUCT_ID_KEYS if product.get(k) is not None), None)
    if item_id is not None:
        out["item_id"] = _as_id(item_id)
    return out


def _order_properties(props: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    value_key = next((k for k in ("total", "revenue") if props.get(k) is not None), None)
    if value_key is None:
        raise InvalidEvent(
            "properties.total: is required for Segment 'Order Completed' (or properties.revenue)",
            event_id=event_id,
        )
    out = {k: v for k, v in props.items() if k not in ("products", value_key)}
    out["value"] = props[value_key]
    if "order_id" in out:
        out["order_id"] = _as_id(out["order_id"])
    if type(out.get("currency")) is str:
        out["currency"] = out["currency"].upper()
    products = props.get("products")
    if products is not None:
        out["items"] = [_item(p) if type(p) is dict else p for p in products] if type(products) is list else products
    return out
