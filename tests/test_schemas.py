"""Unit tests for the event contracts in ``schemas/`` (JSON Schema files, parsing, Segment, decisions)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import fastjsonschema
import orjson
import pytest

import schemas
from schemas import (
    EVENT_TYPES,
    Event,
    InvalidEvent,
    dumps_event,
    event_to_dict,
    from_segment,
    is_segment_payload,
    parse_event,
    validate_decision,
)

ROOT = Path(schemas.__file__).resolve().parent
JSON_DIR = ROOT / "json"
EXAMPLES_DIR = ROOT / "examples"
META_SCHEMA = ROOT / "meta" / "json-schema-draft-07.json"
BASE_URI = "https://schemas.pulse.example/"
SCHEMA_FILES = sorted(p.name for p in JSON_DIR.glob("*.json"))
T0_MS = 1714564800000  # 2024-05-01T12:00:00Z
T0 = T0_MS / 1000

#: the learning topic's messages (tests/test_learning_messages.py checks their examples and producers)
LEARNING_FILES = ("learning.v1.schema.json", "learning_example.v1.schema.json",
                  "learning_interactions.v1.schema.json", "learning_forget.v1.schema.json",
                  "learning_profiles.v1.schema.json")
#: the segments topic's messages (tests/test_segments.py checks the example and the producer)
SEGMENT_FILES = ("segment_change.v1.schema.json",)

EXPECTED_TYPES = (
    "page_view", "click", "add_to_cart", "remove_from_cart", "purchase",
    "search", "identify", "consent", "feedback", "impression", "track",
)  # fmt: skip


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def example(name: str) -> dict[str, Any]:
    return load(EXAMPLES_DIR / f"{name}.v1.example.json")


def reason_of(raw: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    return info.value.reason


def event(type_: str = "add_to_cart", **overrides: Any) -> dict[str, Any]:
    """A minimal valid event of ``type_`` (``overrides`` replace top-level fields; None deletes)."""
    props = {
        "page_view": {},
        "click": {},
        "add_to_cart": {"item_id": "sku-1"},
        "remove_from_cart": {"item_id": "sku-1"},
        "purchase": {"order_id": "o-1", "value": 10.0},
        "search": {"query": "shoes"},
        "identify": {},
        "consent": {"personalisation": True},
        "feedback": {"decision_id": "d-1", "action_id": "a-1", "kind": "click"},
        "impression": {"decision_id": "d-1", "action_id": "a-1", "placement": "home_hero"},
        "track": {"event": "Video Played"},
    }[type_]
    raw: dict[str, Any] = {
        "event_id": "e-1",
        "type": type_,
        "timestamp": T0_MS,
        "anonymous_id": "anon-1",
        "properties": props,
    }
    if type_ == "identify":
        raw["customer_id"] = "cust-1"
    for key, value in overrides.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def _local_handler(uri: str) -> Any:
    assert uri.startswith(BASE_URI), uri
    return load(JSON_DIR / uri[len(BASE_URI) :])


def compile_file(name: str) -> Any:
    """Compile a schema file as a producer would: as is, ``$ref`` resolved by ``$id``."""
    return fastjsonschema.compile(load(JSON_DIR / name), handlers={"https": _local_handler})


# --------------------------------------------------------------------------------------------
# The JSON Schema files
# --------------------------------------------------------------------------------------------

DRAFT07_KEYWORDS = set(load(META_SCHEMA)["properties"])


def test_expected_files_exist() -> None:
    expected = {"envelope.v1.schema.json", "decision.v1.schema.json", *LEARNING_FILES, *SEGMENT_FILES} | {
        f"{t}.v1.schema.json" for t in EXPECTED_TYPES}
    assert set(SCHEMA_FILES) == expected
    assert EVENT_TYPES == EXPECTED_TYPES
    for t in EXPECTED_TYPES:
        assert (EXAMPLES_DIR / f"{t}.v1.example.json").is_file(), t


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_file_is_valid_draft07(name: str) -> None:
    meta = fastjsonschema.compile(load(META_SCHEMA))
    schema = load(JSON_DIR / name)
    meta(copy.deepcopy(schema))  # raises if not a valid draft-07 schema
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["$id"] == BASE_URI + name
    assert schema.get("title") and schema.get("description")
    compile_file(name)  # compiles with $ref resolved the way other-language validators do


def _walk_schemas(node: Any, path: str = "#"):
    """Yield (path, schema node) for every subschema (not for data such as enum/const/default)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            for sub, subschema in value.items():
                yield from _walk_schemas(subschema, f"{path}/{key}/{sub}")
        elif key in ("allOf", "anyOf", "oneOf") or (key == "items" and isinstance(value, list)):
            for i, subschema in enumerate(value):
                yield from _walk_schemas(subschema, f"{path}/{key}/{i}")
        elif key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
            yield from _walk_schemas(value, f"{path}/{key}")


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_uses_only_draft07_keywords_and_consistent_required(name: str) -> None:
    """Typos such as "requried" or "minimun" are legal JSON Schema (ignored keywords): catch them."""
    for path, node in _walk_schemas(load(JSON_DIR / name)):
        unknown = set(node) - DRAFT07_KEYWORDS
        assert not unknown, f"{name} {path}: unknown keyword(s) {unknown}"
        for key in node.get("required", []):
            assert key in node.get("properties", {}), f"{name} {path}: required {key!r} not declared"


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_every_ref_resolves(name: str) -> None:
    base = BASE_URI + name
    for path, node in _walk_schemas(load(JSON_DIR / name)):
        if "$ref" not in node:
            continue
        document, _, fragment = urljoin(base, node["$ref"]).partition("#")
        assert document.startswith(BASE_URI), f"{name} {path}: non-local $ref"
        target = load(JSON_DIR / document[len(BASE_URI) :])
        for part in filter(None, fragment.split("/")):
            assert part in target, f"{name} {path}: dangling $ref {node['$ref']}"
            target = target[part]


