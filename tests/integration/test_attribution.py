"""Attribution end to end on a real broker, Redis, worker and API: a scripted sequence of impressions, clicks,
purchases and a goal across two actions and two channels, whose credit per model is computed by hand below;
a redelivered purchase is not counted twice; the holdout lift and its interval; the decision record gives a
touch its placement; export and erasure cover the touch list."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.decisions import CONTROL_ARM, LEARNING_ARM, holdout_arm
from engine.layout import (
    ATTRIBUTION_SHARDS,
    anonymous_subject,
    attribution_counters_key,
    decision_key,
    touches_key,
)
from infra import local
from tests.support import (
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce,
    redis_client,
    wait_http_ready,
    wait_until,
    with_key,
    worker_process,
)

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).parent / "config" / "attribution.toml")
A, B = "promo-running-shoes", "promo-winter-jackets"  # home_hero, no holdout: every touch is on the learning arm
REC = "rec-shoe-1"  # product_recs: 10% of visitors on the control arm


@pytest.fixture(scope="module")
def astack(kafka: local.KafkaService, redis_url: str) -> Stack:
    s = Stack(kafka.bootstrap, redis_url)
    s.create_topics()
    return s


@pytest.fixture(scope="module")
def aworker(astack: Stack, log_dir: Path) -> Iterator[object]:
    proc = worker_process(astack, log_dir, name=f"attr-worker-{astack.tag}", ENGINE_CONFIG=CONFIG).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def aapi(astack: Stack, log_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = api_process(astack, log_dir, port, ENGINE_CONFIG=CONFIG, **keys_env()).start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base, proc)
    yield with_key(base)
    proc.stop()


def touch(kind: str, visitor: str, action: str, channel: str, ts_ms: int, placement: str | None = "home_hero",
          **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"action_id": action, "channel": channel, **extra}
    if placement is not None:
        props["placement"] = placement
    e = event(kind, visitor, ts_ms=ts_ms, **props)
    if kind == "click":  # a click's channel comes from the context (its schema has no channel property)
        del e["properties"]["channel"]
        e["context"]["channel"] = channel
    return e


def purchase(visitor: str, value: float, ts_ms: int) -> dict[str, Any]:
    return event("purchase", visitor, ts_ms=ts_ms, order_id=f"o-{uuid.uuid4().hex[:8]}", value=value)


def visitors_in(arm: str, n: int, tag: str) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < n:
        v = f"anon-attr-{tag}-{arm}-{i}"
        if holdout_arm(v, "product_recs", 0.1) == arm:
            out.append(v)
        i += 1
    return out


def by(entries: list[dict[str, Any]], **names: str) -> dict[str, Any]:
    hits = [e for e in entries if all(e[k] == v for k, v in names.items())]
    assert len(hits) == 1, (names, entries)
    return hits[0]


def test_credit_per_model_matches_the_hand_computed_scenario(astack: Stack, aworker: object, aapi: str) -> None:
    tag = uuid.uuid4().hex[:6]
    p1, p2, p3, p4 = (f"anon-attr-{tag}-{i}" for i in range(1, 5))
    now = int(time.time() * 1000) - 60_000
    dup = purchase(p1, 100.0, now + 3000)
    learning, control = visitors_in(LEARNING_ARM, 2, tag), visitors_in(CONTROL_ARM, 2, tag)
    events = [
        # p1: three touches (A web, B email, a click on B by email), then a purchase of 100
        touch("impression", p1, A, "web", now), touch("impression", p1, B, "email", now + 1000),
        touch("click", p1, B, "email", now + 2000), dup,
        # p2: B web, A email, a purchase of 50, then a goal (add_to_cart: a conversion without revenue)
        touch("impression", p2, B, "web", now), touch("impression", p2, A, "email", now + 1000),
        purchase(p2, 50.0, now + 2000),
        event("add_to_cart", p2, ts_ms=now + 3000, item_id="sku-1", quantity=1),
        # p3: a purchase with no touch; p4: a touch two hours before, outside the one-hour window
        purchase(p3, 30.0, now),
        touch("impression", p4, A, "web", now - 2 * 3_600_000), purchase(p4, 20.0, now),
        # the holdout: both learning visitors buy 10, one of the two control visitors does
        *[touch("impression", v, REC, "app", now, placement="product_recs") for v in learning + control],
        *[purchase(v, 10.0, now + 1000) for v in [*learning, control[0]]],
        # p1's purchase redelivered (same event id), then a last touch after it that says p1 is done
        dup, touch("impression", p1, B, "sms", now + 4000),
    ]
    r = redis_client(astack.redis_url, decode_responses=True)
    # the counters are global: start from none (other modules' workers, with attribution on, are stopped)
    r.delete(*(attribution_counters_key(i) for i in range(ATTRIBUTION_SHARDS)))
    produce(astack.bootstrap, astack.events_topic, events)

    def report() -> dict[str, Any]:
        r = httpx.get(f"{aapi}/v1/reports/attribution", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def done() -> dict[str, Any] | None:
        doc = report()
        sms = [c for c in doc["channels"] if c["channel"] == "sms"]
        return doc if doc["totals"]["conversions"] >= 8 and sms and sms[0]["impressions"] == 1 else None

    doc = wait_until(done, timeout=90, what="the attribution counters")
    assert doc["enabled"] and doc["window_hours"] == 1 and doc["goals"] == ["purchase", "add_to_cart"]
    # 8 conversions: p1, p2 (purchase and goal), p3, p4, three in the holdout; p1's redelivery not counted
    assert doc["totals"] == {"conversions": 8.0, "revenue": 230.0, "unattributed_conversions": 2.0,
                             "unattributed_revenue": 50.0}

    rows = doc["rows"]

    def row(action: str, channel: str, placement: str = "home_hero") -> dict[str, Any]:
        return by(rows, action=action, channel=channel, placement=placement)

    # impressions and clicks per row
    assert [(row(a, c)["impressions"], row(a, c)["clicks"]) for a, c in
            ((A, "web"), (B, "email"), (B, "web"), (A, "email"), (B, "sms"))] == [
        (2, 0), (1, 1), (1, 0), (1, 0), (1, 0)]
    # expected credit, by hand. p1's touches: [A web, B email, B email (click)]; p2's: [B web, A email] for
    # its purchase (50) and for its goal (no revenue); p4's touch is outside the window.
    expected: dict[str, dict[tuple[str, str], tuple[float, float]]] = {
        "last_touch": {(A, "web"): (0, 0), (B, "email"): (1, 100), (B, "web"): (0, 0), (A, "email"): (2, 50)},
        "linear": {(A, "web"): (1 / 3, 100 / 3), (B, "email"): (2 / 3, 200 / 3), (B, "web"): (1, 25),
                   (A, "email"): (1, 25)},
        # 40/20/40 over three touches (the middle and the last are both B email); 50/50 over two
        "position_based": {(A, "web"): (0.4, 40), (B, "email"): (0.6, 60), (B, "web"): (1, 25),
                           (A, "email"): (1, 25)},
    }
    for model, cells in expected.items():
        for (a, c), (conv, revenue) in cells.items():
            got = row(a, c)["models"][model]
            assert math.isclose(got["conversions"], conv, abs_tol=1e-6), (model, a, c, got)
            assert math.isclose(got["revenue"], revenue, abs_tol=1e-6), (model, a, c, got)
        assert row(B, "sms")["models"][model]["conversions"] == 0  # a touch after the last conversion
    # per action: A = 3 impressions, cost 3 x 0.5 (its own) + 1 email impression x 0.25 = 1.75
    a_entry, b_entry = by(doc["actions"], action=A), by(doc["actions"], action=B)
    assert (a_entry["impressions"], b_entry["impressions"], b_entry["clicks"]) == (3, 3, 1)
    assert math.isclose(a_entry["cost"], 1.75) and math.isclose(b_entry["cost"], 0.25)
    lin = a_entry["models"]["linear"]
    assert math.isclose(lin["revenue"], 100 / 3 + 25)
    assert math.isclose(lin["revenue_per_impression"], (100 / 3 + 25) / 3)
    assert math.isclose(lin["roi"], (100 / 3 + 25 - 1.75) / 1.75)
    assert math.isclose(b_entry["ctr"], 1 / 3)
    web = by(doc["channels"], channel="web")
    assert (web["impressions"], web["clicks"], web["cost"]) == (3, 0, 1.0)  # A's 2 x 0.5; B's web is free
    assert math.isclose(web["models"]["last_touch"]["conversions"], 0)
    email = by(doc["channels"], channel="email")
    assert (email["impressions"], email["clicks"], email["cost"]) == (2, 1, 1.0)  # A: 0.5 + 0.25, B: 0.25
    assert math.isclose(email["models"]["last_touch"]["revenue"], 150)

    # the holdout: learning converts 2 of 2 impressions, control 1 of 2 -> lift +100% for every model (one
    # touch each); delta-method interval of the ratio: var(log) = 0 + (0.5 x 0.5 / 2) / 0.5^2 = 0.5
    rec = by(doc["placements"], placement="product_recs")["models"]["last_touch"]
    lift = rec["lift"]
    assert (lift["learning_impressions"], lift["control_impressions"]) == (2, 2)
    half = 1.96 * math.sqrt(0.5)
    ci = [2 * math.exp(-half) - 1, 2 * math.exp(half) - 1]
    assert math.isclose(lift["conversion_rate_lift"], 1.0)
    assert all(math.isclose(g, e) for g, e in zip(lift["conversion_rate_lift_ci95"], ci, strict=True))
    # revenue per impression: learning 10 +- 0, control 5 with a variance of the mean of (50 - 25) / 2
    assert math.isclose(lift["revenue_per_impression_lift"], 1.0)
    assert all(math.isclose(g, e) for g, e in zip(lift["revenue_per_impression_lift_ci95"], ci, strict=True))
    assert by(doc["placements"], placement="home_hero")["models"]["linear"]["lift"]["conversion_rate_lift"] is None

    # export shows p1's touch list, erasure deletes it
    exported = httpx.get(f"{aapi}/v1/profiles/{p1}/export").json()
    assert [t[1:3] for t in exported["touches"][anonymous_subject(p1)]] == [
        [A, "web"], [B, "email"], [B, "email"], [B, "sms"]]
    assert r.exists(touches_key(anonymous_subject(p1)))
    assert httpx.delete(f"{aapi}/v1/profiles/{p1}").status_code == 200
    assert not r.exists(touches_key(anonymous_subject(p1)))


def test_a_touch_takes_its_placement_and_arm_from_the_decision_record(astack: Stack, aworker: object,
                                                                      aapi: str) -> None:
    visitor = f"anon-attr-dec-{uuid.uuid4().hex[:6]}"
    answer = httpx.post(f"{aapi}/v1/decide", json={"anonymous_id": visitor, "placement": "product_recs"})
    assert answer.status_code == 200, answer.text
    decision = answer.json()
    did, action = decision["decision_id"], decision["actions"][0]["action_id"]
    r = redis_client(astack.redis_url, decode_responses=True)
    wait_until(lambda: r.hexists(decision_key(did), "record"), timeout=60, what="the decision record")
    # no placement on the event: the record says product_recs, and which arm the visitor was on
    produce(astack.bootstrap, astack.events_topic, [
        touch("impression", visitor, action, "in_app", int(time.time() * 1000), placement=None, decision_id=did)])

    def counted() -> list[dict[str, Any]] | None:
        rows = httpx.get(f"{aapi}/v1/reports/attribution").json()["rows"]
        hits = [x for x in rows if x["channel"] == "in_app" and x["action"] == action]
        return hits or None

    hits = wait_until(counted, timeout=60, what="the in_app impression")
    assert [(h["placement"], h["impressions"]) for h in hits] == [("product_recs", 1)]
    arm = holdout_arm(visitor, "product_recs", 0.1)
    lift = hits[0]["models"]["linear"]["lift"]
    assert lift[f"{arm}_impressions"] == 1


def test_touches_seen_before_a_login_credit_the_customers_purchase(astack: Stack, aworker: object,
                                                                   aapi: str) -> None:
    tag = uuid.uuid4().hex[:6]
    anon, customer = f"anon-attr-login-{tag}", f"cust-attr-login-{tag}"
    now = int(time.time() * 1000)
    r = redis_client(astack.redis_url, decode_responses=True)

    def push_row() -> dict[str, Any] | None:
        rows = httpx.get(f"{aapi}/v1/reports/attribution").json()["rows"]
        hits = [x for x in rows if (x["action"], x["channel"], x["placement"]) == (B, "sms", "home_hero")]
        return hits[0] if hits else None

    before = push_row()
    base = before["models"]["last_touch"]["conversions"] if before else 0.0
    base_revenue = before["models"]["last_touch"]["revenue"] if before else 0.0
    # browsing anonymously: an impression; then a login (an identify produced by the site's back end: trusted)
    login = event("identify", anon, ts_ms=now + 1000)
    login["customer_id"] = customer
    produce(astack.bootstrap, astack.events_topic, [touch("impression", anon, B, "sms", now), login])
    # the anonymous id's touch moved to the customer's list (and only there)
    wait_until(lambda: r.exists(touches_key(f"c:{customer}")) and not r.exists(touches_key(anonymous_subject(anon))),
               timeout=60, what="the touches merged into the customer's")
    # a purchase as the customer credits the touch seen before the login, without counting the impression twice
    produce(astack.bootstrap, astack.events_topic,
            [event("purchase", customer, customer=True, ts_ms=now + 2000, order_id=f"o-{tag}", value=60.0)])
    row = wait_until(lambda: (lambda x: x if x and x["models"]["last_touch"]["conversions"] >= base + 1 else None)(
        push_row()), timeout=60, what="the customer's purchase credited")
    assert math.isclose(row["models"]["last_touch"]["conversions"], base + 1)
    assert math.isclose(row["models"]["last_touch"]["revenue"], base_revenue + 60.0)
    assert row["impressions"] == (before["impressions"] if before else 0) + 1
    exported = httpx.get(f"{aapi}/v1/profiles/{customer}/export").json()
    assert [t[1:3] for t in exported["touches"][f"c:{customer}"]] == [[B, "sms"]]
