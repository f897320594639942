"""The Segment/RudderStack HTTP API on the real API, Kafka, worker and Redis: the official Python SDKs from the
package registry, with only their host and write key set, update profiles; the single-call routes take the
calls as Segment's HTTP API documents them; the door's bounds answer 4xx with why; malformed messages and
types a browser key may not send are dead-lettered without failing the batch."""

from __future__ import annotations

import base64
import gzip
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from engine import trust
from tests.support import PUBLIC, SERVER, TEST_KEYS, Stack, profile_of, read_topic, wait_until, without_key

pytestmark = pytest.mark.integration


def basic(role: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{TEST_KEYS[role]}:".encode()).decode()}


def topic_records(stack: Stack, topic: str, visitor: str, n: int, timeout: float = 60) -> list[Any]:
    got = read_topic(stack.bootstrap, topic, lambda ms: len(ms) >= n, timeout=timeout,
                     keep=lambda m: m.key == visitor.encode())
    assert len(got) >= n, f"{len(got)} records of {visitor} on {topic}, expected {n}"
    return got


def test_the_segment_python_sdk_updates_profiles(stack: Stack, worker: object, api: str) -> None:
    from segment.analytics import Client

    anon, customer = f"anon-seg-{uuid.uuid4().hex[:6]}", f"cust-seg-{uuid.uuid4().hex[:6]}"
    errors: list[Any] = []
    client = Client(TEST_KEYS[SERVER], host=without_key(api),
                    on_error=lambda e, batch: errors.append(e))  # only to see errors: the SDK's defaults
    client.page(anonymous_id=anon, category="shoes", name="Trail Runner 2",
                properties={"url": "https://shop.test/p/trail-runner-2"})
    client.track(anonymous_id=anon, event="Product Added",
                 properties={"product_id": "sku-trail-2", "category": "shoes", "price": 119.0, "quantity": 2})
    client.track(anonymous_id=anon, event="Video Played", properties={"video_id": "v-1"})
    client.flush()
    wait_until(lambda: profile_of(stack.redis_url, anon, customer=False).counts.get("track") == 1, timeout=60,
               what="the anonymous profile to count the page, the cart and the generic track event")
    # identify (a server key: trusted) merges the anonymous history into the customer; then an order
    client.identify(user_id=customer, anonymous_id=anon, traits={"plan": "gold"})
    client.track(user_id=customer, event="Order Completed", properties={
        "order_id": "o-1", "total": 238.0, "currency": "eur",
        "products": [{"product_id": "sku-trail-2", "price": 119.0, "quantity": 2}]})
    client.flush()
    profile = wait_until(lambda: (lambda p: p if p.counts.get("purchase") == 1 else None)(
        profile_of(stack.redis_url, customer, customer=True)), timeout=60, what="the customer's purchase")
    assert not errors, errors
    assert profile.counts["page_view"] == 1 and profile.counts["add_to_cart"] == 1
    assert profile.counts["track"] == 1 and profile.counts["identify"] == 1
    assert profile.monetary == 238.0
    # the SDK sent them in batches to /v1/batch, with the server key's trust
    records = topic_records(stack, stack.events_topic, customer, 2)
    assert {dict(r.headers)[trust.SOURCE_HEADER] for r in records} == {b"server"}


def test_the_rudderstack_python_sdk_with_a_public_key(stack: Stack, worker: object, api: str) -> None:
    from rudderstack.analytics.client import Client

    anon = f"anon-rs-{uuid.uuid4().hex[:6]}"
    errors: list[Any] = []
    # gzip is the RudderStack SDK's default
    client = Client(TEST_KEYS[PUBLIC], host=without_key(api),
                    on_error=lambda e, batch: errors.append(e))  # only to see errors: the SDK's defaults
    assert client.gzip is True
    client.page(anonymous_id=anon, name="Home", properties={"url": "https://shop.test/"})
    client.track(anonymous_id=anon, event="Product Viewed", properties={"product_id": "sku-hat-1",
                                                                        "category": "hats"})
    client.track(anonymous_id=anon, event="Promotion Viewed", properties={
        "promotion_id": "promo-sun-hats", "position": "home_hero", "decision_id": "dec-1"})
    client.track(anonymous_id=anon, event="Wishlist Shared", properties={"wishlist_id": "w-1"})
    # a browser key may not send purchases: dead-lettered, the rest of the batch goes on
    client.track(anonymous_id=anon, event="Order Completed", properties={"order_id": "o-9", "total": 5.0})
    # a browser's identify links nothing without a proof: recorded on the anonymous id
    client.identify(user_id=f"cust-rs-{uuid.uuid4().hex[:6]}", anonymous_id=anon, traits={"x": 1})
    client.flush()
    profile = wait_until(lambda: (lambda p: p if p.counts.get("identify") == 1 else None)(
        profile_of(stack.redis_url, anon, customer=False)), timeout=60, what="the anonymous profile")
    assert not errors, errors
    assert profile.counts["page_view"] == 2 and profile.counts["impression"] == 1 and profile.counts["track"] == 1
    assert "purchase" not in profile.counts and profile.monetary == 0.0
    letters = topic_records(stack, stack.dlq_topic, anon, 1)
    headers = dict(letters[0].headers)
    assert headers["dlq.stage"] == b"api" and headers["dlq.source"] == b"api:/v1/batch"
    assert headers[trust.SOURCE_HEADER] == b"public"
    assert headers["dlq.reason"].startswith(b"type: a purchase needs a server key")
    assert orjson.loads(letters[0].value)["event"] == "Order Completed"
    events = topic_records(stack, stack.events_topic, anon, 4)  # the identify is keyed by its customer id
    assert {dict(r.headers)[trust.SOURCE_HEADER] for r in events} == {b"public"}
    impression = next(orjson.loads(r.value) for r in events if orjson.loads(r.value)["type"] == "impression")
    assert impression["properties"] == {"action_id": "promo-sun-hats", "placement": "home_hero",
                                        "decision_id": "dec-1"}


def test_single_call_routes_as_segments_http_api_documents_them(stack: Stack, worker: object, api: str) -> None:
    base, anon, customer = without_key(api), f"anon-http-{uuid.uuid4().hex[:6]}", f"cust-http-{uuid.uuid4().hex[:6]}"
    now = time.time()
    calls = [
        ("/v1/page", {"anonymousId": anon, "name": "Shoes", "properties": {"url": "https://shop.test/shoes"}}),
        ("/v1/screen", {"anonymousId": anon, "name": "Cart"}),
        ("/v1/track", {"anonymousId": anon, "event": "Product List Viewed",
                       "properties": {"category": "shoes", "products": [{"product_id": "sku-1"}]}}),
        ("/v1/alias", {"previousId": anon, "userId": customer}),
        ("/v1/identify", {"userId": customer, "traits": {"plan": "pro"}}),
        ("/v1/group", {"userId": customer, "groupId": "acme", "traits": {"employees": 40}}),
    ]
    for path, call in calls:
        r = httpx.post(base + path, json=call, headers=basic(SERVER), timeout=10)
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert body["success"] is True and body["accepted"] == 1 and body["dead_lettered"] == [], (path, body)
    customer_profile = wait_until(lambda: (lambda p: p if p.counts.get("track") == 1 and p.counts.get(
        "page_view") == 3 else None)(profile_of(stack.redis_url, customer, customer=True)), timeout=60,
        what="the page, screen and list views merged into the customer by alias, and the group call")
    assert customer_profile.counts["identify"] >= 1
    # no messageId: one is derived from the content, so that a resend is the same event
    other = {"anonymousId": f"anon-resend-{uuid.uuid4().hex[:6]}", "name": "Home"}
    ids = [httpx.post(base + "/v1/page", json=other, headers=basic(SERVER)).json()["event_ids"] for _ in range(2)]
    assert ids[0] == ids[1] and ids[0][0].startswith("pulse-")
    # analytics.js: text/plain, the write key in the body; a client clock an hour slow is corrected
    browser, slow = f"anon-ajs-{uuid.uuid4().hex[:6]}", now - 3600
    r = httpx.post(base + "/v1/batch", headers={"Content-Type": "text/plain"}, content=orjson.dumps({
        "writeKey": TEST_KEYS[PUBLIC], "sentAt": iso(slow),
        "batch": [{"type": "track", "event": "Coupon Applied", "anonymousId": browser, "messageId": "m-" + browser,
                   "timestamp": iso(slow - 2), "properties": {"coupon": "SPRING"}}]}))
    assert r.status_code == 200, r.text
    coupon = orjson.loads(topic_records(stack, stack.events_topic, browser, 1)[0].value)
    assert coupon["type"] == "track" and coupon["properties"]["event"] == "Coupon Applied"
    assert abs(coupon["timestamp"] / 1000 - (now - 2)) < 60, "the client's clock was not corrected"
    wait_until(lambda: profile_of(stack.redis_url, browser, customer=False).counts.get("track") == 1, timeout=60,
               what="the generic track event counted")


def iso(ts: float) -> str:
    from serving.segment_api import iso as to_iso

    return to_iso(ts)


def test_the_door_bounds_answer_why(stack: Stack, api: str) -> None:
    base, anon = without_key(api), f"anon-door-{uuid.uuid4().hex[:6]}"
    url = base + "/v1/batch"

    def post(content: bytes, headers: dict[str, str] | None = None, role: str = SERVER) -> httpx.Response:
        return httpx.post(url, content=content, headers={**basic(role), "Content-Type": "application/json",
                                                         **(headers or {})}, timeout=10)

    r = post(b"{not json")
    assert (r.status_code, r.json()["code"]) == (400, "invalid_json") and "not valid JSON" in r.json()["message"]
    r = post(orjson.dumps([{"type": "page"}]))
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request")
    r = post(orjson.dumps({"batch": [{"type": "page", "anonymousId": anon}] * 501}))
    assert r.status_code == 400 and r.json()["message"] == "batch: at most 500 messages per request, got 501"
    r = post(b'{"batch": [' + b" " * (1 << 20) + b"]}")
    assert r.status_code == 413 and "larger than 1048576 bytes" in r.json()["message"]
    bomb = gzip.compress(b'{"batch": [' + b" " * (8 << 20) + b"]}")  # 8 MiB inflated from a few KiB
    assert len(bomb) < 64 << 10
    r = post(bomb, {"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "once decompressed" in r.json()["message"]
    r = post(b"{}", {"Content-Encoding": "br"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_encoding"
    r = httpx.post(url, json={"batch": []}, timeout=10)
    assert r.status_code == 401 and r.json()["required_role"] == PUBLIC
    r = httpx.post(url, json={"batch": [], "writeKey": "not-a-key"}, timeout=10)
    assert r.status_code == 401
    # malformed messages never fail a batch: dead-lettered with why, the good ones published
    good = {"type": "page", "anonymousId": anon, "messageId": f"good-{anon}", "timestamp": iso(time.time())}
    r = post(gzip.compress(orjson.dumps({"batch": [
        good, "not an object", {"type": "track", "anonymousId": anon, "messageId": f"bad-{anon}", "event": 7},
        {"type": "page", "anonymousId": anon, "messageId": f"late-{anon}", "timestamp": "2999-01-01T00:00:00Z"},
        {"type": "track", "anonymousId": anon, "messageId": f"big-{anon}", "event": "Big",  # 300 kB
         "properties": {f"p{i}": {f"q{j}": "x" * 1000 for j in range(60)} for i in range(5)}}]})),
        {"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["event_ids"] == [f"good-{anon}"]
    reasons = {d["index"]: d["reason"] for d in body["dead_lettered"]}
    assert reasons[1] == "message: must be a JSON object, got a string"
    assert reasons[2].startswith("event: the name of a Segment track call must be a non-empty string")
    assert reasons[3].startswith("timestamp: 2999-01-01T00:00:00Z is ")
    assert reasons[4].startswith("event: ") and "bytes once serialised, at most 262144" in reasons[4]
    letters = topic_records(stack, stack.dlq_topic, anon, 3)
    assert {dict(m.headers)["dlq.reason"].decode() for m in letters} == {reasons[2], reasons[3], reasons[4]}
