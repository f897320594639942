"""Next-best action's pure parts: contact hours and send times (engine.timing), channel choice
(engine.channels), value arbitration (engine.arbitration), their configuration, and the decide request's
time zone."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import arbitration, channels, timing
from engine.config import ConfigError, load_config, parse_config
from engine.features import FeatureExtractor, RawProfile
from engine.policies import Candidate, make_policy
from engine.settings import REPO_ROOT
from serving.decide import DecideRequestError, parse_decide_request

SHIPPED = load_config(REPO_ROOT / "config" / "engine.toml")
ZONES = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]


def nba_config(**placement: Any) -> dict[str, Any]:
    return {"placement": [{"id": "nba", "channels": ["web", "email"], **placement}],
            "action": [{"id": "a", "placements": ["nba"], "channels": ["email"], "value": 3.0}]}


def problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="t.toml")
    return info.value.problems


# -- configuration ------------------------------------------------------------------------------------------

def test_the_shipped_next_best_action_placement() -> None:
    p = SHIPPED.placements["next_best_action"]
    assert p.channels == ("web", "email", "push", "sms") and p.arbitration == "propensity_x_value_x_lever"
    assert SHIPPED.contact.hours["sms"] == (600, 1140)  # 10:00-19:00: never at night
    actions = SHIPPED.actions_for("next_best_action")
    assert len({a.value for a in actions}) > 3 and all(a.channels for a in actions)
    # a placement whose actions declare no value keeps its policy's order
    assert SHIPPED.placements["home_hero"].arbitration == "policy"


def test_contact_and_channel_errors_name_the_field() -> None:
    assert problems({"contact": {"hours": {"email": "9-20"}}})[0][0] == "contact.hours.email"
    assert problems({"contact": {"hours": {"fax": "09:00-20:00"}}})[0][0] == "contact.hours.fax"
    assert problems({"contact": {"hours": {"sms": "10:00-10:00"}}})[0][1].endswith("is an empty span")
    tz = problems({"contact": {"default_timezone": "Mars/Olympus"}})
    assert tz[0][0] == "contact.default_timezone" and "not an IANA time zone" in tz[0][1]
    assert problems({"contact": {"send_within_hours": 0}})[0][0] == "contact.send_within_hours"
    raw = nba_config()
    raw["action"][0]["channels"] = ["sms"]
    assert problems(raw) == [("action[0].channels[0]", '"sms" is not a channel of its placements (email, web)')]
    raw = nba_config(arbitration="clicks")
    assert problems(raw)[0][0] == "placement[0].arbitration"
    assert problems(nba_config(min_expected_value=-1))[0][0] == "placement[0].min_expected_value"


def test_arbitration_defaults_to_value_when_an_action_has_one() -> None:
    assert parse_config(nba_config()).placements["nba"].arbitration == "propensity_x_value_x_lever"
    plain = nba_config()
    del plain["action"][0]["value"]
    assert parse_config(plain).placements["nba"].arbitration == "policy"
    assert parse_config(nba_config(arbitration="propensity")).placements["nba"].arbitration == "propensity"
    assert parse_config(plain).actions["a"].value == 1.0


def test_a_request_timezone_is_checked_at_the_door() -> None:
    ok = parse_decide_request(b'{"placement": "next_best_action", "context": {"timezone": "Asia/Tokyo"}}', SHIPPED)
    assert ok.context["timezone"] == "Asia/Tokyo"
    for bad in (b'"Mars/Olympus"', b'"../../etc/passwd"', b'7'):
        with pytest.raises(DecideRequestError, match=r"^context\.timezone: "):
            parse_decide_request(b'{"placement": "next_best_action", "context": {"timezone": ' + bad + b'}}',
                                 SHIPPED)


# -- the stream's operations --------------------------------------------------------------------------------

def test_activity_hours_channels_and_timezone_reach_the_profile_operations() -> None:
    fx = FeatureExtractor(SHIPPED)
    ts = datetime(2025, 12, 2, 18, 30, tzinfo=UTC).timestamp()  # a Tuesday, 18:30 UTC
    ops = fx.ops_for("click", ts, {"category": "shoes"}, {"channel": "email"})
    assert ["a", "a_h:", "18"] in [op[:3] for op in ops] and ["a", "a_d:", "1"] in [op[:3] for op in ops]
    assert ["i", "E:email", 1] in ops
    assert ["i", "I:push", 1] in fx.ops_for("impression", ts, {"action_id": "x", "channel": "push"}, {})
    assert ["set", "tz", "Asia/Tokyo"] in fx.ops_for("identify", ts, {"traits": {"timezone": "Asia/Tokyo"}}, {})
    pop = fx.popularity_ops_for("click", ts, {}, {"channel": "email"})
    assert {op[2] for op in pop} == {"h18", "d1", "E:email"}
    # without a placement that answers channels, none of it is kept
    plain = FeatureExtractor(parse_config({"placement": [{"id": "p"}]}))
    assert not [op for op in plain.ops_for("click", ts, {}, {"channel": "email"}) if op[0] == "a" or op[1] == "E:email"]


def test_a_merge_carries_the_activity_hours_channel_counts_and_timezone() -> None:
    fx = FeatureExtractor(SHIPPED)
    hl = SHIPPED.contact.activity_half_life_days * 86400.0
    ops = fx.merge_ops(RawProfile({"a_h:9": "4", "L_h": "0", "E:email": "2", "tz": "Asia/Tokyo"}), ts=hl)
    hour = next(op for op in ops if op[0] == "a" and op[1] == "a_h:")
    assert hour[2] == "9" and hour[3] == pytest.approx(2.0) and hour[7] == "L_h"  # re-expressed at ts
    assert ["i", "E:email", 2] in ops and ["setnx", "tz", "Asia/Tokyo"] in ops


# -- timing --------------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(now=st.floats(1.6e9, 1.9e9), zone=st.sampled_from(ZONES), start=st.integers(0, 23), length=st.integers(1, 23),
       hours=st.lists(st.floats(0, 100), min_size=24, max_size=24), b2b=st.booleans())
def test_send_at_is_always_inside_contact_hours_in_the_customer_s_zone(
        now: float, zone: str, start: int, length: int, hours: list[float], b2b: bool) -> None:
    tz = timing.zone(zone)
    span = (start * 60, ((start + length) % 24) * 60 or 1440)
    at = timing.next_send_at(now, tz, span, b2b, hours, [1.0] * 7, 24, (540, 1080) if b2b else None)
    if at is None:  # only a B2B placement whose channel hours never meet business hours has none
        assert b2b and not any(timing.is_open(m, span) and timing.is_open(m, (540, 1080)) for m in range(0, 1440, 30))
        return
    assert now <= at < now + timing.SEARCH_DAYS * 86400
    local = datetime.fromtimestamp(at, tz)
    assert timing.is_open(local.hour * 60 + local.minute, span)
    if b2b:
        assert local.weekday() < 5 and timing.is_open(local.hour * 60 + local.minute, (540, 1080))


def test_the_best_hour_follows_the_customer_s_activity_and_newcomers_follow_the_population() -> None:
    now = datetime(2025, 12, 2, 6, 0, tzinfo=UTC).timestamp()
    prior_hours = [0.0] * 24
    prior_hours[12] = 100.0  # the population is active at noon UTC
    mine = [0.0] * 24
    newcomer = timing.mix(mine, prior_hours, 4.0)
    at = timing.next_send_at(now, timing.zone("UTC"), (540, 1200), False, newcomer, [1.0] * 7, 24)
    assert datetime.fromtimestamp(at or 0, UTC).hour == 12
    mine[17] = 10.0  # this customer comes at 17:00 UTC, ten times
    theirs = timing.mix(mine, prior_hours, 4.0)
    at = timing.next_send_at(now, timing.zone("UTC"), (540, 1200), False, theirs, [1.0] * 7, 24)
    assert datetime.fromtimestamp(at or 0, UTC).hour == 17


def test_decayed_histograms_read_back_what_the_affinity_operation_stores() -> None:
    hl = 7 * 86400.0
    raw = {"a_h:17": "8", "L_h": "1000", "a_d:4": "2", "L_d": "1000"}
    hours, days = timing.customer_activity(raw, hl, 1000 + hl)
    assert hours[17] == pytest.approx(4.0) and sum(hours) == pytest.approx(4.0) and days[4] == pytest.approx(1.0)


# -- channels ------------------------------------------------------------------------------------------------

def test_a_channel_s_rate_moves_from_the_population_to_the_customer() -> None:
    assert channels.rate(0, 0, 0.02, 20) == 0.02
    assert channels.rate(30, 40, 0.02, 20) > 0.5 > channels.rate(0, 40, 0.5, 20)
    assert channels.rate(10, 0, 0.05, 20) <= 1.0  # rewards without impressions never pass 1


def test_consent_per_channel_in_both_modes() -> None:
    assert channels.consented({"marketing_sms": False}, "opt_out", ["web", "sms"]) == ["web"]
    assert channels.consented({"marketing_sms": True}, "opt_in", ["web", "sms"]) == ["sms"]


# -- arbitration ---------------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100), st.floats(0, 3)), min_size=1, max_size=50))
def test_arbitration_orders_by_priority_with_an_exact_propensity(rows: list[tuple[float, float, float]]) -> None:
    ids = [f"a{i}" for i in range(len(rows))]
    r = arbitration.arbitrate(ids, [p for p, _, _ in rows], [v for _, v, _ in rows], [lv for _, _, lv in rows],
                              "propensity_x_value_x_lever", 0.0, random.Random(0))
    assert sorted(r.order) == list(range(len(rows)))
    prio = [r.priorities[i] for i in r.order]
    assert prio[1:] == sorted(prio[1:], reverse=True) and prio[0] >= max(prio) - 1e-9 * max(1.0, max(prio))
    assert 0 < r.propensity <= 1


def test_epsilon_explores_with_the_logged_propensity() -> None:
    rng = random.Random(3)
    tops = [arbitration.arbitrate(["a", "b", "c"], [0.1] * 3, [1.0, 5.0, 1.0], [1.0] * 3,
                                  "propensity_x_value_x_lever", 0.3, rng) for _ in range(2000)]
    greedy = [t for t in tops if t.order[0] == 1]
    assert all(t.propensity == pytest.approx(0.1 + 0.7) for t in greedy)
    assert all(t.propensity == pytest.approx(0.1) and t.explored for t in tops if t.order[0] != 1)
    assert 0.75 < len(greedy) / len(tops) < 0.85  # 0.7 + 0.3 / 3


def test_learned_propensities_start_at_the_prior_and_follow_the_rewards() -> None:
    policy = make_policy("linear_thompson", shared_dims=0)
    good, bad = Candidate("good"), Candidate("bad")
    assert arbitration.estimates(policy, {}, [good, bad], False) == [0.05, 0.05]
    for _ in range(200):
        policy.learn_one({}, good, 1.0)
        policy.learn_one({}, bad, 0.0)
    p_good, p_bad = arbitration.estimates(policy, {}, [good, bad], False)
    assert p_good > 0.8 and p_bad < 0.01
    # a placement that learns conversion values: the estimate is a value, not clipped to 1
    value = make_policy("linear_thompson", shared_dims=0)
    for _ in range(50):
        value.learn_one({}, good, 40.0)
    assert arbitration.estimates(value, {}, [good], True)[0] > 30


def test_a_malformed_identify_timezone_is_refused_at_the_door() -> None:
    from schemas import InvalidEvent
    from schemas.events import parse_event

    base = {"event_id": "e1", "type": "identify", "timestamp": 1_764_662_400_000, "anonymous_id": "a-1",
            "customer_id": "c-1"}
    ok = parse_event({**base, "properties": {"traits": {"timezone": "Asia/Tokyo"}}})
    assert ok.properties["traits"]["timezone"] == "Asia/Tokyo"
    for bad in ("../../etc/passwd", "Asia Tokyo", "x" * 65, 9):
        with pytest.raises(InvalidEvent, match=r"timezone"):
            parse_event({**base, "properties": {"traits": {"timezone": bad}}})