@pytest.mark.parametrize("event_type", EXPECTED_TYPES)
def test_type_schema_pins_its_type_and_includes_envelope(event_type: str) -> None:
    schema = load(JSON_DIR / f"{event_type}.v1.schema.json")
    assert schema["properties"]["type"] == {"const": event_type}
    assert schema["allOf"] == [{"$ref": "envelope.v1.schema.json"}]


def test_meta_schema_check_can_fail() -> None:
    meta = fastjsonschema.compile(load(META_SCHEMA))
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        meta({"type": "strng"})
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        meta({"required": "item_id"})


# --------------------------------------------------------------------------------------------
# Examples (for producers and docs)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EXPECTED_TYPES)
def test_example_validates_against_its_schema_file_and_parses(event_type: str) -> None:
    raw = example(event_type)
    compile_file(f"{event_type}.v1.schema.json")(copy.deepcopy(raw))
    compile_file("envelope.v1.schema.json")(copy.deepcopy(raw))
    parsed = parse_event(orjson.dumps(raw))
    assert parsed.type == event_type
    assert parsed.event_id == raw["event_id"]


@pytest.mark.parametrize("event_type", EXPECTED_TYPES)
def test_example_is_rejected_by_other_type_schemas(event_type: str) -> None:
    raw = example(event_type)
    other = next(t for t in EXPECTED_TYPES if t != event_type)
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        compile_file(f"{other}.v1.schema.json")(copy.deepcopy(raw))


def test_decision_example_validates() -> None:
    raw = example("decision")
    compile_file("decision.v1.schema.json")(copy.deepcopy(raw))
    validate_decision(raw)


def test_segment_example_parses() -> None:
    raw = load(EXAMPLES_DIR / "segment.track.product_added.example.json")
    parsed = parse_event(raw)
    assert (parsed.type, parsed.properties["item_id"], parsed.context["channel"]) == (
        "add_to_cart",
        "sku-trail-runner-2",
        "web",
    )


def test_every_example_file_is_checked() -> None:
    names = {p.name for p in EXAMPLES_DIR.glob("*.json")}
    covered = {f"{t}.v1.example.json" for t in EXPECTED_TYPES} | {
        "decision.v1.example.json",
        "segment.track.product_added.example.json",
    } | {f.replace(".schema.", ".example.") for f in (*LEARNING_FILES, *SEGMENT_FILES)
         if f != "learning.v1.schema.json"}
    assert names == covered


