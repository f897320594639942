"""The contact policy on the real worker, API, Kafka and Redis (issue 17, items 3-4; docs/contact-policy.md):
frequency caps in calendar periods of the customer's time zone, suppression (purchased, in the cart), the
dismissal cool-down, a capped channel giving way to the next, and "nothing now" with its reason, logged on the
decisions topic and counted per arm. ``config/engine.toml``'s ``[contact_policy]``: 3 impressions of an action a
day, email 1 a day, push 3 a week, 5 contacts a week over every channel but web, a 72 h cool-down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from engine import timing
from engine.config import load_config
from tests.support import CONFIG_PATH, Stack, event, produce, profile_of, read_topic, wait_until

pytestmark = pytest.mark.integration

CONFIG = load_config(CONFIG_PATH)
POLICY = CONFIG.contact_policy
ZONES = ["Pacific/Honolulu", "America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Paris",
         "Asia/Kolkata", "Asia/Tokyo", "Pacific/Auckland", "Pacific/Kiritimati"]
HOME = ["promo-running-shoes", "promo-winter-jackets", "promo-bestseller-books", "promo-headphones"]


def decide(api: str, customer: str, placement: str = "home_hero", **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{api}/v1/decide", json={"customer_id": customer, "placement": placement, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def shown(answer: dict[str, Any]) -> list[str]:
    return [a["action_id"] for a in answer["actions"]]


def excluded(answer: dict[str, Any]) -> dict[str, str]:
    return {c["action_id"]: c["excluded_by"] for c in answer["explanation"]["candidates"] if not c["eligible"]}


def new_customer(prefix: str) -> str:
    return f"cust-{prefix}-{uuid.uuid4().hex[:8]}"


def applied(redis_url: str, customer: str, check: Callable[[Any], bool], what: str) -> None:
    wait_until(lambda: check(profile_of(redis_url, customer, customer=True)), timeout=60, what=what)


def impressions(customer: str, action: str, n: int, ts_ms: int, channel: str = "web") -> list[dict[str, Any]]:
    return [event("impression", customer, customer=True, action_id=action, channel=channel, placement="home_hero",
                  ts_ms=ts_ms + i) for i in range(n)]


def test_a_capped_action_is_absent_today_and_back_in_the_next_local_day(stack: Stack, worker: object, api: str,
                                                                        redis_url: str) -> None:
    assert POLICY.action_caps.day == 3
    customer = new_customer("cap")
    now = time.time()
    # three impressions 12 hours ago: today where the local day began more than 12 hours ago, yesterday where
    # it began less (the zones span 24 hours, so both exist at any moment)
    hour = {z: datetime.fromtimestamp(now, timing.zone(z)).hour for z in ZONES}
    today_zone = next(z for z, h in hour.items() if h >= 13)
    next_day_zone = next(z for z, h in hour.items() if h < 11)
    produce(stack.bootstrap, stack.events_topic, impressions(customer, "promo-running-shoes", 3,
                                                             int((now - 12 * 3600) * 1000)))
    applied(redis_url, customer, lambda p: p.raw.get("X:promo-running-shoes", "").startswith("3,"),
            "the impressions")
    capped = decide(api, customer, candidates=HOME, explain=True, context={"timezone": today_zone})
    assert "promo-running-shoes" not in shown(capped) and shown(capped), capped
    assert excluded(capped)["promo-running-shoes"] == "cap: 3/day reached"
    back = decide(api, customer, candidates=HOME, explain=True, context={"timezone": next_day_zone})
    assert "promo-running-shoes" in shown(back), back  # a new day there: the cap counts again from 0
    # alone among the candidates and capped: nothing now, reason "capped"
    alone = decide(api, customer, candidates=["promo-running-shoes"], context={"timezone": today_zone})
    assert alone["actions"] == [] and alone["reason"] == "capped", alone


def test_purchased_and_in_cart_items_and_a_dismissal_are_suppressed(stack: Stack, worker: object, api: str,
                                                                     redis_url: str) -> None:
    customer = new_customer("supp")
    now_ms = int(time.time() * 1000)
    events = [
        event("purchase", customer, customer=True, order_id=uuid.uuid4().hex, value=120.0,
              items=[{"item_id": "sku-jacket-1"}]),
        event("add_to_cart", customer, customer=True, item_id="sku-book-1", category="books"),
        event("feedback", customer, customer=True, decision_id=uuid.uuid4().hex, action_id="promo-headphones",
              kind="dismiss", ts_ms=now_ms - 2 * 3600 * 1000),
        # dismissed four days ago: the 72 h cool-down is over
        event("feedback", customer, customer=True, decision_id=uuid.uuid4().hex, action_id="promo-running-shoes",
              kind="dismiss", ts_ms=now_ms - 4 * 86400 * 1000),
    ]
    produce(stack.bootstrap, stack.events_topic, events)
    applied(redis_url, customer, lambda p: "X:promo-running-shoes" in p.raw and "C:sku-book-1" in p.raw
            and "P:sku-jacket-1" in p.raw, "the purchase, cart and dismissals")
    answer = decide(api, customer, candidates=HOME, explain=True)
    out = excluded(answer)
    assert out == {"promo-winter-jackets": "suppressed: purchased",
                   "promo-bestseller-books": "suppressed: in the cart",
                   "promo-headphones": "cooldown: dismissed 2h ago"}, answer
    assert shown(answer) == ["promo-running-shoes"]
    nothing = decide(api, customer, candidates=["promo-winter-jackets", "promo-headphones"])
    assert nothing["actions"] == [] and nothing["reason"] == "all_suppressed", nothing


def test_a_capped_channel_gives_way_to_the_next_and_pressure_means_nothing_now(stack: Stack, worker: object,
                                                                              api: str, redis_url: str) -> None:
    customer = new_customer("chan")
    produce(stack.bootstrap, stack.events_topic, [event("consent", customer, customer=True, marketing={"web": False})])
    applied(redis_url, customer, lambda p: p.consent.get("marketing_web") is False, "the consent")
    ask: dict[str, Any] = {"placement": "next_best_action", "candidates": ["nba-running-shoes"],
                           "context": {"timezone": "UTC"}}
    first = decide(api, customer, **ask)["actions"][0]["channel"]
    assert first in ("email", "push")  # its channels are web, email and push; web is not allowed
    other = "push" if first == "email" else "email"
    # the chosen channel capped today (email: 1 a day, push: 3 a week): the next one is chosen
    n_first = 1 if first == "email" else 3
    now_ms = int(time.time() * 1000)
    produce(stack.bootstrap, stack.events_topic, impressions(customer, "nba-newsletter", n_first, now_ms, first))
    applied(redis_url, customer, lambda p: p.raw.get(f"Y:{first}", "").count(",") == 1 + n_first, "the impressions")
    answer = decide(api, customer, explain=True, **ask)
    assert answer["actions"][0]["channel"] == other, answer
    # the other one capped too, for 5 contacts this week over the channels but web: the contact pressure's limit
    n_other = 5 - n_first
    produce(stack.bootstrap, stack.events_topic, impressions(customer, "nba-vip-preview", n_other, now_ms, other))
    applied(redis_url, customer, lambda p: p.raw.get(f"Y:{other}", "").count(",") == 1 + n_other, "the others")
    capped = decide(api, customer, explain=True, **ask)
    assert capped["actions"] == [] and capped["reason"] == "capped", capped
    why = excluded(capped)["nba-running-shoes"]
    assert "cap: email 1/day reached" in why and "cap: push 3/week reached" in why, why
    # sms is capped at 1 a week and was never used, but 5 contacts a week is the limit over all of them
    answer = decide(api, customer, explain=True, **{**ask, "candidates": ["nba-app-install"]})  # web or sms
    assert answer["actions"] == [] and answer["reason"] == "contact_pressure", answer
    assert "contact pressure: 5/week reached" in excluded(answer)["nba-app-install"]
    # "nothing now" is a decision: logged with its reason, counted per arm by the reward join
    wanted = {answer["decision_id"], capped["decision_id"]}
    records = read_topic(stack.bootstrap, stack.decisions_topic,
                         lambda got: {orjson.loads(m.value)["decision_id"] for m in got} >= wanted,
                         keep=lambda m: orjson.loads(m.value)["decision_id"] in wanted)
    logged = {r["decision_id"]: r for r in (orjson.loads(m.value) for m in records)}
    assert logged.keys() == wanted
    assert logged[answer["decision_id"]]["actions"] == [] and logged[answer["decision_id"]]["reason"] == \
        "contact_pressure"
    assert logged[capped["decision_id"]]["reason"] == "capped"

    def nothing_now() -> float:
        arms = httpx.get(f"{api}/v1/experiments/next_best_action").json()["arms"]
        return sum(a.get("nothing_now", 0.0) for a in arms.values())

    wait_until(lambda: nothing_now() >= 2, timeout=60, what="the nothing-now decisions counted per arm")


def test_shown_decisions_are_the_ctr_denominator(stack: Stack, worker: object, api: str, redis_url: str) -> None:
    customer = new_customer("ctr")
    produce(stack.bootstrap, stack.events_topic, [event("page_view", customer, customer=True, category="shoes")])
    applied(redis_url, customer, lambda p: p.exists, "the profile")

    def arms() -> dict[str, Any]:
        return dict(httpx.get(f"{api}/v1/experiments/home_hero").json()["arms"])

    before = sum(a.get("shown", 0.0) for a in arms().values())
    answer = decide(api, customer, candidates=HOME)
    impression = event("impression", customer, customer=True, action_id=answer["actions"][0]["action_id"],
                       placement="home_hero", decision_id=answer["decision_id"])
    # the same decision shown again (a re-render) and the same event sent twice: one decision shown
    again = event("impression", customer, customer=True, action_id=answer["actions"][0]["action_id"],
                  placement="home_hero", decision_id=answer["decision_id"])
    produce(stack.bootstrap, stack.events_topic, [impression, impression, again])
    wait_until(lambda: sum(a.get("shown", 0.0) for a in arms().values()) >= before + 1, timeout=60,
               what="the impression counted as shown")
    # a marker decision's impression after them, on the same partition (the customer's key): once it is
    # counted, the three before it have been applied
    marker = decide(api, customer, candidates=HOME)
    produce(stack.bootstrap, stack.events_topic, [event(
        "impression", customer, customer=True, action_id=marker["actions"][0]["action_id"], placement="home_hero",
        decision_id=marker["decision_id"])])
    wait_until(lambda: sum(a.get("shown", 0.0) for a in arms().values()) >= before + 2, timeout=60,
               what="the marker impression counted")
    assert sum(a.get("shown", 0.0) for a in arms().values()) == before + 2
    arm = next(a for a in arms().values() if a.get("shown"))
    assert arm["ctr_denominator"] == "shown" and arm["ctr"] == arm["clicks"] / arm["shown"]
