import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.config import WINDOWS, ConfigError, load_config, parse_config
from engine.config.__main__ import schema_text
from engine.config.compose import dumps, load_document, overlay
from engine.config.schema import FEATURE_KINDS, WindowName, event_types
from engine.settings import REPO_ROOT

SHIPPED = REPO_ROOT / "config" / "engine.toml"
#: Every TOML the project ships except pyproject.toml: each is a configuration that must load.
SHIPPED_TOML = sorted(p for p in REPO_ROOT.glob("**/*.toml")
                      if p.name != "pyproject.toml" and not {".venv", ".cache", ".git"} & set(p.parts))


def affinity(**extra: Any) -> dict[str, Any]:
    return {"name": "category", "kind": "affinity", "field": "category", "weights": {"click": 1.0}, **extra}


def problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="t.toml")
    assert str(info.value).startswith("t.toml: ")
    return info.value.problems


def test_shipped_config_loads() -> None:
    cfg = load_config(SHIPPED)
    assert {"home_hero", "product_recs"} <= set(cfg.placements)
    assert [f.name for f in cfg.affinities] == ["category", "item"]
    assert all(cfg.actions_for(p) for p in cfg.placements)
    assert cfg.placements["product_recs"].learning.policy == "linear_thompson"
    assert cfg.profile.ttl_days == 90 and cfg.profile.dedup_window == 64