# --------------------------------------------------------------------------------------------
# parse_event: valid events
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EXPECTED_TYPES)
@pytest.mark.parametrize("form", ["bytes", "str", "dict", "bytearray"])
def test_minimal_event_of_each_type_parses(event_type: str, form: str) -> None:
    raw = event(event_type)
    encoded: Any = {
        "bytes": orjson.dumps(raw),
        "str": json.dumps(raw),
        "dict": raw,
        "bytearray": bytearray(orjson.dumps(raw)),
    }[form]
    parsed = parse_event(encoded)
    assert isinstance(parsed, Event)
    assert (parsed.event_id, parsed.type, parsed.timestamp) == ("e-1", event_type, T0)
    assert parsed.schema_version == 1
    assert parsed.anonymous_id == "anon-1"
    assert parsed.context == {}


def test_defaults_are_filled_and_input_dict_is_not_modified() -> None:
    raw = event("add_to_cart")
    before = copy.deepcopy(raw)
    parsed = parse_event(raw)
    assert parsed.properties == {"item_id": "sku-1", "quantity": 1}
    assert parsed.schema_version == 1
    assert raw == before


def test_extra_fields_allowed_in_context_and_properties() -> None:
    raw = event(
        "click",
        context={"channel": "app", "app_version": "5.1", "device": {"os": "iOS"}},
        properties={"item_id": "sku-1", "position": 3, "custom": {"a": [1, 2]}},
    )
    parsed = parse_event(raw)
    assert parsed.context["device"] == {"os": "iOS"}
    assert parsed.properties["position"] == 3


def test_visitor_id_prefers_customer_id() -> None:
    assert parse_event(event(customer_id="cust-9")).visitor_id == "cust-9"
    assert parse_event(event()).visitor_id == "anon-1"
    only_customer = parse_event(event(anonymous_id=None, customer_id="cust-9"))
    assert (only_customer.anonymous_id, only_customer.visitor_id) == (None, "cust-9")


def test_null_id_means_absent() -> None:
    parsed = parse_event(event(customer_id="cust-9", anonymous_id=None) | {"anonymous_id": None})
    assert parsed.anonymous_id is None
    assert parsed.visitor_id == "cust-9"


def test_reward_link_on_click_and_purchase() -> None:
    click = parse_event(event("click", properties={"decision_id": "d-1", "action_id": "a-1"}))
    assert click.properties["decision_id"] == "d-1"
    purchase = parse_event(
        event("purchase", properties={"order_id": "o", "value": 1, "decision_id": "d-1", "action_id": "a"})
    )
    assert purchase.properties["action_id"] == "a"


def test_event_is_slotted_dataclass() -> None:
    parsed = parse_event(event())
    assert not hasattr(parsed, "__dict__")
    with pytest.raises(AttributeError):
        parsed.not_a_field = 1  # type: ignore[attr-defined]  # what the test checks is refused


# --------------------------------------------------------------------------------------------
# parse_event: precise reasons
# --------------------------------------------------------------------------------------------

