"""The bounds on an event (``schemas/limits.py``): the JSON Schemas carry the same numbers as ``EventLimits``,
each bound refuses with a reason naming the field, and the collector's request checks (no Kafka here)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from schemas import Event, InvalidEvent, load_schema, parse_event
from schemas.limits import DEFAULT_LIMITS, SCHEMA_BOUNDS, EventLimits, check_event
from serving import collector

L = DEFAULT_LIMITS
#: the bounds that only code can enforce (bytes, the clock, the request)
CODE_ONLY = {"max_event_bytes", "max_events_per_request", "max_body_bytes", "max_future_s", "max_depth"}


def _at(schema: dict[str, Any], pointer: str) -> Any:
    node: Any = schema
    for part in filter(None, pointer.split("/")):
        node = node[part]
    return node


def test_every_schema_carried_bound_is_the_number_in_the_json_schema() -> None:
    fields = {f.name for f in dataclasses.fields(EventLimits)}
    assert set(SCHEMA_BOUNDS) | CODE_ONLY == fields  # a new bound is declared in one group or the other
    for name, places in SCHEMA_BOUNDS.items():
        for file, pointer, keyword, sign in places:
            assert _at(load_schema(file), pointer)[keyword] == sign * getattr(L, name), (name, file, pointer)


def now_ms() -> int:
    return int(time.time() * 1000)


def ev(type_: str = "page_view", /, **props: Any) -> dict[str, Any]:
    return {"event_id": "e-1", "type": type_, "timestamp": now_ms(), "anonymous_id": "a-1", "properties": props}


def reason(raw: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    return info.value.reason


@pytest.mark.parametrize(("raw", "expected"), [
    # the crash, and the other properties the stream reads, typed in every event type
    (ev(items=1), "properties.items: must be array, got integer"),
    (ev(items=[1]), "properties.items[0]: must be object, got integer"),
    (ev("search", query="q", item_id=5), "properties.item_id: must be string, got integer"),
    (ev("click", decision_id=7), "properties.decision_id: must be string, got integer"),
    (ev("page_view", value="10"), "properties.value: must be number, got string"),
    (ev("page_view", quantity=2.5), "properties.quantity: must be integer, got number"),
    # lengths, counts, ranges
    (ev(item_id="x" * (L.max_item_id_chars + 1)), f"properties.item_id: must be at most {L.max_item_id_chars} "
                                                  f"characters, got {L.max_item_id_chars + 1}"),
    (ev(note="x" * (L.max_text_chars + 1)), f"properties.note: must be at most {L.max_text_chars} characters, "
                                            f"got {L.max_text_chars + 1}"),
    (ev("purchase", order_id="o", value=1.0, items=[{"item_id": "i"}] * (L.max_line_items + 1)),
     f"properties.items: must have at most {L.max_line_items} items, got {L.max_line_items + 1}"),
    (ev(**{f"p{i}": 1 for i in range(L.max_members + 1)}), "properties: must contain less than or equal to 64 "
                                                           "properties"),
    (ev("purchase", order_id="o", value=2e12), "properties.value: must be <= 1000000000000.0, got 2000000000000.0"),
    (ev("add_to_cart", item_id="i", quantity=L.max_quantity + 1), "properties.quantity: must be <= 1000000, "
                                                                  "got 1000001"),
    (ev("page_view", price=-1), "properties.price: must be >= 0, got -1"),
    (ev(custom=1e13), "properties.custom: must be <= 1000000000000.0, got 10000000000000.0"),
    # nesting: event > properties > custom object > custom list > scalar, and no deeper
    (ev(custom={"a": [{"b": 1}]}), "properties.custom.a[0]: must be string or number or boolean or null, got object"),
    (ev(traits={"a": {"b": {}}}), "properties.traits.a.b: must be string or number or boolean or null, got object"),
])
def test_each_bound_refuses_with_the_field_and_why(raw: dict[str, Any], expected: str) -> None:
    assert reason(raw) == expected


def test_the_deepest_and_largest_accepted_values_pass() -> None:
    deep = ev(custom={"a": ["x" * L.max_text_chars, 1e12, -1e12, True, None]},
              items=[{"item_id": "i" * L.max_item_id_chars, "quantity": L.max_quantity}])
    assert parse_event(deep).properties["custom"]["a"][1] == 1e12
    members = ev(**{f"p{i}": i for i in range(L.max_members)})
    assert len(parse_event(members).properties) == L.max_members


def test_timestamps_within_the_skew_and_after_the_floor_only() -> None:
    now = time.time()
    def check(ts_ms: float | str) -> None:
        e = parse_event({**ev(), "timestamp": ts_ms})
        check_event(e, 100, now)
    check(now * 1000 + L.max_future_s * 1000 - 1000)
    with pytest.raises(InvalidEvent, match=r"^timestamp: .* s after the receiver's clock \(at most 300 s\)$"):
        check(now * 1000 + L.max_future_s * 1000 + 1000)
    with pytest.raises(InvalidEvent, match=r"^timestamp: not RFC3339 \(.*from the year 2000"):
        check("1999-12-31T23:59:59Z")  # the schema's pattern: a string's year
    check("2000-01-01T00:00:00+14:00")  # its year is 2000: a few hours before the floor instant, allowed
    with pytest.raises(InvalidEvent, match=r"^timestamp: 1999-12-30T23:59:59Z is before 2000-01-01T00:00:00Z$"):
        check_event(Event("e-1", "page_view", 946598399.0, "a-1"), 100, now)  # not parsed: no schema before
    assert reason({**ev(), "timestamp": 946684799999}).startswith(
        "timestamp: must be epoch milliseconds >= 946684800000")
    with pytest.raises(InvalidEvent, match=r"^event: 262145 bytes once serialised, at most 262144$"):
        check_event(parse_event(ev()), L.max_event_bytes + 1, now)
    tight = dataclasses.replace(L, max_future_s=1.0)
    with pytest.raises(InvalidEvent):
        check_event(parse_event({**ev(), "timestamp": now * 1000 + 5000}), 100, now, tight)


# --- the collector's request checks ---------------------------------------------------------------------

def test_a_request_names_the_index_and_field_of_each_refused_event() -> None:
    items = [ev(), ev(items=1), ev("search"), {**ev(), "timestamp": now_ms() + 3_600_000}]
    ready, errors = collector.validate(items, L, time.time())
    assert len(ready) == 1
    assert [(e["index"], e["field"]) for e in errors] == [(1, "properties.items"), (2, "properties.query"),
                                                         (3, "timestamp")]
    assert errors[0]["reason"] == "properties.items: must be array, got integer" and errors[0]["event_id"] == "e-1"


@pytest.mark.parametrize(("body", "error"), [
    ([], "body: no events"),
    ([{}] * (L.max_events_per_request + 1), f"body: at most {L.max_events_per_request} events per request, got 501"),
    ({"batch": {}}, "batch: must be a list of events"),
    ({"batch": [{}], "extra": 1}, "extra: unknown member of a batch body"),
    ("text", "body: must be an event object"),
])
def test_bodies_that_are_not_events_are_refused_before_any_event_is_validated(body: Any, error: str) -> None:
    with pytest.raises(ValueError, match="^" + error.replace("(", r"\(").replace(")", r"\)")):
        collector.events_of(body, L)


class _FakeProducer:
    """Kafka's answers without a broker: the n-th send fails with ``errors[n]`` (delivery future) if set."""

    def __init__(self, errors: dict[int, Exception]) -> None:
        self.errors, self.sent = errors, 0

    async def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        err = self.errors.get(self.sent)
        self.sent += 1
        fut.set_exception(err) if err is not None else fut.set_result(None)
        return fut


