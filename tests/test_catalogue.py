"""The catalogue's pure logic (engine/catalogue.py): which version of an action applies, retirement, the
configuration loader's checks with paths that name the request, and the admin API's body bounds."""

from __future__ import annotations

from typing import Any

import pytest

from engine.catalogue import (
    ACTIVE,
    MAX_ACTION_BYTES,
    MAX_BULK_ITEMS,
    RETIRED,
    Catalogue,
    Entry,
    PlacementEntry,
    build,
    check_actions,
    check_placement,
    json_table,
    view,
)
from engine.config.compose import load_document
from engine.settings import REPO_ROOT
from serving.admin import Refused, bulk_items

SEED: dict[str, Any] = {
    "segment": [{"id": "vip", "all": [{"metric": "monetary", "min": 100.0}]}],
    "placement": [{"id": "home", "max_items": 3}, {"id": "recs"}],
    "action": [{"id": "a", "placements": ["home"], "title": "file"},
               {"id": "b", "placements": ["home"], "valid_from": "2020-01-01T00:00:00Z"}],
}


def test_an_entry_wins_over_the_file_and_a_reset_brings_the_file_back() -> None:
    cat = Catalogue(2, {"a": Entry(2, ACTIVE, {"id": "a", "placements": ["home", "recs"], "title": "admin"})})
    cfg = build(SEED, cat)
    assert cfg.actions["a"].title == "admin" and cfg.actions["a"].placements == ("home", "recs")
    assert [a.id for a in cfg.actions_for("recs")] == ["a"]
    assert build(SEED, Catalogue(3)).actions["a"].title == "file"  # the entry deleted (reset)
    assert view(SEED, cat, "a")["source"] == "admin over file"  # type: ignore[index]
    assert view(SEED, cat, "zzz") is None


def test_a_retired_action_is_known_but_never_valid_again() -> None:
    later = {"id": "b", "placements": ["home"], "valid_from": "2040-01-01T00:00:00Z"}
    cat = Catalogue(4, {"b": Entry(4, RETIRED, later, retired_at=2_000_000_000.0),
                        "a": Entry(3, RETIRED, dict(SEED["action"][0]), retired_at=1_000.0)})
    cfg = build(SEED, cat)
    a, b = cfg.actions["a"], cfg.actions["b"]
    assert a.valid_to == 1_000.0 and not a.is_valid_at(1_000.0) and a.is_valid_at(999.0)
    # a retirement before its validity started: never valid (no valid_from after valid_to)
    assert b.valid_from is None and b.valid_to == 2_000_000_000.0


def test_an_entry_the_file_no_longer_admits_is_left_out_not_fatal() -> None:
    cat = Catalogue(5, {"c": Entry(5, ACTIVE, {"id": "c", "placements": ["gone"]}),
                        "d": Entry(5, ACTIVE, {"id": "d", "placements": ["recs"]})})
    cfg = build(SEED, cat)
    assert "c" not in cfg.actions and "d" in cfg.actions


def test_placement_entries_change_max_items_only() -> None:
    cfg = build(SEED, Catalogue(1, placements={"home": PlacementEntry(1, {"max_items": 7})}))
    assert cfg.placements["home"].max_items == 7 and cfg.placements["recs"].max_items == 5
    assert check_placement(SEED, Catalogue(), "home", {"max_items": 2}) == []
    assert check_placement(SEED, Catalogue(), "home", {"max_items": 101}) == [
        ("max_items", "expected an integer <= 100, got 101")]
    assert [p for p, _ in check_placement(SEED, Catalogue(), "home", {"holdout_share": 0.5})] == ["holdout_share"]


def test_problems_name_the_request_s_fields() -> None:
    assert check_actions(SEED, [{"id": "x", "placements": ["home"], "audience": {"include": ["gold"]}}], None) == [
        ("audience.include[0]", "unknown segment \"gold\"; expected one of vip")]
    problems = check_actions(SEED, [{"id": "x", "placements": ["home"]}, {"id": "x", "placements": ["recs"],
                                                                           "valid_to": "soon"}], "items")
    assert problems == [("items[1].valid_to", "'soon' is not an ISO-8601 timestamp"),
                        ("items[1].id", 'duplicate action id "x" (first at items[0])')]
    assert check_actions(SEED, [{"id": "y", "placements": ["home"], "valid_from": "2030-01-02T00:00:00Z",
                                 "valid_to": "2030-01-01T00:00:00Z"}], None) == [
        ("valid_to", "expected a time after valid_from")]
    assert check_actions(SEED, [{"id": "ok", "placements": ["home", "recs"], "tags": ["t"]}], "items") == []


def test_the_shipped_file_s_actions_are_valid_entries() -> None:
    """Every action of config/engine.toml, as JSON (TOML date-times as ISO strings), passes as an entry."""
    seed = load_document(REPO_ROOT / "config" / "engine.toml")
    tables = [json_table(a) for a in seed["action"]]
    assert check_actions(seed, tables, "items") == []
    cat = Catalogue(1, {t["id"]: Entry(1, ACTIVE, t) for t in tables})
    assert build(seed, cat).actions == build(seed, Catalogue()).actions


def test_bulk_bodies_are_bounded_by_count_and_item_size() -> None:
    assert bulk_items(b'[{"id": "a"}, {"id": "b"}]', "application/json") == [{"id": "a"}, {"id": "b"}]
    with pytest.raises(Refused) as many:
        bulk_items(b"\n".join([b"{}"] * (MAX_BULK_ITEMS + 1)), "application/x-ndjson")
    assert many.value.status == 413 and str(many.value).startswith("items: ")
    with pytest.raises(Refused) as big:
        bulk_items(b'{"id": "a"}\n{"id": "' + b"x" * MAX_ACTION_BYTES + b'"}', "application/x-ndjson")
    assert big.value.status == 413 and str(big.value).startswith("items[1]: ")
    with pytest.raises(Refused) as bad:
        bulk_items(b'{"id": "a"}\n{"id": ', "application/x-ndjson")
    assert bad.value.status == 400 and str(bad.value).startswith("items[1]: not JSON")
    with pytest.raises(Refused) as empty:
        bulk_items(b"[]", "application/json")
    assert empty.value.status == 422
