"""The catalogue as data: actions and placement settings changed at run time, on top of the configuration file.

The configuration file (``config/engine.toml``) is the *seed*: its ``[[action]]`` and ``[[placement]]`` tables
are the reviewed defaults. The admin API (``serving/admin.py``) keeps *entries* in Redis
(``engine/catalogue_store.py``): an action entry holds the action's table exactly as the configuration schema
reads it (``engine.config.schema.Action``, as JSON), so every field the schema gains flows through unchanged,
and every entry is checked by the configuration loader itself (:func:`check_actions`: the same rules, the
same messages, the path naming the request's field).

When both define an action, **the entry wins** until it is reset (``POST /v1/admin/actions/{id}/reset``
deletes the entry and the file's version applies again). A *retired* action stays known (reports, an
explanation, the decisions that showed it) but is never eligible again: it is built with ``valid_to`` set
to the moment it was retired. A placement entry overrides the file's ``max_items`` only (its policy, holdout
and learning settings stay reviewed in the file: changing them moves models and experiments).

Every change bumps one catalogue version (decision records carry it as ``catalogue_version``).

>>> seed = {"placement": [{"id": "home"}], "action": [{"id": "a", "placements": ["home"]}]}
>>> cat = Catalogue(3, {"b": Entry(2, ACTIVE, {"id": "b", "placements": ["home"], "title": "new"}),
...                     "a": Entry(3, RETIRED, {"id": "a", "placements": ["home"]}, retired_at=1e9)},
...                 {"home": PlacementEntry(1, {"max_items": 2})})
>>> cfg = build(seed, cat)
>>> sorted(cfg.actions), cfg.actions["a"].valid_to, cfg.placements["home"].max_items
(['a', 'b'], 1000000000.0, 2)
>>> check_actions(seed, [{"id": "c", "placements": ["home"], "tags": "x"}], None)
[('tags', 'expected an array, got "x"')]
>>> check_actions(seed, [{"id": "c", "placements": ["nowhere"], "tags": "x"}], "items")
... # doctest: +NORMALIZE_WHITESPACE
[('items[0].tags', 'expected an array, got "x"'),
 ('items[0].placements[0]', 'unknown placement "nowhere"; expected one of home')]
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import orjson

from engine.config import ConfigError, EngineConfig, parse_config
from engine.config.errors import Problem

log = logging.getLogger(__name__)

ACTIVE, RETIRED = "active", "retired"
STATES = (ACTIVE, RETIRED)
#: What a placement entry may change (the rest of a placement is reviewed in the file).
PLACEMENT_KEYS = ("max_items",)
#: Bounds of the admin API (docs/limits.md): one bulk request, one action's JSON, all entries, one placement.
MAX_BULK_ITEMS = 10_000
MAX_BULK_BYTES = 32 << 20
MAX_ACTION_BYTES = 64 << 10
MAX_ENTRIES = 200_000
#: A decision record lists the candidates it chose from (schemas/json/decision.v1.schema.json: maxItems).
MAX_PLACEMENT_ACTIONS = 10_000

_ACTION_AT = re.compile(r"\baction\[(\d+)\]")
_PLACEMENT_AT = re.compile(r"\bplacement\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Entry:
    """An action as the admin API last wrote it. ``rev``: the catalogue version of that write (its ETag)."""

    rev: int
    state: str
    table: Mapping[str, Any]
    retired_at: float | None = None

    def to_json(self) -> str:
        """
        >>> Entry.from_json(Entry(4, RETIRED, {"id": "a"}, 5.0).to_json())
        Entry(rev=4, state='retired', table={'id': 'a'}, retired_at=5.0)
        """
        body: dict[str, Any] = {"rev": self.rev, "state": self.state, "action": self.table}
        if self.retired_at is not None:
            body["retired_at"] = self.retired_at
        return orjson.dumps(body).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Entry:
        body = orjson.loads(raw)
        return cls(int(body["rev"]), str(body["state"]), body["action"], body.get("retired_at"))


@dataclass(frozen=True, slots=True)
class PlacementEntry:
    rev: int
    table: Mapping[str, Any]

    def to_json(self) -> str:
        return orjson.dumps({"rev": self.rev, "placement": self.table}).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> PlacementEntry:
        body = orjson.loads(raw)
        return cls(int(body["rev"]), body["placement"])


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Every entry, as of one version (0: nothing was ever changed, the file alone)."""

    version: int = 0
    actions: Mapping[str, Entry] = field(default_factory=dict)
    placements: Mapping[str, PlacementEntry] = field(default_factory=dict)