INVALID_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("missing item_id", event(properties={}), "properties.item_id: is required for add_to_cart"),
    ("missing properties", event(properties=None), "properties: is required for add_to_cart"),
    ("missing event_id", event(event_id=None), "event_id: is required"),
    ("missing type", event(type=None), "type: is required"),
    ("missing timestamp", event(timestamp=None), "timestamp: is required"),
    (
        "no visitor",
        event(anonymous_id=None),
        "anonymous_id or customer_id: at least one is required (a non-empty string)",
    ),
    ("empty anonymous_id", event(anonymous_id=""), "anonymous_id: must not be empty"),
    (
        "long customer_id",
        event(customer_id="c" * 129),
        "customer_id: must be at most 128 characters, got 129",
    ),
    ("event_id not string", event(event_id=7), "event_id: must be string, got integer"),
    (
        "price as string",
        event(properties={"item_id": "s", "price": "9.99"}),
        "properties.price: must be number, got string",
    ),
    ("negative price", event(properties={"item_id": "s", "price": -1}), "properties.price: must be >= 0, got -1"),
    ("zero quantity", event(properties={"item_id": "s", "quantity": 0}), "properties.quantity: must be >= 1, got 0"),
    (
        "fractional quantity",
        event(properties={"item_id": "s", "quantity": 1.5}),
        "properties.quantity: must be integer, got number",
    ),
    ("item_id number", event(properties={"item_id": 12}), "properties.item_id: must be string, got integer"),
    ("properties array", event(properties=[]), "properties: must be object, got array"),
    ("context string", event(context="web"), "context: must be object, got string"),
    (
        "unknown channel",
        event(context={"channel": "Web"}),
        "context.channel: must be one of web, app, email, push, sms, in_app, pos, call_center, kiosk, api, "
        "server, other, got 'Web'",
    ),
    (
        "bad locale",
        event(context={"locale": "English"}) | {"context": {"locale": "en GB"}},
        "context.locale: must be a BCP 47 language tag such as 'en-GB', got 'en GB'",
    ),
    (
        "unknown type",
        event(type="pageview"),
        "type: unknown event type 'pageview' (expected one of: page_view, click, add_to_cart, "
        "remove_from_cart, purchase, search, identify, consent, feedback, impression, track)",
    ),
    ("type not a string", event(type=["click"]), "type: must be string, got array"),
    (
        "unknown top-level field",
        event() | {"userId": "u-1"},
        "userId: unknown top-level field; custom data belongs in properties or context",
    ),
    (
        "unsupported schema_version",
        event(schema_version=2),
        "schema_version: unsupported version 2 for add_to_cart (supported: 1)",
    ),
    ("schema_version string", event(schema_version="1"), "schema_version: must be integer, got string"),
    ("schema_version bool", event(schema_version=True), "schema_version: must be integer, got boolean"),
    (
        "purchase without value",
        event("purchase", properties={"order_id": "o-1"}),
        "properties.value: is required for purchase",
    ),
    (
        "purchase item without item_id",
        event("purchase", properties={"order_id": "o", "value": 1, "items": [{"item_id": "a"}, {"price": 2}]}),
        "properties.items[1].item_id: is required for purchase",
    ),
    (
        "purchase items not a list",
        event("purchase", properties={"order_id": "o", "value": 1, "items": {"item_id": "a"}}),
        "properties.items: must be array, got object",
    ),
    (
        "lower-case currency",
        event("purchase", properties={"order_id": "o", "value": 1, "currency": "eur"}),
        "properties.currency: must be a 3-letter upper-case ISO 4217 code such as 'EUR', got 'eur'",
    ),
    ("search without query", event("search", properties={}), "properties.query: is required for search"),
    ("identify without customer", event("identify", customer_id=None), "customer_id: is required for identify"),
    (
        "consent as string",
        event("consent", properties={"personalisation": "yes"}),
        "properties.personalisation: must be boolean, got string",
    ),
    (
        "consent missing",
        event("consent", properties={"user_hash": "0" * 64}),
        "properties: at least one of personalisation, analytics, marketing is required for consent",
    ),
    (
        "feedback bad kind",
        event("feedback", properties={"decision_id": "d", "action_id": "a", "kind": "like"}),
        "properties.kind: must be one of click, conversion, dismiss, got 'like'",
    ),
    (
        "feedback missing decision",
        event("feedback", properties={"action_id": "a", "kind": "click"}),
        "properties.decision_id: is required for feedback",
    ),
    (
        "feedback value not number",
        event("feedback", properties={"decision_id": "d", "action_id": "a", "kind": "click", "value": "1"}),
        "properties.value: must be number, got string",
    ),
    (
        "click decision_id empty",
        event("click", properties={"decision_id": ""}),
        "properties.decision_id: must not be empty",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in INVALID_CASES], ids=[c[0] for c in INVALID_CASES])
def test_invalid_event_reason(raw: dict[str, Any], expected: str) -> None:
    assert reason_of(raw) == expected
    assert reason_of(orjson.dumps(raw)) == expected


