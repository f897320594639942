"""The Segment/RudderStack mapping beyond the original calls: every call type, the e-commerce spec's
promotion, list, cart and checkout events, generic track events, and the clock-skew correction."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import InvalidEvent, parse_event
from schemas.segment import MAX_CLOCK_CORRECTION_S, MAX_LIST_ITEMS, corrected_timestamp, from_segment
from tests.test_schemas import T0, reason_of, segment


def test_unknown_track_names_are_generic_events_counted_by_name() -> None:
    parsed = parse_event(segment(event="Coupon Applied", properties={"coupon_id": "SPRING", "discount": 5}))
    assert parsed.type == "track"
    assert parsed.properties == {"coupon_id": "SPRING", "discount": 5, "event": "Coupon Applied"}
    # the name wins over a property of the same name; Pulse type names still map to their type
    assert parse_event(segment(event="Signed Up", properties={"event": "x"})).properties["event"] == "Signed Up"
    assert parse_event(segment(event="track", properties={})).properties == {"event": "track"}


@pytest.mark.parametrize(("name", "reason"), [
    ("", "event: the name of a Segment track call must be a non-empty string, got an empty string"),
    (7, "event: the name of a Segment track call must be a non-empty string, got integer"),
    ("x" * 257, "properties.event: must be at most 256 characters, got 257"),
])
def test_malformed_track_names(name: Any, reason: str) -> None:
    assert reason_of(segment(event=name)) == reason


def test_spec_names_match_ignoring_case_and_underscores() -> None:
    parsed = parse_event(segment(event="order_completed", properties={"order_id": "o-1", "total": 10}))
    assert (parsed.type, parsed.properties["value"]) == ("purchase", 10)
    assert parse_event(segment(event="product added", properties={"sku": "s"})).type == "add_to_cart"


def test_promotion_viewed_is_an_impression_and_clicked_a_click() -> None:
    props = {"promotion_id": "promo-spring", "creative": "banner-2", "name": "Spring", "position": "home_banner_top",
             "decision_id": "d-1"}
    seen = parse_event(segment(event="Promotion Viewed", properties=props))
    assert seen.type == "impression"
    assert seen.properties == {"action_id": "promo-spring", "decision_id": "d-1", "placement": "home_banner_top",
                               "creative": "banner-2", "name": "Spring"}
    clicked = parse_event(segment(event="Promotion Clicked", properties={**props, "position": 2}))
    assert clicked.type == "click"
    assert (clicked.properties["action_id"], clicked.properties["position"]) == ("promo-spring", 2)
    assert reason_of(segment(event="Promotion Viewed", properties={"name": "x"})) == (
        "properties.action_id: is required for impression")


def test_product_list_cart_and_checkout() -> None:
    products = [{"product_id": f"sku-{i}", "category": "shoes", "price": 10.0} for i in range(MAX_LIST_ITEMS + 6)]
    listed = parse_event(segment(event="Product List Viewed",
                                 properties={"list_id": "l-1", "category": "shoes", "products": products}))
    assert listed.type == "page_view"
    assert listed.properties["category"] == "shoes" and listed.properties["list_id"] == "l-1"
    assert listed.properties["item_ids"] == [f"sku-{i}" for i in range(MAX_LIST_ITEMS)]
    assert "products" not in listed.properties
    cart = parse_event(segment(event="Cart Viewed", properties={"cart_id": "c-1", "products": products[:2]}))
    assert (cart.type, cart.properties["page_type"], cart.properties["cart_id"]) == ("page_view", "cart", "c-1")
    checkout = parse_event(segment(event="Checkout Started", properties={
        "order_id": 77, "revenue": 20.0, "currency": "eur", "products": products[:2]}))
    assert checkout.type == "track"
    assert checkout.properties == {"event": "Checkout Started", "order_id": "77", "value": 20.0, "currency": "EUR",
                                   "items": [{"item_id": "sku-0", "category": "shoes", "price": 10.0},
                                             {"item_id": "sku-1", "category": "shoes", "price": 10.0}]}


def test_screen_alias_and_group() -> None:
    screen = parse_event(segment("screen", channel=None, name="Home", properties={"feed": "new"}))
    assert (screen.type, screen.properties["title"], screen.context["channel"]) == ("page_view", "Home", "app")
    alias = parse_event(segment("alias", previousId="anon-9", userId="cust-9", anonymousId=None))
    assert (alias.type, alias.anonymous_id, alias.customer_id) == ("identify", "anon-9", "cust-9")
    assert reason_of(segment("alias", userId="cust-9")) == "previousId: is required for a Segment alias call"
    group = parse_event(segment("group", groupId=42, traits={"plan": "pro"}))
    assert (group.type, group.properties) == ("track", {"event": "group", "group_id": "42",
                                                        "traits": {"plan": "pro"}})
    assert reason_of(segment("group")) == "groupId: is required for a Segment group call"


def test_clock_skew_correction() -> None:
    # the client's clock is 90 s slow: its timestamp and sentAt both read 90 s early
    payload = segment(event="Product Added", properties={"product_id": "x"}, timestamp="2024-05-01T11:58:30Z",
                      sentAt="2024-05-01T11:58:31Z", receivedAt="2024-05-01T12:00:01Z")
    assert parse_event(payload).timestamp == T0
    # numbers (epoch ms) too; a gap over a day is cut to a day
    assert corrected_timestamp({"timestamp": T0 * 1000, "sentAt": T0 * 1000, "receivedAt": T0 * 1000 + 5}) == (
        T0 * 1000 + 5)
    far = corrected_timestamp({"timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:00Z",
                               "receivedAt": "2024-05-11T12:00:00Z"})
    assert far == (T0 + MAX_CLOCK_CORRECTION_S) * 1000
    # without receivedAt (a Segment payload posted to /v1/events as is) nothing is corrected
    assert from_segment(segment(event="Product Added"))["timestamp"] == "2024-05-01T12:00:00.000Z"
    # an unparsable sentAt: no correction, the timestamp as given
    assert corrected_timestamp({"timestamp": "2024-05-01T12:00:00Z", "sentAt": "soon",
                                "receivedAt": "2024-05-01T12:00:00Z"}) == "2024-05-01T12:00:00Z"
    with pytest.raises(InvalidEvent, match="timestamp"):
        parse_event(segment(event="Product Added", properties={"product_id": "x"}, timestamp="yesterday",
                            receivedAt="2024-05-01T12:00:00Z"))


def test_a_back_ends_identify_names_only_the_customer() -> None:
    # Segment's server libraries update a known customer's traits without an anonymous id: links nothing
    parsed = parse_event(segment("identify", userId="cust-1", anonymousId=None, traits={"plan": "pro"}))
    assert (parsed.type, parsed.customer_id, parsed.anonymous_id) == ("identify", "cust-1", None)