def json_table(value: Any) -> Any:
    """A table of the TOML file as JSON can hold it: TOML date-times become ISO-8601 strings (which the
    schema reads back to the same instant).

    >>> json_table({"valid_to": datetime(2030, 1, 1, tzinfo=None), "tags": ["a"]})
    {'valid_to': '2030-01-01T00:00:00', 'tags': ['a']}
    """
    if isinstance(value, Mapping):
        return {k: json_table(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_table(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def seed_actions(seed: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The file's action tables by id."""
    return {a["id"]: a for a in seed.get("action", []) if isinstance(a, Mapping) and isinstance(a.get("id"), str)}


def effective_tables(seed: Mapping[str, Any], cat: Catalogue) -> dict[str, Mapping[str, Any]]:
    """Every action's table as it applies: the file's, replaced by an entry of the same id, then the entries
    of actions the file does not have (retired ones included: they are built as expired)."""
    tables = dict(seed_actions(seed))
    for action_id, entry in cat.actions.items():
        tables[action_id] = entry.table
    return tables


def document(seed: Mapping[str, Any], cat: Catalogue, actions: Sequence[Mapping[str, Any]] | None = None
             ) -> dict[str, Any]:
    """The seed document with the entries applied (or with exactly ``actions`` as its actions)."""
    doc = dict(seed)
    doc["action"] = list(effective_tables(seed, cat).values()) if actions is None else list(actions)
    doc["placement"] = [
        {**p, **cat.placements[p["id"]].table} if isinstance(p, Mapping) and p.get("id") in cat.placements else p
        for p in seed.get("placement", [])
    ]
    return doc


def build(seed: Mapping[str, Any], cat: Catalogue, source: str = "catalogue") -> EngineConfig:
    """The configuration with the catalogue applied. An entry the file no longer admits (say, it names a
    placement a new file removed) is left out and logged, so a file change never stops serving."""
    doc = document(seed, cat)
    try:
        config = parse_config(doc, source)
    except ConfigError as exc:
        bad = {doc["action"][int(m.group(1))].get("id") for path, _ in exc.problems if (m := _ACTION_AT.match(path))}
        bad &= set(cat.actions)
        if not bad:
            raise
        log.warning("catalogue v%s: entries %s no longer valid with the file, left out: %s",
                    cat.version, sorted(bad)[:20], exc)
        cat = dataclasses.replace(cat, actions={k: v for k, v in cat.actions.items() if k not in bad})
        config = parse_config(document(seed, cat), source)
    retired = {k: e.retired_at for k, e in cat.actions.items() if e.state == RETIRED}
    if not retired:
        return config
    actions = dict(config.actions)
    for action_id, at in retired.items():
        a = actions[action_id]
        at = at if at is not None else 0.0
        until = at if a.valid_to is None else min(a.valid_to, at)
        start = a.valid_from if a.valid_from is not None and a.valid_from < until else None
        actions[action_id] = dataclasses.replace(a, valid_from=start, valid_to=until)
    return dataclasses.replace(config, actions=actions)


def view(seed: Mapping[str, Any], cat: Catalogue, action_id: str) -> dict[str, Any] | None:
    """What the admin API shows of an action: its table, state, ETag (``rev``; 0: the file's, unchanged) and
    where it comes from (``file``, ``admin``, or ``admin over file``).

    >>> view({"action": [{"id": "a", "placements": ["p"]}]}, Catalogue(), "a")
    {'id': 'a', 'state': 'active', 'rev': 0, 'source': 'file', 'action': {'id': 'a', 'placements': ['p']}}
    """
    entry, file = cat.actions.get(action_id), seed_actions(seed).get(action_id)
    if entry is None and file is None:
        return None
    if entry is None:
        assert file is not None
        return {"id": action_id, "state": ACTIVE, "rev": 0, "source": "file", "action": json_table(file)}
    out = {"id": action_id, "state": entry.state, "rev": entry.rev,
           "source": "admin" if file is None else "admin over file", "action": entry.table}
    if entry.retired_at is not None:
        out["retired_at"] = entry.retired_at
    return out


def check_actions(seed: Mapping[str, Any], tables: Sequence[Any], where: str | None,
                  cat: Catalogue | None = None) -> list[Problem]:
    """The configuration loader's problems with these action tables, among the file's placements and segments.

    Paths name the request: ``where[i].field`` (a bulk upload's index), or ``field`` when ``where`` is None
    (one action). Only the tables themselves are checked here, not how they combine with other actions.
    """
    doc = document(seed, cat or Catalogue(), actions=tables)
    try:
        parse_config(doc)
    except ConfigError as exc:
        return [(_rename(path, where), _rename(what, where)) for path, what in exc.problems]
    return []


def _rename(text: str, where: str | None) -> str:
    """``action[3].tags`` -> ``items[3].tags`` (or ``tags``)."""
    if where is not None:
        return _ACTION_AT.sub(lambda m: f"{where}[{m.group(1)}]", text)
    return _ACTION_AT.sub("the action", re.sub(r"^action\[\d+\]\.?", "", text))


def check_placement(seed: Mapping[str, Any], cat: Catalogue, placement: str, table: Mapping[str, Any]
                    ) -> list[Problem]:
    """Problems of a placement entry: only ``PLACEMENT_KEYS``, each checked by the configuration loader.

    >>> check_placement({"placement": [{"id": "p"}]}, Catalogue(), "p", {"max_items": 0, "policy": "x"})
    [('policy', 'cannot be changed at run time; it is reviewed in the configuration file (max_items can)'), \
('max_items', 'expected an integer >= 1, got 0')]
    """
    problems: list[Problem] = [
        (key, f"cannot be changed at run time; it is reviewed in the configuration file ({', '.join(PLACEMENT_KEYS)}"
              " can)") for key in table if key not in PLACEMENT_KEYS]
    if problems and not any(k in PLACEMENT_KEYS for k in table):
        return problems
    changed = dataclasses.replace(cat, placements={**cat.placements, placement: PlacementEntry(
        0, {k: v for k, v in table.items() if k in PLACEMENT_KEYS})})
    try:
        parse_config(document(seed, changed, actions=()))
    except ConfigError as exc:
        problems += [(re.sub(r"^placement\[\d+\]\.?", "", path), what) for path, what in exc.problems
                     if _PLACEMENT_AT.match(path)]
    return problems


def placement_sizes(seed: Mapping[str, Any], cat: Catalogue) -> dict[str, int]:
    """How many live (not retired) actions each placement holds."""
    sizes: dict[str, int] = {}
    for action_id, table in effective_tables(seed, cat).items():
        entry = cat.actions.get(action_id)
        if entry is not None and entry.state == RETIRED:
            continue
        for p in table.get("placements") or ():
            if isinstance(p, str):
                sizes[p] = sizes.get(p, 0) + 1
    return sizes


def oversized(seed: Mapping[str, Any], cat: Catalogue) -> list[Problem]:
    """Placements that would hold more than ``MAX_PLACEMENT_ACTIONS`` live actions.

    >>> oversized({"placement": [{"id": "p"}]}, Catalogue(1, {str(i): Entry(1, ACTIVE, {"placements": ["p"]})
    ...                                                        for i in range(MAX_PLACEMENT_ACTIONS + 1)}))
    [('placements', 'placement "p" would hold 10001 actions; at most 10000 (decision records list them)')]
    """
    return [("placements", f'placement "{p}" would hold {n} actions; at most {MAX_PLACEMENT_ACTIONS} '
                           "(decision records list them)")
            for p, n in sorted(placement_sizes(seed, cat).items()) if n > MAX_PLACEMENT_ACTIONS]