def test_invalid_event_carries_event_id_and_is_value_error() -> None:
    with pytest.raises(ValueError) as info:
        parse_event(event(properties={}))
    assert isinstance(info.value, InvalidEvent)
    assert info.value.event_id == "e-1"
    assert str(info.value) == info.value.reason
    clone = pickle.loads(pickle.dumps(info.value))
    assert (type(clone), clone.reason, clone.event_id) == (InvalidEvent, info.value.reason, "e-1")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "event: not valid JSON"),
        (b"", "event: not valid JSON"),
        (b"[1, 2]", "event: must be a JSON object, got array"),
        (b'"hello"', "event: must be a JSON object, got string"),
        (42, "event: must be JSON bytes/str or a dict, got int"),
        (None, "event: must be JSON bytes/str or a dict, got NoneType"),
    ],
)
def test_not_an_object(raw: Any, expected: str) -> None:
    assert reason_of(raw).startswith(expected)


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2024-05-01T12:00:00Z", T0),
        ("2024-05-01T12:00:00.250Z", T0 + 0.25),
        ("2024-05-01T14:00:00+02:00", T0),
        ("2024-05-01T07:30:00-04:30", T0),
        ("2024-05-01t12:00:00z", T0),
        ("2024-05-01 12:00:00Z", T0),
        ("2024-05-01T12:00:00.123456789Z", T0 + 0.123456),
        (T0_MS, T0),
        (T0_MS + 250, T0 + 0.25),
        (T0_MS + 0.5, T0 + 0.0005),
    ],
)
def test_timestamp_forms(timestamp: Any, expected: float) -> None:
    parsed = parse_event(orjson.dumps(event(timestamp=timestamp)))
    assert parsed.timestamp == pytest.approx(expected, abs=1e-6)
    assert isinstance(parsed.timestamp, float)


NOT_RFC3339 = (
    "timestamp: not RFC3339 (expected a date-time with a timezone, from the year 2000, "
    "e.g. '2024-05-01T12:00:00Z') "
    "nor epoch milliseconds, got "
)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2024-05-01T12:00:00", NOT_RFC3339 + "'2024-05-01T12:00:00'"),
        ("2024-05-01", NOT_RFC3339 + "'2024-05-01'"),
        ("1714564800000", NOT_RFC3339 + "'1714564800000'"),
        ("yesterday", NOT_RFC3339 + "'yesterday'"),
        ("2024-05-01T12:00:00+0200", NOT_RFC3339 + "'2024-05-01T12:00:00+0200'"),
        (
            "2024-02-30T12:00:00Z",
            "timestamp: not a valid RFC3339 date-time (day is out of range for month), got '2024-02-30T12:00:00Z'",
        ),
        (1714564800, "timestamp: must be epoch milliseconds, 1714564800 looks like epoch seconds (x1000)"),
        (1714564800.5, "timestamp: must be epoch milliseconds, 1714564800.5 looks like epoch seconds (x1000)"),
        (0, "timestamp: must be epoch milliseconds >= 946684800000 (2000-01-01), got 0"),
        (-1, "timestamp: must be epoch milliseconds >= 946684800000 (2000-01-01), got -1"),
        (10**16, "timestamp: must be epoch milliseconds before year 10000, got 10000000000000000"),
        (True, "timestamp: must be string or number, got boolean"),
        (None, "timestamp: is required"),
        ([T0_MS], "timestamp: must be string or number, got array"),
    ],
)
def test_timestamp_errors(timestamp: Any, expected: str) -> None:
    raw = event() | {"timestamp": timestamp} if timestamp is not None else event(timestamp=None)
    assert reason_of(raw) == expected


def test_timestamp_nan_rejected_for_dict_input() -> None:
    assert reason_of(event() | {"timestamp": math.nan}) == "timestamp: must be a number, got NaN"


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EXPECTED_TYPES)
def test_round_trip_examples(event_type: str) -> None:
    parsed = parse_event(orjson.dumps(example(event_type)))
    assert parse_event(dumps_event(parsed)) == parsed
    assert parse_event(event_to_dict(parsed)) == parsed
    out = event_to_dict(parsed)
    assert isinstance(out["timestamp"], int)
    assert out["timestamp"] == round(parsed.timestamp * 1000)


