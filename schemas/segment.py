"""Map Segment-spec payloads (every call: ``track``, ``page``, ``screen``, ``identify``, ``alias``, ``group``)
onto the Pulse envelope. RudderStack sends the same payloads.

Producers already instrumented with Segment or RudderStack (analytics.js, the server and mobile libraries, or
a webhook destination) send their payloads unchanged, to ``POST /v1/events`` or to the Segment-compatible
routes (``serving/segment_api.py``); :func:`schemas.parse_event` detects them (see :func:`is_segment_payload`)
and calls :func:`from_segment`. The result is then validated against the Pulse schemas like any other event.

Mapping:

* ``messageId`` -> ``event_id``; ``anonymousId`` -> ``anonymous_id``; ``userId`` -> ``customer_id``;
  ``timestamp`` (else ``originalTimestamp``, ``sentAt``, ``receivedAt``) -> ``timestamp``, corrected for the
  client's clock when the payload carries both ``sentAt`` (the client's clock) and ``receivedAt`` (the
  receiver's): ``timestamp + (receivedAt - sentAt)``, the correction at most :data:`MAX_CLOCK_CORRECTION_S`
  either way (as Segment computes it; a sender cannot move its events further than that).
* ``context.page.url``/``referrer`` -> ``context.url``/``referrer``; ``context.userAgent`` ->
  ``user_agent``; ``context.locale``, ``context.ip``, ``context.campaign`` as is; ``channel``
  browser -> web, mobile -> app, server -> server.
* ``page`` -> ``page_view``; ``screen`` -> ``page_view`` (``name`` -> ``title``, channel app by default);
  ``identify`` -> ``identify`` (``traits`` -> ``properties.traits``); ``alias`` -> ``identify`` linking
  ``previousId`` (as the anonymous id) to ``userId``; ``group`` -> ``track`` named ``group`` (``groupId`` ->
  ``properties.group_id``, ``traits``).
* ``track`` by e-commerce spec name (matched ignoring case, ``_`` for a space): Product Clicked -> click,
  Product Added -> add_to_cart, Product Removed -> remove_from_cart, Product Viewed -> page_view, Order
  Completed -> purchase (``total``, else ``revenue`` -> ``value``; ``products`` -> ``items``), Products
  Searched -> search, Promotion Viewed -> impression and Promotion Clicked -> click (``promotion_id`` ->
  ``action_id``, a string ``position`` -> ``placement``, ``decision_id`` kept), Product List Viewed -> page_view
  (``category``, ``list_id``, the first :data:`MAX_LIST_ITEMS` product ids as ``item_ids``), Cart Viewed ->
  page_view (``page_type`` cart), Checkout Started -> track named ``Checkout Started`` (``value`` from
  ``total``/``revenue``/``value``, ``products`` -> ``items``). ``product_id`` (else ``sku``, ``id``) ->
  ``item_id``. A track event named after a Pulse type (``"consent"``, ``"feedback"``, ...) maps to that type
  with its properties unchanged. Any other name is kept as a generic ``track`` event (``properties.event``
  = the name): counted on the profile, never refused for its name.

>>> from_segment({"type": "track", "event": "Product Added", "messageId": "m-1",
...               "anonymousId": "a-1", "timestamp": "2024-05-01T12:00:00Z",
...               "properties": {"product_id": "sku-1", "price": 9.5}})
... # doctest: +NORMALIZE_WHITESPACE
{'event_id': 'm-1', 'timestamp': '2024-05-01T12:00:00Z', 'anonymous_id': 'a-1', 'context': {},
 'type': 'add_to_cart', 'properties': {'price': 9.5, 'item_id': 'sku-1'}}
>>> from_segment({"type": "track", "event": "Video Played", "messageId": "m-2", "userId": "c-1",
...               "timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:05Z",
...               "receivedAt": "2024-05-01T12:00:02Z", "properties": {"video_id": "v-1"}})
... # doctest: +NORMALIZE_WHITESPACE
{'event_id': 'm-2', 'timestamp': 1714564797000, 'customer_id': 'c-1', 'context': {}, 'type': 'track',
 'properties': {'video_id': 'v-1', 'event': 'Video Played'}}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas._validation import ENVELOPE_SCHEMA, InvalidEvent, json_type, load_schema

__all__ = ["MAX_CLOCK_CORRECTION_S", "MAX_LIST_ITEMS", "SEGMENT_CALLS", "TRACK_EVENTS", "corrected_timestamp",
           "from_segment", "is_segment_payload", "spec_name"]

#: Segment call types that are mapped.
SEGMENT_CALLS: frozenset[str] = frozenset({"track", "page", "screen", "identify", "alias", "group"})

#: Segment e-commerce spec event name -> Pulse event type.
TRACK_EVENTS: dict[str, str] = {
    "Product Clicked": "click",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Product Viewed": "page_view",
    "Order Completed": "purchase",
    "Products Searched": "search",
    "Promotion Viewed": "impression",
    "Promotion Clicked": "click",
    "Product List Viewed": "page_view",
    "Cart Viewed": "page_view",
    "Checkout Started": "track",
}
#: The largest clock correction (seconds, either way) ``sentAt``/``receivedAt`` may apply: a day covers any
#: real device clock; a larger gap is more likely a bad ``sentAt`` than a clock, and is cut to this.
MAX_CLOCK_CORRECTION_S = 86_400.0
#: Product ids of a Product List Viewed kept (``item_ids``), within the schemas' bound on a list.
MAX_LIST_ITEMS = 64

_SPEC_NAMES = {name.lower(): name for name in TRACK_EVENTS}
_PULSE_TYPES: frozenset[str] = frozenset(load_schema(ENVELOPE_SCHEMA)["properties"]["type"]["enum"])
_CHANNELS = {"browser": "web", "mobile": "app", "server": "server"}
_PRODUCT_ID_KEYS = ("product_id", "sku", "id")
_TIMESTAMP_KEYS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
_VALUE_KEYS = ("total", "revenue", "value")


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


def spec_name(name: str) -> str | None:
    """The e-commerce spec's name for a track event name, matched ignoring case and ``_`` for a space.

    >>> spec_name("order_completed"), spec_name("Promotion Viewed"), spec_name("Video Played")
    ('Order Completed', 'Promotion Viewed', None)
    """
    return _SPEC_NAMES.get(" ".join(name.replace("_", " ").split()).lower())


def _epoch_s(value: Any) -> float | None:
    """A Segment time (RFC 3339, or epoch milliseconds) in epoch seconds; ``None`` if it is neither."""
    if type(value) is str:
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            return None
        return moment.timestamp() if moment.tzinfo is not None else None
    if type(value) in (int, float) and value == value:
        return float(value) / 1000.0
    return None


def corrected_timestamp(payload: dict[str, Any]) -> Any:
    """The event's time, corrected for the client's clock when ``sentAt`` and ``receivedAt`` are both given
    (epoch milliseconds then); else the first time the payload carries, as given; ``None`` if none.

    >>> corrected_timestamp({"timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:10Z",
    ...                      "receivedAt": "2024-05-01T11:00:10Z"})  # the client's clock is an hour fast
    1714561200000
    >>> corrected_timestamp({"timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:10Z",
    ...                      "receivedAt": "2026-05-01T12:00:10Z"}) - 1714564800000  # cut to a day
    86400000
    >>> corrected_timestamp({"timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:10Z"})
    '2024-05-01T12:00:00Z'
    """
    raw = next((payload[k] for k in _TIMESTAMP_KEYS if payload.get(k) is not None), None)
    sent, received = _epoch_s(payload.get("sentAt")), _epoch_s(payload.get("receivedAt"))
    ts = _epoch_s(raw)
    if raw is None or ts is None or sent is None or received is None:
        return raw
    skew = max(-MAX_CLOCK_CORRECTION_S, min(MAX_CLOCK_CORRECTION_S, received - sent))
    return round((ts + skew) * 1000.0)


def from_segment(payload: dict[str, Any]) -> dict[str, Any]:
    """Map one Segment payload onto a (not yet validated) Pulse envelope dict.

    Raises :class:`InvalidEvent` for unsupported calls, a missing or non-string track event name, a missing
    ``messageId``/timestamp; everything else is left to schema validation. ``payload`` is not modified.

    >>> from_segment({"type": "track", "event": 7, "messageId": "m-2",
    ...               "userId": "c-1", "timestamp": "2024-05-01T12:00:00Z"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    schemas.InvalidEvent: event: the name of a Segment track call must be a non-empty string, got integer
    """
    message_id = payload.get("messageId")
    event_id = message_id if type(message_id) is str else None
    call = payload.get("type")
    if type(call) is not str or call not in SEGMENT_CALLS:
        raise InvalidEvent(f"type: unsupported Segment call {call!r} (supported: {', '.join(sorted(SEGMENT_CALLS))})",
                           event_id=event_id)
    if message_id is None:
        raise InvalidEvent("messageId: is required (Segment payload)")
    timestamp = corrected_timestamp(payload)
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

    if call == "page" or call == "screen":
        if call == "screen" and "channel" not in context:
            context["channel"] = "app"
        out["type"] = "page_view"
        out["properties"] = _page_properties(payload, seg_props, context)
    elif call == "identify":
        out["type"] = "identify"
        traits = payload.get("traits")
        if traits is None:
            traits = seg_context.get("traits")
        out["properties"] = {} if traits is None else {"traits": traits}
    elif call == "alias":
        if payload.get("previousId") is None:
            raise InvalidEvent("previousId: is required for a Segment alias call", event_id=event_id)
        out["type"] = "identify"
        out["anonymous_id"] = _as_id(payload["previousId"])
        out["properties"] = {}
    elif call == "group":
        if payload.get("groupId") is None:
            raise InvalidEvent("groupId: is required for a Segment group call", event_id=event_id)
        out["type"] = "track"
        out["properties"] = {"event": "group", "group_id": _as_id(payload["groupId"])}
        if payload.get("traits") is not None:
            out["properties"]["traits"] = payload["traits"]
    else:
        _track(payload, seg_props, out, event_id)
    return out


def _track(payload: dict[str, Any], seg_props: dict[str, Any], out: dict[str, Any], event_id: str | None) -> None:
    name = payload.get("event")
    if name is None:
        raise InvalidEvent("event: is required for a Segment track call", event_id=event_id)
    if type(name) is not str or not name.strip():
        raise InvalidEvent(f"event: the name of a Segment track call must be a non-empty string, got "
                           f"{json_type(name) if type(name) is not str else 'an empty string'}", event_id=event_id)
    spec = spec_name(name)
    etype = TRACK_EVENTS[spec] if spec is not None else None
    if etype is None:
        if name in _PULSE_TYPES and name != "track":
            out["type"] = name
            out["properties"] = dict(seg_props)
        else:  # a name of the site's own: kept, counted, readable by features
            out["type"] = "track"
            out["properties"] = {**seg_props, "event": name}
        return
    out["type"] = etype
    if spec == "Order Completed":
        out["properties"] = _order_properties(seg_props, event_id)
    elif spec == "Products Searched":
        out["properties"] = dict(seg_props)
    elif spec == "Promotion Viewed" or spec == "Promotion Clicked":
        out["properties"] = _promotion(seg_props)
    elif spec == "Product List Viewed":
        out["properties"] = _page_properties(payload, _product_list(seg_props), out["context"])
    elif spec == "Cart Viewed":
        props = {k: v for k, v in seg_props.items() if k != "products"}
        out["properties"] = _page_properties(payload, {**props, "page_type": "cart"}, out["context"])
    elif spec == "Checkout Started":
        out["properties"] = {**_checkout(seg_props), "event": spec}
    elif etype == "page_view":
        out["properties"] = _page_properties(payload, _item(seg_props), out["context"])
    else:
        out["properties"] = _item(seg_props)


def _promotion(props: dict[str, Any]) -> dict[str, Any]:
    """A promotion (an action the site showed): ``promotion_id`` (else ``id``) is the action; the spec's
    ``position`` is a slot name (``home_banner_top``), which is the placement; a number is a rank.

    >>> _promotion({"promotion_id": "promo-1", "creative": "banner", "position": "home_top", "decision_id": "d"})
    {'creative': 'banner', 'decision_id': 'd', 'action_id': 'promo-1', 'placement': 'home_top'}
    """
    key = next((k for k in ("promotion_id", "id") if props.get(k) is not None), None)
    out = {k: v for k, v in props.items() if k != key and k != "position"}
    if key is not None and "action_id" not in out:
        out["action_id"] = _as_id(props[key])
    position = props.get("position")
    if type(position) is str and "placement" not in out:
        out["placement"] = position
    elif position is not None:
        out["position"] = position
    return out


def _product_list(props: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in props.items() if k != "products"}
    products = props.get("products")
    if type(products) is list:
        ids = [_item(p).get("item_id") for p in products if type(p) is dict]
        out["item_ids"] = [i for i in ids if i is not None][:MAX_LIST_ITEMS]
    elif products is not None:
        out["products"] = products  # not a list: the schema says why
    return out


def _checkout(props: dict[str, Any]) -> dict[str, Any]:
    value_key = next((k for k in _VALUE_KEYS if props.get(k) is not None), None)
    out = {k: v for k, v in props.items() if k not in ("products", value_key)}
    if value_key is not None:
        out["value"] = props[value_key]
    return _order_common(out, props)


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
    return _order_common(out, props)


def _order_common(out: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    if "order_id" in out:
        out["order_id"] = _as_id(out["order_id"])
    if type(out.get("currency")) is str:
        out["currency"] = out["currency"].upper()
    products = props.get("products")
    if products is not None:
        out["items"] = [_item(p) if type(p) is dict else p for p in products] if type(products) is list else products
    return out
