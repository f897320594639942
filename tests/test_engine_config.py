from pathlib import Path

import pytest

from engine.config import ConfigError, load_config, parse_config
from engine.settings import REPO_ROOT


def test_shipped_config_loads() -> None:
    cfg = load_config(REPO_ROOT / "config" / "engine.toml")
    assert {"home_hero", "product_recs"} <= set(cfg.placements)
    assert [f.name for f in cfg.affinities] == ["category", "item"]
    assert all(cfg.actions_for(p) for p in cfg.placements)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"feature": [{"name": "x", "kind": "affinity", "field": "category", "weights": {"pageview": 1}}]},
         "unknown event type 'pageview'"),
        ({"feature": [{"name": "x", "kind": "window", "events": ["click"], "windows": ["2h"]}]},
         "unknown window '2h'"),
        ({"feature": [{"name": "x", "kind": "recent", "field": "item_id", "events": ["click"]},
                      {"name": "x", "kind": "recent", "field": "item_id", "events": ["click"]}]},
         "duplicate feature name"),
        ({"action": [{"id": "a", "placements": ["nowhere"]}]}, "unknown placement 'nowhere'"),
        ({"placement": [{"id": "p"}], "action": [{"id": "a", "placements": ["p"], "valid_to": "soon"}]},
         "'soon' is not an ISO-8601 timestamp"),
        ({"scoring": {"colour": 1}}, "scoring:"),
        ({"profile": {"ttl": 1}}, "profile:"),
    ],
)
def test_invalid_config_names_the_problem(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[feature]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_action_validity_window() -> None:
    cfg = parse_config({"placement": [{"id": "p"}], "action": [
        {"id": "a", "placements": ["p"], "valid_from": "2030-01-01T00:00:00Z"}]})
    a = cfg.actions["a"]
    assert not a.is_valid_at(0.0)
    assert a.is_valid_at(1.9e9)
