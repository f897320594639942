"""Segments on the real stack: membership follows the visitor's events, and an action's audience decides who
sees it (config/engine.toml: ``has_cart``, and ``promo-free-shipping`` for its members only)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support import Stack, event, produce, wait_until

pytestmark = pytest.mark.integration

GATED = "promo-free-shipping"


def decide(api: str, visitor: str) -> dict:
    answer = httpx.post(f"{api}/v1/decide", json={"anonymous_id": visitor, "placement": "home_hero", "n": 20})
    assert answer.status_code == 200, answer.text
    return answer.json()


def shown(answer: dict) -> set[str]:
    return {a["action_id"] for a in answer["actions"]}


def test_an_audience_admits_members_only_and_membership_follows_events(
        stack: Stack, worker: object, api: str) -> None:
    shopper, browser = f"anon-seg-{uuid.uuid4().hex[:6]}", f"anon-seg-{uuid.uuid4().hex[:6]}"
    produce(stack.bootstrap, stack.events_topic, [event("page_view", browser, category="books")])
    produce(stack.bootstrap, stack.events_topic,
            # an item no action offers: the contact policy would leave an action of the cart's item out
            [event("page_view", shopper, category="shoes", item_id="sku-sock-9"),
             event("add_to_cart", shopper, category="shoes", item_id="sku-sock-9", quantity=1)])
    member = wait_until(lambda: (lambda a: a if "has_cart" in a["segments"] else None)(decide(api, shopper)),
                        timeout=60, what="the shopper to enter has_cart")
    assert GATED in shown(member) and member["personalised"] is True
    other = wait_until(lambda: (lambda a: a if a["personalised"] else None)(decide(api, browser)), timeout=60,
                       what="the browser's profile")
    assert other["segments"] == [] and GATED not in shown(other)
    assert len(other["actions"]) == len(member["actions"]) - 1  # everything else is still a candidate
    profile = httpx.get(f"{api}/v1/profiles/{shopper}").json()
    assert "has_cart" in profile["segments"]
    # a purchase empties the cart: the shopper leaves the segment and the action goes with it
    produce(stack.bootstrap, stack.events_topic,
            [event("purchase", shopper, order_id="ord-1", value=80.0,
                   items=[{"item_id": "sku-sock-9", "quantity": 1, "price": 80.0}])])
    left = wait_until(lambda: (lambda a: a if "has_cart" not in a["segments"] else None)(decide(api, shopper)),
                      timeout=60, what="the shopper to leave has_cart")
    assert GATED not in shown(left)
    # candidates a site asks for are filtered the same way
    asked = httpx.post(f"{api}/v1/decide", json={"anonymous_id": browser, "placement": "home_hero",
                                                  "candidates": [GATED, "promo-running-shoes"]}).json()
    assert shown(asked) == {"promo-running-shoes"}