def test_event_to_dict_shape() -> None:
    parsed = parse_event(event(customer_id="c-1", context={"channel": "web"}))
    assert event_to_dict(parsed) == {
        "event_id": "e-1",
        "type": "add_to_cart",
        "schema_version": 1,
        "timestamp": T0_MS,
        "anonymous_id": "anon-1",
        "customer_id": "c-1",
        "context": {"channel": "web"},
        "properties": {"item_id": "sku-1", "quantity": 1},
    }
    only_customer = event_to_dict(parse_event(event(anonymous_id=None, customer_id="c-1")))
    assert "anonymous_id" not in only_customer


def test_round_trip_keeps_sub_millisecond_precision() -> None:
    parsed = parse_event(event(timestamp="2024-05-01T12:00:00.123456Z"))
    millis = event_to_dict(parsed)["timestamp"]
    assert millis == pytest.approx(T0_MS + 123.456, abs=1e-6)
    again = parse_event(dumps_event(parsed))
    assert again.timestamp == pytest.approx(parsed.timestamp, abs=1e-6)


def test_event_to_dict_does_not_alias_event_dicts() -> None:
    parsed = parse_event(event())
    event_to_dict(parsed)["properties"]["item_id"] = "changed"
    assert parsed.properties["item_id"] == "sku-1"


# --------------------------------------------------------------------------------------------
# Segment
# --------------------------------------------------------------------------------------------


def segment(call: str = "track", **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": call,
        "messageId": "m-1",
        "anonymousId": "anon-1",
        "userId": None,
        "timestamp": "2024-05-01T12:00:00.000Z",
        "sentAt": "2024-05-01T12:00:01.000Z",
        "channel": "browser",
        "context": {
            "page": {"url": "https://shop.example/p/1", "referrer": "https://ref.example/"},
            "userAgent": "UA/1.0",
            "locale": "en-GB",
            "ip": "203.0.113.9",
            "library": {"name": "analytics.js", "version": "5.0.0"},
        },
        "integrations": {},
    }
    payload.update(fields)
    return payload


def test_segment_detection() -> None:
    assert is_segment_payload(segment())
    assert is_segment_payload({"type": "page", "userId": "u"})
    assert is_segment_payload({"messageId": "m"})
    assert not is_segment_payload(event("identify"))
    assert not is_segment_payload({"type": "track"})
    assert not is_segment_payload({"type": ["track"], "userId": "u"})


def test_segment_common_fields() -> None:
    parsed = parse_event(segment(event="Product Added", properties={"product_id": "sku-1"}))
    assert parsed.event_id == "m-1"
    assert parsed.timestamp == T0
    assert (parsed.anonymous_id, parsed.customer_id) == ("anon-1", None)
    assert parsed.context == {
        "url": "https://shop.example/p/1",
        "referrer": "https://ref.example/",
        "user_agent": "UA/1.0",
        "locale": "en-GB",
        "ip": "203.0.113.9",
        "channel": "web",
    }


def test_segment_page() -> None:
    parsed = parse_event(
        segment("page", name="Trail Runner 2", category="shoes", properties={"path": "/p/1", "search": ""})
    )
    assert parsed.type == "page_view"
    assert parsed.properties == {
        "path": "/p/1",
        "search": "",
        "url": "https://shop.example/p/1",
        "title": "Trail Runner 2",
        "category": "shoes",
    }


def test_segment_identify() -> None:
    parsed = parse_event(segment("identify", userId="cust-1", traits={"email_domain": "example.com"}))
    assert (parsed.type, parsed.customer_id, parsed.anonymous_id) == ("identify", "cust-1", "anon-1")
    assert parsed.properties == {"traits": {"email_domain": "example.com"}}
    assert reason_of(segment("identify")) == "customer_id: is required for identify"


