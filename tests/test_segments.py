"""Segments: configuration checks (one per mistake) and evaluation over decoded profiles."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import ConfigError, parse_config, schema
from engine.features import Profile
from engine.segments import METRICS, Segments

NOW = 1_800_000_000.0
FEATURES = [
    {"name": "category", "kind": "affinity", "field": "category", "weights": {"page_view": 1.0}},
    {"name": "views", "kind": "window", "events": ["page_view"], "windows": ["1h", "24h"]},
]


def config(segments: list[dict[str, Any]], actions: list[dict[str, Any]] | None = None) -> Any:
    return parse_config({"feature": FEATURES, "segment": segments, "placement": [{"id": "p"}],
                         "action": actions or [{"id": "a", "placements": ["p"]}]})


def profile(**kw: Any) -> Profile:
    base: dict[str, Any] = dict(customer_id="c", exists=True, counts={}, first_seen=NOW - 86400,
                                last_seen=NOW - 60, session={}, affinities={}, recent={}, cart={}, monetary=0.0,
                                windows={}, consent={})
    base.update(kw)
    return Profile(**base)


def members(segments: list[dict[str, Any]], p: Profile, now: float = NOW) -> list[str]:
    return Segments(config(segments).segments).members(p, now)


def test_metrics_listed_in_the_schema_are_the_evaluator_s() -> None:
    assert tuple(schema.SegmentMetric.__args__) == METRICS  # type: ignore[attr-defined]


@pytest.mark.parametrize("segment, path, message", [
    ({"id": "s"}, "segment[0]", "at least one condition"),
    ({"id": "s", "all": [{"min": 1}]}, "segment[0].all[0]", "exactly one of count"),
    ({"id": "s", "all": [{"count": "page_view", "metric": "monetary", "min": 1}]}, "segment[0].all[0]",
     "(got count, metric)"),
    ({"id": "s", "all": [{"count": "page_view"}]}, "segment[0].all[0]", "give min and/or max"),
    ({"id": "s", "all": [{"count": "pageview", "min": 1}]}, "segment[0].all[0].count", "unknown event type"),
    ({"id": "s", "all": [{"metric": "wealth", "min": 1}]}, "segment[0].all[0].metric", "monetary"),
    ({"id": "s", "all": [{"count": "page_view", "min": 5, "max": 1}]}, "segment[0].all[0]", "above max"),
    ({"id": "s", "all": [{"consent": "email", "min": 1}]}, "segment[0].all[0]", "do not apply"),
    ({"id": "s", "all": [{"window": "views", "min": 1}]}, "segment[0].all[0]", "window and span go together"),
    ({"id": "s", "all": [{"affinity": "category", "min": 0.5}]}, "segment[0].all[0]", "affinity and value"),
    ({"id": "s", "all": [{"metric": "monetary", "min": 1, "granted": False}]}, "segment[0].all[0]",
     "granted applies to consent only"),
    ({"id": "s", "all": [{"metric": "monetary", "min": True}]}, "segment[0].all[0].min", "number"),
    ({"id": "s", "all": [{"metric": "monetary", "mn": 1}]}, "segment[0].all[0].mn", "unknown key"),
    ({"id": "s", "al": [{"metric": "monetary", "min": 1}]}, "segment[0].al", "unknown key"),
    ({"id": "s", "all": [{"window": "clicks", "span": "1h", "min": 1}]}, "segment[0].all[0].window",
     'unknown window feature "clicks"'),
    ({"id": "s", "all": [{"window": "views", "span": "7d", "min": 1}]}, "segment[0].all[0].span",
     'keeps 1h, 24h, not "7d"'),
    ({"id": "s", "all": [{"affinity": "brand", "value": "x", "min": 0.1}]}, "segment[0].all[0].affinity",
     'unknown affinity feature "brand"'),
    ({"id": "s", "all": [{"segment": "s"}]}, "segment[0].all[0].segment", "cannot name itself"),
    ({"id": "s", "all": [{"segment": "nope"}]}, "segment[0].all[0].segment", '"nope" is not declared'),
])
def test_each_mistake_is_named(segment: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config([segment])
    text = str(err.value)
    assert f"{path}:" in text and message in text, text


def test_duplicate_segment_ids_and_unknown_audiences_are_errors() -> None:
    seg = {"id": "vip", "all": [{"metric": "monetary", "min": 100}]}
    with pytest.raises(ConfigError, match=r"segment\[1\]\.id: duplicate segment id \"vip\""):
        config([seg, seg])
    with pytest.raises(ConfigError, match=r"action\[0\]\.audience\.exclude\[0\]: unknown segment \"vips\""):
        config([seg], [{"id": "a", "placements": ["p"], "audience": {"exclude": ["vips"]}}])


def test_cart_abandoners_high_value_and_lapsed() -> None:
    segs = [
        {"id": "cart_abandoners", "all": [{"metric": "cart_items", "min": 1},
                                          {"metric": "minutes_since_last_seen", "min": 30}],
         "none": [{"count": "purchase", "min": 1}]},
        {"id": "high_value", "all": [{"metric": "monetary", "min": 500}]},
        {"id": "lapsed", "all": [{"metric": "days_since_last_seen", "min": 30}]},
    ]
    shopper = profile(cart={"sku-1": 2}, last_seen=NOW - 45 * 60)
    assert members(segs, shopper) == ["cart_abandoners"]
    assert members(segs, shopper, NOW - 20 * 60) == []  # still browsing: not abandoned yet
    assert members(segs, profile(cart={"sku-1": 2}, last_seen=NOW - 3600, counts={"purchase": 1})) == []
    assert members(segs, profile(monetary=750.0)) == ["high_value"]
    # time alone moves a customer into "lapsed", without an event
    assert members(segs, profile(monetary=750.0), NOW + 31 * 86400) == ["high_value", "lapsed"]


def test_windows_affinities_consent_and_segment_references() -> None:
    segs = [
        {"id": "busy", "all": [{"window": "views", "span": "1h", "min": 10}]},
        {"id": "shoe_lovers", "all": [{"affinity": "category", "value": "shoes", "min": 0.5}]},
        {"id": "emailable", "all": [{"consent": "email"}]},
        {"id": "not_emailable", "all": [{"consent": "email", "granted": False}]},
        {"id": "busy_shoe_lovers", "all": [{"segment": "busy"}, {"segment": "shoe_lovers"}]},
        {"id": "either", "any": [{"segment": "busy"}, {"segment": "emailable"}]},
    ]
    p = profile(windows={"views": {"1h": 12, "24h": 40}}, affinities={"category": {"shoes": 3.0, "books": 6.0}},
                consent={"email": True})
    assert members(segs, p) == ["busy", "shoe_lovers", "emailable", "busy_shoe_lovers", "either"]
    q = profile(windows={"views": {"1h": 2}}, affinities={"category": {"shoes": 1.0, "books": 6.0}},
                consent={"email": False})
    assert members(segs, q) == ["not_emailable"]
    assert members(segs, profile()) == ["not_emailable"]  # consent never given is not granted


def test_a_metric_that_does_not_exist_yet_holds_for_no_bound() -> None:
    segs = [{"id": "recent", "all": [{"metric": "days_since_last_seen", "max": 7}]},
            {"id": "old", "all": [{"metric": "days_since_last_seen", "min": 7}]}]
    assert members(segs, profile(last_seen=None, first_seen=None)) == []


def test_unknown_visitors_belong_to_nothing() -> None:
    segs = [{"id": "newcomers", "all": [{"count": "page_view", "max": 0}]}]
    s = Segments(config(segs).segments)
    assert s.members(None, NOW) == [] and s.members(profile(exists=False), NOW) == []
    assert s.members(profile(), NOW) == ["newcomers"]


def test_segment_change_messages_match_their_schema() -> None:
    import json
    from pathlib import Path

    from fastjsonschema import JsonSchemaValueException

    from schemas._validation import compile_schema
    from streams.segments import change_message

    validate = compile_schema("segment_change.v1.schema.json", use_default=False)
    root = Path(__file__).resolve().parents[1] / "schemas"
    validate(json.loads((root / "examples" / "segment_change.v1.example.json").read_text()))
    produced = change_message("cust-1", "lapsed", "segment_exited", "event", ["high_value"], "1800000000000", NOW)
    validate(produced)
    with pytest.raises(JsonSchemaValueException):
        validate({**produced, "type": "segment_left"})
    with pytest.raises(JsonSchemaValueException):
        validate({**produced, "extra": 1})


def test_next_change_tells_when_time_alone_changes_membership() -> None:
    segs = Segments(config([
        {"id": "lapsed", "all": [{"metric": "days_since_last_seen", "min": 30}]},
        {"id": "busy", "all": [{"window": "views", "span": "1h", "min": 3}]},
        {"id": "big", "all": [{"metric": "monetary", "min": 100}]},
    ]).segments)
    seen = profile(last_seen=NOW - 86400, windows={"views": {"1h": 5}})
    # the 1h window's next 5-minute bucket comes before the 29 days left to "lapsed"
    assert segs.next_change(seen, NOW) == (NOW // 300 + 1) * 300
    quiet = profile(last_seen=NOW - 86400, windows={"views": {"1h": 1}})
    assert segs.next_change(quiet, NOW) == NOW - 86400 + 30 * 86400
    only_money = Segments(config([{"id": "big", "all": [{"metric": "monetary", "min": 100}]}]).segments)
    assert only_money.next_change(seen, NOW) is None and segs.next_change(None, NOW) is None


def test_the_stored_hash_and_the_decoded_profile_give_the_same_answers() -> None:
    """The stream reads segments from the hash (RawView), serving from the decoded profile: random profiles
    and every kind of condition, the same memberships and the same next change."""
    import random

    from engine.features import RawProfile, decode
    from engine.layout import (
        FIRST_SEEN,
        LAST_SEEN,
        MONETARY,
        SESSION_LAST,
        SESSION_PAGES,
        cart_field,
        consent_field,
        count_field,
        profile_fields,
    )
    from engine.segment_view import RawView, view_fields

    rng = random.Random(7)
    segs = [
        {"id": "viewers", "all": [{"count": "page_view", "min": 5}]},
        {"id": "busy", "all": [{"window": "views", "span": "1h", "min": 3}], "none": [{"count": "purchase", "min": 1}]},
        {"id": "day", "any": [{"window": "views", "span": "24h", "max": 2}, {"metric": "cart_quantity", "min": 3}]},
        {"id": "carts", "all": [{"metric": "cart_items", "min": 2}, {"metric": "monetary", "max": 300}]},
        {"id": "reading", "all": [{"affinity": "category", "value": "books", "min": 0.5}]},
        {"id": "session", "all": [{"metric": "session_pages", "min": 2}]},
        {"id": "recent", "all": [{"metric": "minutes_since_last_seen", "max": 30},
                                 {"metric": "days_since_first_seen", "min": 1}]},
        {"id": "mail", "all": [{"consent": "marketing"}], "none": [{"segment": "recent"}]},
    ]
    cfg = config(segs)
    segments = Segments(cfg.segments)
    fields = profile_fields(cfg)
    named, prefixes = view_fields(cfg)
    seen: set[tuple[str, ...]] = set()
    for _ in range(400):
        now = NOW + rng.uniform(0, 7200)
        h: dict[str, str] = {}
        if rng.random() < 0.9:
            h[count_field("page_view")] = str(rng.randint(0, 12))
        if rng.random() < 0.3:
            h[count_field("purchase")] = str(rng.randint(1, 3))
        for span in ("1h", "24h"):
            if rng.random() < 0.8:
                width = 300 if span == "1h" else 3600
                newest = int(now // width) - rng.randint(0, 3)
                h[fields.window["views", span]] = f"{newest}:" + ",".join(
                    rng.choice(["", "1", "2", "4"]) for _ in range(rng.randint(1, 5)))
        for i in range(rng.randint(0, 3)):
            h[cart_field(f"sku-{i}")] = str(rng.randint(1, 3))
        h[MONETARY] = str(rng.choice([0.0, 120.5, 450.0]))
        last = now - rng.uniform(0, 3600)
        h[LAST_SEEN], h[FIRST_SEEN] = str(int(last * 1000)), str(int((last - rng.uniform(0, 3 * 86400)) * 1000))
        h[SESSION_LAST], h[SESSION_PAGES] = h[LAST_SEEN], str(rng.randint(1, 4))
        prefix = fields.affinity["category"]
        h[fields.landmark["category"]] = str(int(now) - rng.randint(0, 100000))
        for value in rng.sample(["books", "shoes", "hats"], rng.randint(0, 3)):
            h[prefix + value] = f"{rng.uniform(0.1, 9):.7f}"
        if rng.random() < 0.7:
            h[consent_field("marketing")] = rng.choice(["0", "1"])
        decoded = decode("c", RawProfile(hash=h), cfg, now)
        raw, ref = segments.members_of(RawView(h, cfg), now), segments.members(decoded, now)
        assert raw == ref, (h, now)
        assert segments.next_change(RawView(h, cfg), now) == segments.next_change(decoded, now)
        # what the applier returns to the stream (apply_ops.lua: the named fields, the prefixes' fields)
        narrow = {f: v for f, v in h.items() if f in named or f.startswith(prefixes)}
        assert len(narrow) < len(h)
        assert segments.members_of(RawView(narrow, cfg), now) == ref
        assert segments.next_change(RawView(narrow, cfg), now) == segments.next_change(decoded, now)
        seen.add(tuple(ref))
    assert len(seen) > 20  # the profiles were varied enough to exercise every segment
    assert {s for m in seen for s in m} == {s["id"] for s in segs}
