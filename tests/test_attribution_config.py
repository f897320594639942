"""``[attribution]`` is validated strictly: each mistake is refused with the key that holds it."""

from __future__ import annotations

from typing import Any

import pytest

from engine.attribution import credit_shares
from engine.config import ConfigError, parse_config

BASE: dict[str, Any] = {"placement": [{"id": "home"}], "action": [{"id": "a1", "placements": ["home"]}]}


def problem(attribution: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "attribution": attribution}, source="t.toml")
    return info.value.problems


@pytest.mark.parametrize(("attribution", "path", "expected"), [
    ({"windw_hours": 1}, "attribution.windw_hours", "unknown key"),
    ({"window_hours": 0}, "attribution.window_hours", "> 0"),
    ({"window_hours": 3000}, "attribution.window_hours", "2160"),
    ({"models": ["first_touch"]}, "attribution.models[0]", "last_touch"),
    ({"models": []}, "attribution.models", "at least 1"),
    ({"models": ["linear", "linear"]}, "attribution.models", "listed twice"),
    ({"goals": ["signup"]}, "attribution.goals[0]", "unknown event type"),
    ({"goals": ["purchase"]}, "attribution.goals", "purchase is always a conversion"),
    ({"max_touches": 0}, "attribution.max_touches", ">= 1"),
    ({"cost_per_impression": {"channels": {"fax": 1.0}}}, "attribution.cost_per_impression.channels.fax", ""),
    ({"cost_per_impression": {"channels": {"email": -1.0}}}, "attribution.cost_per_impression.channels.email",
     ">= 0"),
    ({"cost_per_impression": {"actions": {"nope": 1.0}}}, "attribution.cost_per_impression.actions.nope",
     "unknown action"),
    ({"enabled": "yes"}, "attribution.enabled", "true or false"),
])
def test_a_bad_attribution_setting_names_its_key(attribution: dict[str, Any], path: str, expected: str) -> None:
    found = problem(attribution)
    assert any(p == path and expected in why for p, why in found), found


def test_the_settings_as_the_code_reads_them() -> None:
    cfg = parse_config({**BASE, "attribution": {"enabled": True, "window_hours": 2, "models": ["linear"],
                                                "goals": ["add_to_cart"], "cost_per_impression": {
                                                    "actions": {"a1": 0.5}, "channels": {"email": 0.25}}}})
    a = cfg.attribution
    assert (a.enabled, a.window_hours, a.models, a.goals, a.max_touches) == (True, 2.0, ("linear",),
                                                                            ("add_to_cart",), 20)
    assert a.cost_per_impression_actions == {"a1": 0.5} and a.cost_per_impression_channels == {"email": 0.25}
    assert parse_config(BASE).attribution.enabled is False  # off unless configured


@pytest.mark.parametrize("n", range(1, 8))
@pytest.mark.parametrize("model", ["last_touch", "linear", "position_based"])
def test_every_model_gives_out_exactly_one_conversion(model: str, n: int) -> None:
    shares = credit_shares(model, n)
    assert len(shares) == n and abs(sum(shares) - 1.0) < 1e-12 and min(shares) >= 0