@pytest.mark.parametrize(
    ("name", "event_type"),
    [
        ("Product Clicked", "click"),
        ("Product Added", "add_to_cart"),
        ("Product Removed", "remove_from_cart"),
        ("Product Viewed", "page_view"),
    ],
)
def test_segment_product_events(name: str, event_type: str) -> None:
    props = {"product_id": "sku-1", "sku": "SKU1", "category": "shoes", "price": 19.5, "quantity": 2, "name": "X"}
    parsed = parse_event(segment(event=name, properties=props))
    assert parsed.type == event_type
    assert parsed.properties["item_id"] == "sku-1"
    assert parsed.properties["category"] == "shoes"
    assert "product_id" not in parsed.properties and "sku" not in parsed.properties


def test_segment_sku_and_numeric_ids() -> None:
    parsed = parse_event(segment(event="Product Added", userId=42, properties={"sku": 1234}))
    assert parsed.properties["item_id"] == "1234"
    assert parsed.customer_id == "42"


def test_segment_click_keeps_reward_link() -> None:
    props = {"product_id": "sku-1", "decision_id": "d-1", "action_id": "a-1"}
    parsed = parse_event(segment(event="Product Clicked", properties=props))
    assert (parsed.properties["decision_id"], parsed.properties["action_id"]) == ("d-1", "a-1")


def test_segment_order_completed() -> None:
    props = {
        "order_id": 50314,
        "total": 27.5,
        "revenue": 25.0,
        "currency": "usd",
        "products": [
            {"product_id": "sku-1", "price": 19.0, "quantity": 1, "category": "games"},
            {"sku": "sku-2", "price": 3.0, "quantity": 2},
        ],
    }
    parsed = parse_event(segment(event="Order Completed", properties=props))
    assert parsed.type == "purchase"
    assert parsed.properties == {
        "order_id": "50314",
        "value": 27.5,
        "revenue": 25.0,
        "currency": "USD",
        "items": [
            {"item_id": "sku-1", "price": 19.0, "quantity": 1, "category": "games"},
            {"item_id": "sku-2", "price": 3.0, "quantity": 2},
        ],
    }
    revenue_only = parse_event(segment(event="Order Completed", properties={"order_id": "o", "revenue": 9.0}))
    assert revenue_only.properties["value"] == 9.0
    assert reason_of(segment(event="Order Completed", properties={"order_id": "o"})) == (
        "properties.total: is required for Segment 'Order Completed' (or properties.revenue)"
    )
    assert reason_of(segment(event="Order Completed", properties={"total": 1, "products": [{"price": 1}]})) == (
        "properties.order_id: is required for purchase"
    )


def test_segment_products_searched() -> None:
    parsed = parse_event(segment(event="Products Searched", properties={"query": "blue hotpants"}))
    assert (parsed.type, parsed.properties) == ("search", {"query": "blue hotpants"})
    assert reason_of(segment(event="Products Searched", properties={})) == "properties.query: is required for search"


def test_segment_track_named_after_pulse_type() -> None:
    props = {"decision_id": "d-1", "action_id": "a-1", "kind": "dismiss"}
    parsed = parse_event(segment(event="feedback", properties=props))
    assert (parsed.type, parsed.properties) == ("feedback", props)


def test_segment_errors() -> None:
    assert reason_of(segment(event=None)) == "event: is required for a Segment track call"
    assert reason_of(segment("merge")) == (
        "type: unsupported Segment call 'merge' (supported: alias, group, identify, page, screen, track)")
    no_id = segment(event="Product Added", properties={"product_id": "x"})
    del no_id["messageId"]
    assert reason_of(no_id) == "messageId: is required (Segment payload)"
    no_time = segment(event="Product Added", properties={"product_id": "x"}, timestamp=None, sentAt=None)
    assert reason_of(no_time).startswith("timestamp: is required (Segment payload")
    assert reason_of(segment(event="Product Added", properties={})) == (
        "properties.item_id: is required for add_to_cart"
    )
    assert reason_of(segment(event="Product Added", properties=[1])) == "properties: must be object, got array"
    assert reason_of(segment(event="Product Added", anonymousId=None, properties={"product_id": "x"})) == (
        "anonymous_id or customer_id: at least one is required (a non-empty string)"
    )


def test_segment_falls_back_to_original_timestamp_and_does_not_modify_payload() -> None:
    payload = segment(event="Product Added", properties={"product_id": "x"}, timestamp=None)
    payload["originalTimestamp"] = "2024-05-01T12:00:00Z"
    before = copy.deepcopy(payload)
    assert parse_event(payload).timestamp == T0
    assert payload == before


