"""Fuzz cases for ``test_fuzz.py``: events generated from the project's own JSON Schemas (hypothesis-jsonschema)
and mutations of them outside the schemas (wrong types, huge strings, deep nesting, NaN text, unknown types,
extreme numbers, clock edges, bytes that are not JSON).

A case is the bytes sent (one event, or a list of them through the collector) and whether the generated event
was schema-valid and left unmutated (``valid``): both doors must then accept it.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from schemas._validation import inline_refs
from schemas.events import EVENT_TYPES
from schemas.limits import DEFAULT_LIMITS as L

SCHEMAS = {t: inline_refs(f"{t}.v1.schema.json") for t in EVENT_TYPES}
JSON_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, "", "x", [], {}, [1, "a"], {"a": 1}, 1e308, -1e308]


@dataclass(slots=True)
class Case:
    kind: str  # "valid" or the mutation's name
    body: bytes  # what is sent: an event, or raw bytes
    event_ids: tuple[str, ...]  # event ids in the body (for the valid ones: to find them afterwards)

    @property
    def valid(self) -> bool:
        return self.kind == "valid"


def generated_events(n: int, fuzz_seed: int | None) -> list[dict[str, Any]]:
    """``n`` events drawn from the JSON Schemas: fixed with ``fuzz_seed=None`` (derandomised), else from it."""
    out: list[dict[str, Any]] = []
    strategy = st.one_of([from_schema(SCHEMAS[t]) for t in EVENT_TYPES])

    @settings(max_examples=n, derandomize=fuzz_seed is None, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(event: dict[str, Any]) -> None:
        out.append(event)

    (seed(fuzz_seed)(draw) if fuzz_seed is not None else draw)()
    return out


def _now_ms(rng: random.Random) -> int:
    return int(time.time() * 1000) - rng.randrange(0, 3 * 86_400_000)


def _fresh(event: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A schema-valid event made unique and recent (a generated timestamp is anywhere in 2000..9999)."""
    event = dict(event)
    event["event_id"] = uuid.UUID(int=rng.getrandbits(128)).hex
    # visitors of their own: a generated consent withdrawal would otherwise make the worker skip (by design,
    # neither applied nor dead-lettered) the later events of a visitor id drawn again, such as "0"
    tag = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    for key in ("anonymous_id", "customer_id"):
        if isinstance(event.get(key), str):
            event[key] = f"{key[0]}-{tag}-{event[key][:100]}"
    ms = _now_ms(rng)
    event["timestamp"] = ms if rng.random() < 0.6 else datetime.fromtimestamp(ms / 1000, UTC).isoformat()
    return event


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _copy(event: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = orjson.loads(orjson.dumps(event))
    return copied


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


def mutate(event: dict[str, Any], rng: random.Random) -> tuple[str, bytes]:
    """One mutation of a valid event, outside the schemas (or on their edges): (name, bytes)."""
    e = _copy(event)
    paths = _paths(e)
    kind = rng.choice(["wrong_type", "huge_string", "deep", "nan_text", "unknown_type", "extreme_number",
                       "clock_edge", "missing_field", "extra_field", "not_an_event", "segment", "stream_read"])
    if kind == "wrong_type" and paths:
        _set(e, rng.choice(paths), rng.choice(JSON_VALUES))
    elif kind == "huge_string":
        target = rng.choice([p for p in paths if isinstance(_get(e, p), str)] or [("properties", "note")])
        if target == ("properties", "note"):
            e.setdefault("properties", {})
        _set(e, target, "x" * rng.choice([L.max_text_chars + 1, 70_000, 300_000]))
    elif kind == "deep":
        depth = rng.choice([3, 4, 8, 64, 250, 2000])
        if depth > 200:  # beyond what orjson writes (254) or reads (1024): the text by hand
            e.setdefault("properties", {})["deep"] = 0
            return kind, orjson.dumps(e).replace(b'"deep":0', b'"deep":' + b"[" * depth + b"1" + b"]" * depth, 1)
        e.setdefault("properties", {})["deep"] = _nested(depth)
    elif kind == "nan_text":
        token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"nan"])
        e.setdefault("properties", {})["value"] = 12345.25
        return kind, orjson.dumps(e).replace(b"12345.25", token, 1)
    elif kind == "unknown_type":
        e["type"] = rng.choice(["track", "page", "foo", "", "PAGE_VIEW", 7, None, ["click"]])
        if rng.random() < 0.5:
            e["schema_version"] = rng.choice([2, 0, -1, "1", 1.5, None])
    elif kind == "extreme_number":
        field = rng.choice(["value", "price", "quantity", "custom"])
        e.setdefault("properties", {})[field] = 0.5
        token = rng.choice([b"1e308", b"-1e308", b"1e13", b"-0.0", b"18446744073709551616",
                            b"9223372036854775808", b"1E999", b"0.0000000000000000000001"])
        return kind, orjson.dumps(e).replace(b":0.5", b":" + token, 1)
    elif kind == "clock_edge":
        now = time.time()
        e["timestamp"] = rng.choice([
            int((now + L.max_future_s + 2) * 1000), int((now + L.max_future_s - 5) * 1000),
            L.min_timestamp_ms - 1, L.min_timestamp_ms, int(now), "2024-02-30T00:00:00Z", "2024-05-01T12:00:00",
            "1999-12-31T23:59:59Z", "9999-12-31T23:59:59Z", 253402300799999, 1e20, -1])
    elif kind == "missing_field":
        required = [k for k in ("event_id", "type", "timestamp", "properties") if k in e]
        if required:
            del e[rng.choice(required)]
    elif kind == "extra_field":
        e[rng.choice(["extra", "eventId", "__proto__", "batch"])] = 1
    elif kind == "not_an_event":
        return kind, rng.choice([b"", b"null", b"42", b'"text"', b"[]", b"[[]]", b"{", b"\xff\xfe\x00",
                                 b'{"a":' * 10, orjson.dumps([e, 1]), b"\x00" * 64])
    elif kind == "segment":
        seg: dict[str, Any] = {"type": rng.choice(["track", "page", "identify"]), "messageId": e.get("event_id"),
                               "anonymousId": "seg-" + uuid.UUID(int=rng.getrandbits(128)).hex[:8],
                               "timestamp": e.get("timestamp"),
                               "event": rng.choice(["Product Added", "Order Completed", "Nope", None, 5]),
                               "properties": rng.choice([{"product_id": 1}, {"products": 1}, {"total": "x"},
                                                         {"sku": "s", "price": 1.0}, []])}
        return kind, orjson.dumps(seg)
    elif kind == "stream_read":  # the properties the stream reads, with values of the wrong shape
        props = e.setdefault("properties", {})
        props[rng.choice(["items", "item_id", "decision_id", "action_id", "category", "quantity", "value",
                          "kind", "personalisation", "traits"])] = rng.choice(JSON_VALUES + [[1], [{"item_id": 1}]])
    return kind, orjson.dumps(e)


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def build_cases(n_generated: int, mutations_per_event: int, fuzz_seed: int | None) -> list[Case]:
    """Each generated event as is (made recent and unique), then ``mutations_per_event`` mutations of it."""
    rng = random.Random(fuzz_seed if fuzz_seed is not None else 16)
    cases: list[Case] = []
    for event in generated_events(n_generated, fuzz_seed):
        fresh = _fresh(event, rng)
        cases.append(Case("valid", orjson.dumps(fresh), (fresh["event_id"],)))
        for _ in range(mutations_per_event):
            mutated = _fresh(event, rng)
            kind, body = mutate(mutated, rng)
            cases.append(Case(kind, body, (mutated["event_id"],)))
    return cases