class _Svc:
    def __init__(self, producer: Any) -> None:
        from serving.metrics import ServingMetrics
        self.producer, self.metrics = producer, ServingMetrics()
        self.settings = type("S", (), {"events_topic": "events"})()


@pytest.mark.parametrize(("error", "status"), [(MessageSizeTooLargeError(), 422), (KafkaConnectionError(), 503)])
def test_a_permanent_kafka_error_is_a_4xx_never_retry(error: Exception, status: int) -> None:
    items = [ev(), {**ev(), "event_id": "e-2"}]
    ready, _ = collector.validate(items, L, time.time())
    answer = asyncio.run(collector.publish(_Svc(_FakeProducer({1: error})), items, ready, []))  # type: ignore[arg-type]
    body = orjson.loads(answer.body)
    assert answer.status_code == status and body["delivered"] == ["e-1"]
    if status == 422:
        assert body["errors"][0]["index"] == 1 and "do not retry" in body["errors"][0]["reason"]
    else:
        assert "retry the request" in body["error"] and answer.headers["retry-after"] == str(collector.RETRY_AFTER_S)


def test_a_request_kafka_does_not_answer_gets_503_with_retry_after_and_its_sends_stand(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka away: the producer keeps the batch (engine.kafka_producer), the request is answered in bounded time
    and its delivery futures are not cancelled (what Kafka takes later is applied once, by event id)."""
    class Silent(_FakeProducer):
        kept: list[asyncio.Future[Any]]

        async def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> asyncio.Future[Any]:
            fut = await super().send(topic, value, key, headers)
            if self.sent > 1:  # the first is acknowledged, the second never answered
                fut = asyncio.get_running_loop().create_future()
                self.kept.append(fut)
            return fut

    monkeypatch.setattr(collector, "PUBLISH_TIMEOUT_S", 0.05)
    items = [ev(), {**ev(), "event_id": "e-2"}]
    ready, _ = collector.validate(items, L, time.time())
    producer = Silent({})
    producer.kept = []
    answer = asyncio.run(collector.publish(_Svc(producer), items, ready, []))  # type: ignore[arg-type]
    body = orjson.loads(answer.body)
    assert answer.status_code == 503 and answer.headers["retry-after"] == str(collector.RETRY_AFTER_S)
    assert body["delivered"] == ["e-1"] and "within" in body["error"]
    assert len(producer.kept) == 1 and not producer.kept[0].cancelled()