@pytest.mark.parametrize("path", SHIPPED_TOML, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_toml_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.placements and cfg.actions


def test_the_shipped_toml_files_are_found() -> None:
    names = {str(p.relative_to(REPO_ROOT)) for p in SHIPPED_TOML}
    assert {"config/engine.toml", "bench/catalogue.toml", "bench/config/simulator.toml"} <= names


# ---- the cases of issue 14: each fails with a named problem at its path ------------------------


@pytest.mark.parametrize(
    ("raw", "path", "expected"),
    [
        pytest.param({"placement": [{"id": "a"}, {"id": "b", "polcy": "linucb"}]},
                     "placement[1].polcy", "unknown key; expected one of id, max_items, policy", id="polcy"),
        pytest.param({"features": [affinity()]}, "features", "did you mean 'feature'?", id="features-typo"),
        pytest.param({"feature": [affinity(half_life_hour=1)]}, "feature[0].half_life_hour",
                     "did you mean 'half_life_hours'?", id="half_life_hour"),
        pytest.param({"profile": {"ttl_days": "ninety"}}, "profile.ttl_days", 'expected a number, got "ninety"',
                     id="ttl_days-string"),
        pytest.param({"placement": [{"id": "a"}, {"id": "a"}]}, "placement[1].id",
                     'duplicate placement id "a" (first at placement[0])', id="duplicate-placement"),
        pytest.param({"placement": [{"id": "a", "max_items": 0}]}, "placement[0].max_items",
                     "expected an integer >= 1, got 0", id="max_items-0"),
        pytest.param({"profile": {"dedup_window": -1}}, "profile.dedup_window", "expected an integer >= 1, got -1",
                     id="dedup_window-negative"),
        pytest.param({"feature": [affinity(weights={"click": "lots"})]}, "feature[0].weights.click",
                     'expected a number, got "lots"', id="weight-lots"),
        pytest.param({"feature": [affinity(top_k="many")]}, "feature[0].top_k", 'expected an integer, got "many"',
                     id="top_k-string"),
        pytest.param({"feature": [affinity(name=5)]}, "feature[0].name", "expected a string, got 5", id="name-5"),
        pytest.param({"feature": [affinity(top_k=True)]}, "feature[0].top_k", "expected an integer, got true",
                     id="top_k-bool"),
        pytest.param({"scoring": {"item_weight": float("nan")}}, "scoring.item_weight", "expected a finite number",
                     id="nan"),
        pytest.param({"profile": {"ttl_days": float("inf")}}, "profile.ttl_days", "expected a finite number",
                     id="inf"),
        pytest.param({"collaborative": {"enabled": 1}}, "collaborative.enabled", "expected true or false, got 1",
                     id="enabled-int"),
        pytest.param({"feature": [affinity(weights={"pageview": 1})]}, "feature[0].weights.pageview",
                     "unknown event type 'pageview'", id="weight-unknown-event"),
        pytest.param({"collaborative": {"weights": {"pageview": 1}}}, "collaborative.weights.pageview",
                     "unknown event type 'pageview'", id="collaborative-weight-unknown-event"),
        pytest.param({"feature": [{"name": "x", "kind": "recent", "field": "item_id", "events": ["clik"]}]},
                     "feature[0].events[0]", "unknown event type 'clik'", id="recent-unknown-event"),
        pytest.param({"feature": [{"name": "x", "kind": "window", "events": ["click"], "windows": ["2h"]}]},
                     "feature[0].windows[0]", "expected one of '1h', '24h' or '7d', got \"2h\"", id="window"),
        pytest.param({"feature": [affinity(), affinity()]}, "feature[1].name", "duplicate feature name",
                     id="duplicate-feature"),
        pytest.param({"feature": [{"name": "x", "kind": "count", "events": ["click"]}]}, "feature[0].kind",
                     "unknown kind \"count\"; expected one of affinity, recent, window", id="kind-count"),
        pytest.param({"feature": [{"name": "x"}]}, "feature[0].kind", "is required", id="kind-missing"),
        pytest.param({"feature": [{"name": "has space", "kind": "recent", "field": "item_id", "events": ["click"]}]},
                     "feature[0].name", "expected a string matching", id="name-pattern"),
        pytest.param({"placement": [{"id": "p"}], "action": [{"id": "a", "placements": ["p"]},
                                                            {"id": "a", "placements": ["p"]}]},
                     "action[1].id", "duplicate action id", id="duplicate-action"),
        pytest.param({"placement": [{"id": "p"}], "action": [{"id": "a", "placements": ["p", "nowhere"]}]},
                     "action[0].placements[1]", 'unknown placement "nowhere"; expected one of p', id="dangling"),
        pytest.param({"placement": [{"id": "p"}], "action": [{"id": "a", "placements": ["p", "p"]}]},
                     "action[0].placements", "listed twice", id="placement-twice"),
        pytest.param({"placement": [{"id": "p"}], "action": [{"id": "a"}]}, "action[0].placements", "is required",
                     id="placements-missing"),
        pytest.param({"placement": [{"id": "p", "policy": "lnucb"}]}, "placement[0].policy",
                     'unknown policy "lnucb"; expected one of affinity_popularity, ', id="unknown-policy"),
        pytest.param({"placement": [{"id": "p", "holdout_policy": "nope"}]}, "placement[0].holdout_policy",
                     "unknown policy", id="unknown-holdout-policy"),
        pytest.param({"placement": [{"id": "p", "policy": "linucb", "policy_params": {"alfa": 1}}]},
                     "placement[0].policy_params", "linucb takes alpha", id="policy-params"),
        pytest.param({"placement": [{"id": "p", "holdout_share": 1.0}]}, "placement[0].holdout_share",
                     "expected a number < 1.0", id="holdout-share"),
        pytest.param({"placement": [{"id": "p", "reward": {"aggregation": "avg"}}]},
                     "placement[0].reward.aggregation", "expected one of 'first', 'sum' or 'max'", id="aggregation"),
        pytest.param({"placement": [{"id": "p", "reward": {"window_seconds": 0}}]},
                     "placement[0].reward.window_seconds", "expected a number > 0", id="reward-window"),
        pytest.param({"placement": [{"id": "p"}], "action": [{"id": "a", "placements": ["p"], "valid_to": "soon"}]},
                     "action[0].valid_to", "'soon' is not an ISO-8601 timestamp", id="timestamp"),
        pytest.param({"placement": [{"id": "p"}], "action": [{"id": "a", "placements": ["p"],
                                                             "valid_from": "2030-01-02T00:00:00Z",
                                                             "valid_to": "2030-01-01T00:00:00Z"}]},
                     "action[0].valid_to", "after valid_from", id="validity-reversed"),
        pytest.param({"collaborative": {"params": {"topk": 3}}}, "collaborative.params", "it takes top_k",
                     id="collaborative-params"),
        pytest.param({"scoring": {"colour": 1}}, "scoring.colour", "unknown key", id="scoring-key"),
        pytest.param({"privacy": {"consent_mode": "optin"}}, "privacy.consent_mode",
                     "expected one of 'opt_in' or 'opt_out', got \"optin\"", id="consent_mode-typo"),
        pytest.param({"privacy": {"consent_mode": True}}, "privacy.consent_mode",
                     "expected one of 'opt_in' or 'opt_out', got true", id="consent_mode-bool"),
        pytest.param({"privacy": {"mode": "opt_in"}}, "privacy.mode", "unknown key; expected one of consent_mode",
                     id="privacy-key"),
        pytest.param({"privacy": "opt_in"}, "privacy", "expected a table", id="privacy-not-table"),
        pytest.param({"placement": {"id": "p"}}, "placement", "expected an array", id="placement-not-array"),
    ],
)
def test_invalid_config_names_the_path_and_the_expectation(raw: dict[str, Any], path: str, expected: str) -> None:
    found = problems(raw)
    assert any(p == path and expected in what for p, what in found), found


def test_every_problem_of_a_file_is_reported_together() -> None:
    found = problems({
        "profile": {"ttl_days": "ninety", "dedup_window": -1},
        "feature": [affinity(top_k="many")],
        "placement": [{"id": "a", "polcy": "linucb"}, {"id": "a"}],
        "action": [{"id": "x", "placements": ["b"]}],
    })
    assert {p for p, _ in found} == {"profile.ttl_days", "profile.dedup_window", "feature[0].top_k",
                                     "placement[0].polcy", "placement[1].id", "action[0].placements[0]"}


def test_errors_of_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text('[[placement]]\nid = "a"\npolcy = "linucb"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: placement\[0\]\.polcy: unknown key"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[feature]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_the_consent_mode_defaults_to_opt_out_and_the_shipped_file_says_so() -> None:
    assert parse_config({}).privacy.consent_mode == "opt_out"
    assert parse_config({"privacy": {"consent_mode": "opt_in"}}).privacy.consent_mode == "opt_in"
    assert load_config(REPO_ROOT / "config" / "engine.toml").privacy.consent_mode == "opt_out"


def test_action_validity_window() -> None:
    cfg = parse_config({"placement": [{"id": "p"}], "action": [
        {"id": "a", "placements": ["p"], "valid_from": "2030-01-01T00:00:00Z"}]})
    a = cfg.actions["a"]
    assert not a.is_valid_at(0.0)
    assert a.is_valid_at(1.9e9)
    from_toml = parse_config(tomllib.loads('[[placement]]\nid = "p"\n[[action]]\nid = "a"\nplacements = ["p"]\n'
                                           "valid_from = 2030-01-01T00:00:00Z\n"))
    assert from_toml.actions["a"].valid_from == a.valid_from


def test_event_types_come_from_the_schemas() -> None:
    envelope = json.loads((REPO_ROOT / "schemas" / "json" / "envelope.v1.schema.json").read_text())
    assert list(event_types()) == envelope["properties"]["type"]["enum"]
    import schemas

    assert event_types() == schemas.EVENT_TYPES


def test_the_window_names_are_the_windows() -> None:
    from typing import get_args

    assert set(get_args(WindowName)) == set(WINDOWS)
    assert "count" not in FEATURE_KINDS


# ---- composition --------------------------------------------------------------------------------


def test_include_overlays_the_included_file(tmp_path: Path) -> None:
    top = tmp_path / "top.toml"
    top.write_text(dumps({
        "include": [str(SHIPPED)],
        "profile": {"ttl_days": 1},
        "placement": [{"id": "product_recs", "policy": "linucb", "policy_params": {"alpha": 0.2}},
                      {"id": "new"}],
        "action": [{"id": "extra", "placements": ["new"]}],
    }))
    base, cfg = load_config(SHIPPED), load_config(top)
    assert cfg.profile.ttl_days == 1 and cfg.profile.dedup_window == base.profile.dedup_window
    recs = cfg.placements["product_recs"]
    assert recs.learning.policy == "linucb" and dict(recs.learning.params) == {"alpha": 0.2}  # params: whole
    assert recs.learning.holdout_share == base.placements["product_recs"].learning.holdout_share  # merged
    assert list(cfg.placements) == [*base.placements, "new"]
    assert list(cfg.actions) == [*base.actions, "extra"]
    assert cfg.affinities == base.affinities


def test_replace_drops_the_base_array(tmp_path: Path) -> None:
    top = tmp_path / "top.toml"
    top.write_text(dumps({"include": [str(SHIPPED)], "replace": ["action"],
                          "action": [{"id": "only", "placements": ["home_hero"]}]}))
    assert list(load_config(top).actions) == ["only"]


def test_overlays_of_load_config() -> None:
    cfg = load_config(SHIPPED, overlays=[{"placement": [{"id": "home_hero", "max_items": 2}]},
                                         {"scoring": {"tag_weight": 0.0}}])
    assert cfg.placements["home_hero"].max_items == 2 and cfg.scoring.tag_weight == 0.0
    with pytest.raises(ConfigError, match=r"with overlays <mapping>: placement\[0\]\.max_items"):
        load_config(SHIPPED, overlays=[{"placement": [{"id": "home_hero", "max_items": 0}]}])


def test_include_problems(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('include = ["b.toml"]\n')
    b.write_text('include = ["a.toml"]\n')
    with pytest.raises(ConfigError, match="include loop"):
        load_config(a)
    b.write_text('include = ["missing.toml"]\n')
    with pytest.raises(ConfigError, match=r"include\[0\]: file not found"):
        load_config(a)
    b.write_text('replace = ["actions"]\n')
    with pytest.raises(ConfigError, match=r"replace\[0\]: expected one of"):
        load_config(a)


def test_merge_rules() -> None:
    base: dict[str, Any] = {"feature": [{"name": "f", "kind": "affinity", "weights": {"click": 1, "page_view": 1}}],
            "collaborative": {"enabled": True, "params": {"top_k": 5}}}
    top = {"feature": [{"name": "f", "weights": {"click": 2}}], "collaborative": {"params": {"history_size": 3}}}
    out = overlay(base, top)
    assert out["feature"] == [{"name": "f", "kind": "affinity", "weights": {"click": 2}}]
    assert out["collaborative"] == {"enabled": True, "params": {"history_size": 3}}
    assert base["collaborative"]["params"] == {"top_k": 5}  # inputs untouched


def test_dumps_round_trips_every_shipped_file() -> None:
    for path in SHIPPED_TOML:
        doc = load_document(path)
        assert tomllib.loads(dumps(doc)) == doc, path


# ---- the command and the JSON Schema -------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.config", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)


def test_cli_validates_a_good_file() -> None:
    done = run_cli(str(SHIPPED))
    assert done.returncode == 0, done.stderr
    cfg = load_config(SHIPPED)
    assert done.stdout.count("\n") == 1
    assert f"{len(cfg.placements)} placements" in done.stdout and f"{len(cfg.actions)} actions" in done.stdout
    assert "6 features" in done.stdout


def test_cli_reports_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[profile]\nttl_days = "ninety"\n\n[[placement]]\nid = "a"\npolcy = "linucb"\n')
    done = run_cli(str(bad))
    assert done.returncode == 1 and done.stdout == ""
    assert f"{bad}: 2 problems" in done.stderr
    assert "profile.ttl_days: expected a number" in done.stderr and "placement[0].polcy: unknown key" in done.stderr


def test_the_json_schema_file_is_current() -> None:
    current = (REPO_ROOT / "config" / "engine.schema.json").read_text()
    assert current == schema_text(), "regenerate it: python -m engine.config --schema config/engine.schema.json"


def test_the_json_schema_accepts_the_shipped_config_and_rejects_a_typo() -> None:
    import fastjsonschema

    schema = json.loads(schema_text())
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"  # fastjsonschema's newest draft
    validate = fastjsonschema.compile(schema)
    raw = json.loads(json.dumps(tomllib.loads(SHIPPED.read_text()), default=str))
    validate(raw)
    raw["placement"][0]["polcy"] = "linucb"
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate(raw)
