"""Configuration composition: a file ``include``\\ s others and overlays them; callers add overlays.

Merge rules (the overlay wins):

* tables merge key by key, recursively;
* the arrays of tables ``[[feature]]``, ``[[placement]]`` and ``[[action]]`` merge by identity (a
  feature's ``name``, a placement's or action's ``id``): an element with a known identity is merged into
  that element, others are appended in order;
* free-form tables (``policy_params``, ``params``, ``payload``, ``weights``) and every other value
  (numbers, strings, arrays) are replaced whole: their parts belong together;
* a top-level key listed in the overlay's ``replace = [...]`` is replaced whole, e.g. a catalogue that
  replaces the base's actions with ``replace = ["action"]``.

``include = ["base.toml"]`` paths are relative to the including file; included files are merged in
order, then the including file on top. ``include`` and ``replace`` are resolved here: the composed
document has neither.

>>> base = {"placement": [{"id": "p", "policy": "linucb", "policy_params": {"alpha": 0.3}}],
...         "action": [{"id": "old", "placements": ["p"]}]}
>>> top = {"replace": ["action"], "placement": [{"id": "p", "policy_params": {}}, {"id": "q"}],
...        "action": [{"id": "new", "placements": ["q"]}]}
>>> composed = overlay(base, top)
>>> composed["placement"]
[{'id': 'p', 'policy': 'linucb', 'policy_params': {}}, {'id': 'q'}]
>>> [a["id"] for a in composed["action"]]
['new']
>>> tomllib.loads(dumps(composed)) == composed
True
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from engine.config.errors import ConfigError, Problem

#: Arrays of tables merged element by element, keyed by this field.
KEYED = {"feature": "name", "segment": "id", "placement": "id", "action": "id"}
#: Tables whose keys belong together: an overlay replaces them whole.
OPAQUE = frozenset({"policy_params", "params", "payload", "weights"})
#: Top-level keys a ``replace`` list may name.
TOP_LEVEL = ("profile", "privacy", "feature", "segment", "collaborative", "scoring", "placement", "action", "clusters")
#: An include chain deeper than this is a mistake (or a loop through differently spelled paths).
MAX_INCLUDE_DEPTH = 8


def load_document(path: Path | str, overlays: Sequence[Path | str | Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The composed document of a file (with its includes) and then each overlay (file or mapping)."""
    doc = _read(Path(path), ())
    doc.pop("replace", None)  # nothing below the first file to replace
    for layer in overlays:
        if isinstance(layer, Path | str):
            doc = overlay(doc, _read(Path(layer), ()), str(layer))
        else:
            if "include" in layer:
                raise ConfigError([("include", "only a file can include others")], "<overlay mapping>")
            doc = overlay(doc, layer)
    return doc


def overlay(base: Mapping[str, Any], layer: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """``layer`` merged onto ``base`` by the rules above (neither is modified)."""
    layer = dict(layer)
    replace = layer.pop("replace", [])
    problems: list[Problem] = []
    if not isinstance(replace, list):
        problems.append(("replace", f"expected an array of top-level keys ({', '.join(TOP_LEVEL)})"))
        replace = []
    for i, key in enumerate(replace):
        if key not in TOP_LEVEL:
            problems.append((f"replace[{i}]", f"expected one of {', '.join(TOP_LEVEL)}, got {key!r}"))
    if problems:
        raise ConfigError(problems, source)
    out = dict(base)
    for key, value in layer.items():
        out[key] = value if key in replace or key not in out else _merge(key, out[key], value, top=True)
    return out


def _merge(key: str, base: Any, value: Any, top: bool = False) -> Any:
    if top and key in KEYED and isinstance(base, list) and isinstance(value, list):
        return _merge_keyed(base, value, KEYED[key])
    if isinstance(base, Mapping) and isinstance(value, Mapping) and key not in OPAQUE:
        out = dict(base)
        for k, v in value.items():
            out[k] = _merge(k, out[k], v) if k in out else v
        return out
    return value


def _merge_keyed(base: list[Any], value: list[Any], ident: str) -> list[Any]:
    out = list(base)
    index = {e[ident]: i for i, e in enumerate(out) if isinstance(e, Mapping) and isinstance(e.get(ident), str)}
    for element in value:
        at = index.get(element.get(ident)) if isinstance(element, Mapping) else None
        if at is None:
            out.append(element)
        else:
            out[at] = _merge("", out[at], element)
    return out


def _read(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([("", "file not found")], source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"cannot read: {exc}")], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"invalid TOML: {exc}")], source) from None
    includes = raw.pop("include", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError([("include", "expected an array of file names (relative to this file)")], source)
    resolved = path.resolve()
    if resolved in chain or len(chain) >= MAX_INCLUDE_DEPTH:
        trail = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError([("include", f"include loop or chain deeper than {MAX_INCLUDE_DEPTH}: {trail}")], source)
    doc: dict[str, Any] = {}
    for i, name in enumerate(includes):
        target = path.parent / name
        if not target.is_file():
            raise ConfigError([(f"include[{i}]", f"file not found: {target}")], source)
        doc = overlay(doc, _read(target, (*chain, resolved)), str(target))
    replace = raw.get("replace")
    out = overlay(doc, raw, source)
    if replace is not None:  # also applies to what this file is itself overlaid on
        out["replace"] = replace
    return out


# --------------------------------------------------------------------------------------------------
# writing: documents built as data (benchmarks, tests) written as files other processes load


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps(doc: Mapping[str, Any]) -> str:
    """A document as TOML: top-level tables as ``[table]``, arrays of tables as ``[[table]]``, the rest inline.

    >>> print(dumps({"include": ["base.toml"], "profile": {"ttl_days": 1}, "placement": [{"id": "p"}]}), end="")
    include = ["base.toml"]
    <BLANKLINE>
    [profile]
    ttl_days = 1
    <BLANKLINE>
    [[placement]]
    id = "p"
    """
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not _is_table(v) and not _is_tables(v)]
    for k, v in doc.items():
        if _is_table(v):
            lines += ["", f"[{_key(k)}]", *(f"{_key(kk)} = {_value(vv)}" for kk, vv in v.items())]
        elif _is_tables(v):
            for element in v:
                lines += ["", f"[[{_key(k)}]]", *(f"{_key(kk)} = {_value(vv)}" for kk, vv in element.items())]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping)


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(e, Mapping) for e in v)


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML's basic-string escapes
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