def test_segment_mapping_is_what_parse_event_uses() -> None:
    payload = segment(event="Product Removed", properties={"product_id": "x", "quantity": 3})
    mapped = from_segment(payload)
    assert parse_event(mapped) == parse_event(orjson.dumps(payload))
    assert mapped["type"] == "remove_from_cart"


def test_segment_mobile_channel() -> None:
    payload = segment(event="Product Viewed", channel=None, properties={"product_id": "x"})
    payload["context"] = {"app": {"name": "Shop", "version": "5.1"}, "locale": "fr-FR"}
    parsed = parse_event(payload)
    assert parsed.context == {"channel": "app", "locale": "fr-FR"}
    assert (
        parse_event(segment(event="Product Viewed", channel="mobile", properties={"product_id": "x"})).context[
            "channel"
        ]
        == "app"
    )


# --------------------------------------------------------------------------------------------
# Decision records
# --------------------------------------------------------------------------------------------


def decision(**overrides: Any) -> dict[str, Any]:
    record = example("decision")
    for key, value in overrides.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def decision_reason(record: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        validate_decision(record)
    return info.value.reason


def test_valid_decision_is_not_modified() -> None:
    record = decision(schema_version=None)
    before = copy.deepcopy(record)
    validate_decision(record)  # returns nothing, raises when invalid
    assert record == before


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (decision(decision_id=None), "decision_id: is required"),
        (decision(propensity=None), "propensity: is required"),
        (decision(degraded=None), "degraded: is required"),
        (decision(holdout_arm=None), "holdout_arm: is required"),
        (
            decision(anonymous_id=None),
            "anonymous_id or customer_id: at least one is required (a non-empty string)",
        ),
        (decision(propensity=0), "propensity: must be > 0, got 0"),
        (decision(propensity=1.5), "propensity: must be <= 1, got 1.5"),
        (decision(degraded="no"), "degraded: must be boolean, got string"),
        (decision(context={"views_1h": "3"}), "context.views_1h: must be number, got string"),
        (decision(context={"is_web": True}), "context.is_web: must be number, got boolean"),
        (decision(actions=[]), "reason: is required"),  # "nothing now" says why
        (decision(actions=[], reason="bogus"), "reason: must be one of below_threshold, capped, contact_pressure, "
                                               "all_suppressed, no_eligible_action, got 'bogus'"),
        (decision(actions=[{"action_id": "promo-socks"}]), "actions[0].score: is required"),
        (decision(candidates=["a", "a"]), "candidates: items must be unique"),
        (
            decision(actions=[{"action_id": "promo-socks", "score": 1}, {"action_id": "other", "score": 0}]),
            "actions[1].action_id: 'other' is not among candidates",
        ),
        (decision(model_version=7), "model_version: must be string, got integer"),
        (
            decision(timestamp=1714564800),
            "timestamp: must be epoch milliseconds, 1714564800 looks like epoch seconds (x1000)",
        ),
        (decision(schema_version=2), "schema_version: must be 1, got 2"),
        (["not", "a", "dict"], "decision: must be an object, got array"),
    ],
)
def test_invalid_decision_reason(record: Any, expected: str) -> None:
    assert decision_reason(record) == expected


def test_decision_error_carries_decision_id() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_decision(decision(propensity=0))
    assert info.value.event_id == "dec-7f3e0c1a"


# --------------------------------------------------------------------------------------------
# Docs
# --------------------------------------------------------------------------------------------


def test_public_api() -> None:
    assert set(schemas.__all__) >= {
        "EVENT_TYPES",
        "Event",
        "InvalidEvent",
        "parse_event",
        "event_to_dict",
        "dumps_event",
        "from_segment",
        "validate_decision",
    }
    for name in schemas.__all__:
        assert getattr(schemas, name) is not None
        obj = getattr(schemas, name)
        if callable(obj):
            assert obj.__doc__, name
    assert re.fullmatch(r"[a-z_]+(, [a-z_]+)*", ", ".join(EVENT_TYPES))
