"""Both doors refuse what the stream cannot take, for the same reason: the collector with a 4xx naming the event
and the field, the worker (events produced straight to the topic) with a dead letter carrying that reason."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from schemas.limits import DEFAULT_LIMITS as L
from tests.integration.test_isolation import dead_letters
from tests.support import Stack, event, produce, profile_of, wait_until

pytestmark = pytest.mark.integration


def members(n: int, value: Any) -> dict[str, Any]:
    return {f"p{i}": value for i in range(n)}


def bad_events(visitor: str) -> list[dict[str, Any]]:
    """One event per bound, each refused for one reason."""
    now = int(time.time() * 1000)
    future = event("page_view", visitor, category="a")
    future["timestamp"] = now + int(L.max_future_s * 1000) + 600_000
    old = event("page_view", visitor, category="a")
    old["timestamp"] = "1999-12-31T23:59:59Z"
    return [
        event("page_view", visitor, items=1),
        event("page_view", visitor, item_id="x" * (L.max_item_id_chars + 1)),
        event("click", visitor, decision_id=42),
        event("purchase", visitor, order_id="o", value=float("1e13")),
        event("add_to_cart", visitor, item_id="i", quantity=L.max_quantity + 1),
        event("page_view", visitor, custom={"a": [{"too": "deep"}]}),
        event("page_view", visitor, **members(L.max_members + 1, 1)),
        event("purchase", visitor, order_id="o", value=1.0, items=[{"item_id": "i"}] * (L.max_line_items + 1)),
        future,
        old,
        {**event("page_view", visitor), "unknown": 1},
    ]


def test_the_collector_refuses_each_bad_event_naming_it_and_the_worker_dead_letters_it_for_the_same_reason(
    stack: Stack, worker: object, api: str
) -> None:
    visitor = f"lim-{uuid.uuid4().hex[:6]}"
    bad = bad_events(visitor)
    with httpx.Client(base_url=api, timeout=30) as client:
        for ev in bad:  # one per request, after a good one: the request is refused whole
            good = event("page_view", visitor, category="ok")
            r = client.post("/v1/events", json=[good, ev])
            assert r.status_code == 422, (ev, r.text)
            [error] = r.json()["errors"]
            assert error["index"] == 1 and error["event_id"] == ev["event_id"] and error["field"]
            assert error["reason"].startswith(error["field"] + ": ")
            ev["_reason"] = error["reason"]
    reasons = {ev["event_id"]: ev.pop("_reason") for ev in bad}
    assert profile_of(stack.redis_url, visitor).counts == {}  # none of the good ones either

    produce(stack.bootstrap, stack.events_topic, bad)  # the other door: straight to the topic
    letters = {orjson.loads(m.value)["event_id"]: dict(m.headers)
               for m in dead_letters(stack.bootstrap, stack.dlq_topic, len(bad), timeout=60)}
    assert set(letters) == set(reasons)
    for event_id, headers in letters.items():
        assert headers["dlq.stage"] == b"validate"
        worker_reason, collector_reason = headers["dlq.reason"].decode(), reasons[event_id]
        if collector_reason.startswith("timestamp:") and "after" in collector_reason:  # the seconds moved on
            worker_reason, collector_reason = worker_reason.split(" is ")[0], collector_reason.split(" is ")[0]
        assert worker_reason == collector_reason

    sentinel = event("page_view", visitor, category="ok")
    with httpx.Client(base_url=api, timeout=30) as client:
        assert client.post("/v1/events", json=sentinel).status_code == 202
    wait_until(lambda: profile_of(stack.redis_url, visitor).counts == {"page_view": 1}, timeout=30,
               what="the sentinel")


def test_an_event_too_large_for_the_stream_is_refused_at_both_doors(stack: Stack, worker: object, api: str) -> None:
    visitor = f"big-{uuid.uuid4().hex[:6]}"
    # within every schema bound, but over max_event_bytes once serialised
    big = event("page_view", visitor, **members(L.max_members, "x" * L.max_text_chars))
    big["context"] = {f"c{i}": ["y" * L.max_text_chars] * 4 for i in range(L.max_members)}
    assert len(orjson.dumps(big)) > L.max_event_bytes
    with httpx.Client(base_url=api, timeout=30) as client:
        r = client.post("/v1/events", json=big)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "event", r.text
    produce(stack.bootstrap, stack.events_topic, [big])
    letter = dead_letter_of(stack, big["event_id"])
    assert letter["dlq.stage"] == b"validate"
    assert letter["dlq.reason"] == f"event: {len(orjson.dumps(big))} bytes once serialised, at most 262144".encode()


def dead_letter_of(stack: Stack, event_id: str, timeout: float = 60.0) -> dict[str, bytes]:
    """The headers of the dead letter of ``event_id`` (waiting for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in dead_letters(stack.bootstrap, stack.dlq_topic, 10**9, timeout=2.0):
            if orjson.loads(m.value).get("event_id") == event_id:
                return dict(m.headers)
    raise AssertionError(f"no dead letter for {event_id}")


def test_bodies_over_the_limit_are_refused_while_read_and_counts_before_validation(api: str) -> None:
    limit = L.max_body_bytes
    with httpx.Client(base_url=api, timeout=30) as client:
        # declared too large: answered before the body is read
        r = client.post("/v1/events", content=b"[" + b" " * limit + b"]",
                        headers={"content-type": "application/json"})
        assert r.status_code == 413 and "larger than 1048576 bytes" in r.json()["error"]

        # no declared length (chunked): refused once the bytes read pass the limit
        def chunks() -> Any:
            yield b"["
            for _ in range(limit // 65536 + 2):
                yield b" " * 65536
            yield b"]"
        r = client.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413

        r = client.post("/v1/events", json=[{}] * (L.max_events_per_request + 1))
        assert r.status_code == 400 and r.json()["error"].startswith("body: at most 500 events per request")
        r = client.post("/v1/events", json={"batch": [event("page_view", "x")], "unknown": True})
        assert r.status_code == 400 and r.json()["error"].startswith("unknown: unknown member of a batch body")


def test_decide_refuses_what_would_make_it_work_for_nothing(api: str) -> None:
    with httpx.Client(base_url=api, timeout=30) as client:
        ok = client.post("/v1/decide", json={"anonymous_id": "a", "placement": "home_hero", "n": 95.0,
                                             "candidates": [], "context": {"segment": None}})
        assert ok.status_code == 200 and ok.json()["actions"] == [], ok.text
        r = client.post("/v1/decide", json={"placement": "home_hero",
                                            "candidates": ["promo-winter-jackets", "promo-winter-jackets"]})
        assert r.status_code == 400 and "is repeated" in r.json()["error"]
        big = {"placement": "home_hero", "context": {"segment": "x" * 70_000}}
        r = client.post("/v1/decide", json=big)
        assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["error"]
