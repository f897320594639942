"""The contact policy's pure rules (engine/contact_policy.py) and the exposure operations (engine/exposure.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.config import ConfigError, EngineConfig, parse_config
from engine.config.model import Caps
from engine.contact_policy import (
    PolicyView,
    b36,
    cached_period_start,
    count_since_b36,
    eligible,
    nothing_now,
    period_start,
)
from engine.exposure import Exposure, parse
from engine.timing import zone

#: 2025-12-02 08:00 UTC, a Tuesday
NOW = 1_764_662_400.0
M = int(NOW // 60)


def policy(**table: object) -> EngineConfig:
    cfg = parse_config({"contact_policy": {"enabled": True, **table}, "placement": [{"id": "p"}], "action": [
        {"id": "a", "placements": ["p"], "item_id": "i-a"},
        {"id": "b", "placements": ["p"], "caps": {"day": 1}},
        {"id": "c", "placements": ["p"]}]})
    return cfg


def record(unclicked: int = 0, dismissed: int | None = None, *minutes_ago: int) -> str:
    times = ",".join(b36(M - m) for m in sorted(minutes_ago, reverse=True))
    return f"{unclicked},{b36(dismissed) if dismissed is not None else ''}" + ("," + times if times else "")


@pytest.mark.parametrize(("zone_name", "period", "local_start"), [
    ("UTC", "day", "2025-12-02T00:00"),
    ("Europe/Paris", "day", "2025-12-02T00:00"),         # 09:00 in Paris
    ("America/Los_Angeles", "day", "2025-12-02T00:00"),  # 00:00 there: the day just began
    ("Pacific/Honolulu", "day", "2025-12-01T00:00"),    # 22:00 on Monday there
    ("Asia/Kolkata", "hour", "2025-12-02T13:00"),        # 13:30 there (UTC+5:30)
    ("Asia/Tokyo", "week", "2025-12-01T00:00"),          # Monday
    ("Pacific/Honolulu", "week", "2025-12-01T00:00"),
])
def test_calendar_periods_are_the_customer_s(zone_name: str, period: str, local_start: str) -> None:
    tz = zone(zone_name)
    start = period_start(NOW, tz, period)
    assert datetime.fromtimestamp(start, tz).strftime("%Y-%m-%dT%H:%M") == local_start
    assert cached_period_start(NOW, tz, period) == start


def test_a_week_across_a_dst_change_starts_on_local_monday() -> None:
    tz = zone("Europe/Paris")
    now = datetime(2026, 3, 31, 12, 0, tzinfo=tz).timestamp()  # the Tuesday after the change to summer time
    start = datetime.fromtimestamp(period_start(now, tz, "week"), tz)
    assert (start.weekday(), start.hour, start.minute, start.day) == (0, 0, 0, 30)


def test_a_daily_cap_counts_from_the_customer_s_midnight() -> None:
    cfg = policy(action_caps={"day": 2})
    # impressions 7 and 9 hours ago: 01:00 and 23:00 UTC. Today in UTC: one; today in Los Angeles (it is 00:00
    # there, the day just began): none; today in Tokyo (17:00, the day began at 15:00 UTC yesterday): both
    raw = {"X:c": record(0, None, 9 * 60, 7 * 60)}
    by_zone = {z: PolicyView(cfg.contact_policy, raw, {}, NOW, zone(z)).action("c", None, None)
               for z in ("UTC", "America/Los_Angeles", "Asia/Tokyo")}
    assert by_zone == {"UTC": None, "America/Los_Angeles": None, "Asia/Tokyo": ("capped", "cap: 2/day reached")}


def test_an_action_s_own_caps_override_the_defaults_period_by_period() -> None:
    cfg = policy(action_caps={"day": 3, "week": 10})
    raw = {"X:b": record(0, None, 30), "X:c": record(0, None, 30)}
    view = PolicyView(cfg.contact_policy, raw, {}, NOW, zone("UTC"))
    assert view.action("b", None, cfg.actions["b"].caps) == ("capped", "cap: 1/day reached")
    assert view.action("c", None, None) is None
    assert Caps(day=3, week=10).over(Caps(day=1)).limits() == (("day", 1), ("week", 10))


def test_shown_without_a_click_and_the_dismissal_cool_down() -> None:
    cfg = policy(max_shown_without_click=3, dismiss_cooldown_hours=24)
    view = PolicyView(cfg.contact_policy, {"X:a": record(3), "X:c": record(2, M - 23 * 60),
                                           "X:b": record(2, M - 25 * 60)}, {}, NOW, zone("UTC"))
    assert view.action("a", None, None) == ("suppressed", "suppressed: shown 3 times without a click")
    assert view.action("c", None, None) == ("suppressed", "cooldown: dismissed 23h ago")
    assert view.action("b", None, None) is None  # 25 hours: the cool-down is over


def test_purchased_and_in_cart_items_unless_switched_off() -> None:
    on = policy()
    assert PolicyView(on.contact_policy, {"P:i-a": "0,a"}, {}, NOW, zone("UTC")).action("a", "i-a", None) == (
        "suppressed", "suppressed: purchased")
    assert PolicyView(on.contact_policy, {}, {"i-a": 1}, NOW, zone("UTC")).action("a", "i-a", None) == (
        "suppressed", "suppressed: in the cart")
    off = policy(suppress_purchased=False, suppress_in_cart=False)
    assert PolicyView(off.contact_policy, {"P:i-a": "0,a"}, {"i-a": 1}, NOW, zone("UTC")).action(
        "a", "i-a", None) is None


def test_channel_caps_and_contact_pressure() -> None:
    cfg = policy(channel_caps={"email": {"day": 1}, "web": {"day": 2}}, contact_pressure={"week": 3})
    raw = {"Y:email": record(0, None, 60), "Y:push": record(0, None, 120, 30 * 60),  # this week: Monday on
           "Y:web": record(0, None, 5, 10, 15)}
    view = PolicyView(cfg.contact_policy, raw, {}, NOW, zone("UTC"))
    assert view.channel("email") == ("capped", "cap: email 1/day reached")
    assert view.channel("sms") == ("contact_pressure", "contact pressure: 3/week reached (every channel but web)")
    assert view.channel("web") == ("capped", "cap: web 2/day reached")  # web: no pressure, a cap of its own
    kept, out = eligible(view, list(cfg.actions.values()), "web")  # a web placement: all out
    assert kept == [] and set(out) == {"a", "b", "c"}
    # pushes on Saturday and Sunday were last week's (the week began on Monday 00:00 UTC, 32 hours ago)
    quiet = PolicyView(cfg.contact_policy, {"Y:push": record(0, None, 2 * 1440, 3 * 1440)}, {}, NOW, zone("UTC"))
    assert quiet.channel("sms") is None


def test_the_nothing_now_reason() -> None:
    assert nothing_now(["capped"] * 3) == "capped"
    assert nothing_now(["suppressed", "suppressed", "capped"]) == "all_suppressed"
    assert nothing_now(["contact_pressure"]) == "contact_pressure"
    assert nothing_now(["capped", "other"]) == "no_eligible_action"
    assert nothing_now([]) == "no_eligible_action"


def test_times_compare_as_stored() -> None:
    times = [b36(M - 120), b36(M - 60), b36(M)]
    assert count_since_b36(times, (M - 60) * 60.0) == 2
    assert count_since_b36(["zz", b36(M)], 60.0 * 36 ** 3) == 1  # lengths differ: compared as numbers


def test_exposure_operations_and_records() -> None:
    cfg = policy(action_caps={"day": 3}, channel_caps={"push": {"week": 2}}, max_tracked_actions=5)
    ex = Exposure(cfg.contact_policy, (7,))
    assert ex.action_k == 7 and ex.channel_k == 2 and ex.max_actions == 5
    assert ex.ops("impression", NOW, {"action_id": "a"}, {"channel": "push"}) == [
        ["x", "m", "X:", "a", M, 7, 5], ["x", "t", "Y:", "push", M, 2, 8]]
    assert ex.ops("click", NOW, {"item_id": "i"}, {}) == []  # no action: nothing to reset
    assert ex.ops("feedback", NOW, {"action_id": "a", "kind": "conversion"}, {})[0][1] == "k"
    assert ex.ops("purchase", NOW, {"item_id": "i1", "items": [{"item_id": "i1"}, {"item_id": "i2"}]}, {}) == [
        ["x", "p", "P:", "i1", M, 0, 50], ["x", "p", "P:", "i2", M, 0, 50]]
    assert ex.ops("impression", NOW, {"action_id": "a,b", "channel": "fax"}, {}) == []  # not an id, not a channel
    assert parse("2,,a,b").times == [10, 11] and parse("garbage,x").unclicked == 0


def test_the_configuration_names_the_place_of_a_mistake() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"contact_policy": {"action_caps": {"day": 0}, "channel_caps": {"fax": {}},
                                         "max_tracked_actions": 0},
                      "placement": [{"id": "p"}], "action": [{"id": "a", "placements": ["p"], "caps": {"dya": 1}}]})
    paths = {p for p, _ in info.value.problems}
    assert paths == {"contact_policy.action_caps.day", "contact_policy.channel_caps.fax",
                     "contact_policy.max_tracked_actions", "action[0].caps.dya"}


def test_a_merge_folds_the_exposure_records_and_ops_for_adds_them() -> None:
    from engine.features import FeatureExtractor, RawProfile

    cfg = parse_config({"contact_policy": {"enabled": True, "action_caps": {"day": 3}}})
    fx = FeatureExtractor(cfg)
    ops = fx.merge_ops(RawProfile({"X:a": "2,,a", "Y:push": "0,,b", "P:i": "0,c", "cv": "1"}), NOW)
    assert [op for op in ops if op[0] == "x"] == [["x", "M", "X:", "a", "2,,a", 3, 50],
                                                 ["x", "M", "Y:", "push", "0,,b", 0, 8],
                                                 ["x", "M", "P:", "i", "0,c", 0, 50]]
    assert ["x", "m", "X:", "a", M, 3, 50] in fx.ops_for("impression", NOW, {"action_id": "a"}, {})
    off = FeatureExtractor(parse_config({}))
    assert off.exposure is None and not [op for op in off.ops_for("impression", NOW, {"action_id": "a"}, {})
                                         if op[0] == "x"]
