"""Validate a configuration document and build the ``engine.config.model`` objects from it.

All problems of a document are reported together, each with its path (``placement[1].policy``) and
what was expected; structure (keys, types, ranges) and references (duplicate ids, an action naming a
placement that does not exist, a policy name that is not a policy) are both checked.

>>> parse_config({"profile": {"ttl_day": 1}, "placement": [{"id": "p", "max_items": 0}]})
... # doctest: +NORMALIZE_WHITESPACE
Traceback (most recent call last):
...
engine.config.ConfigError: 2 problems
  profile.ttl_day: unknown key; expected one of ttl_days, session_timeout_minutes, dedup_window
    (did you mean 'ttl_days'?)
  placement[0].max_items: expected an integer >= 1, got 0
"""

from __future__ import annotations

import difflib
import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from engine.config import model, schema
from engine.config.compose import load_document
from engine.config.errors import ConfigError, Problem, show

_TYPES = {
    "int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
    "list_type": "an array", "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
    "finite_number": "a finite number", "int_from_float": "an integer", "int_parsing": "an integer",
    "float_parsing": "a number",
}
_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_KINDS = {"affinity": schema.AffinityFeature, "recent": schema.RecentFeature, "window": schema.WindowFeature}
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_config(raw: Mapping[str, Any], source: str | None = None) -> model.EngineConfig:
    """Check a parsed document (a TOML file's mapping) and build the configuration from it.

    ``source`` names the file in error messages. ``include`` and ``replace`` are resolved by
    :func:`load_config`; here they are accepted and ignored.
    """
    problems: list[Problem] = []
    doc: schema.Document | None = None
    try:
        doc = schema.Document.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_problem(e) for e in exc.errors(include_url=False))
    problems.extend(_references(raw))
    if doc is not None and not problems:
        problems.extend(_segment_references(doc))
        problems.extend(_components(doc))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    assert doc is not None
    return _build(doc)


def load_config(path: Path | str, overlays: Sequence[Path | str | Mapping[str, Any]] = ()) -> model.EngineConfig:
    """Load, compose (``include``, then each overlay on top) and check a configuration file.

    See :mod:`engine.config.compose` for how documents are merged.
    """
    raw = load_document(path, overlays)
    source = str(path) if not overlays else f"{path} with overlays {', '.join(_name(o) for o in overlays)}"
    return parse_config(raw, source)


def _name(overlay: Path | str | Mapping[str, Any]) -> str:
    return str(overlay) if isinstance(overlay, Path | str) else "<mapping>"


# --------------------------------------------------------------------------------------------------
# structure: pydantic's errors as paths and expectations


def _path(loc: Sequence[int | str]) -> str:
    """``('feature', 0, 'affinity', 'top_k')`` -> ``feature[0].top_k`` (the union tag is not a key)."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]" or (isinstance(prev, int) and part in _KINDS and loc[0] == "feature"):
            pass
        else:
            key = part if _BARE.match(part) else show(part)
            out += f".{key}" if out else key
        prev = part
    return out


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The table (model) that holds the last element of ``loc``, to list its keys."""
    current: Any = schema.Document
    for part in loc[:-1]:
        if isinstance(part, int) or part == "[key]":
            continue
        if current is _KINDS:
            current = _KINDS.get(part)
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            current = _inner(current.model_fields[part].annotation)
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner(annotation: Any) -> Any:
    """The model inside ``list[X]`` / ``X | None`` / ``Annotated[...]``; the kinds map for the feature union."""
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        t = stack.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            found.append(t)
        else:
            stack.extend(a for a in typing.get_args(t) if not isinstance(a, str | int | float))
    if len(found) > 1:
        return _KINDS
    return found[0] if found else None


def _problem(e: ErrorDetails) -> Problem:
    loc, kind, ctx, value = e["loc"], e["type"], e.get("ctx") or {}, e.get("input")
    path = _path(loc)
    if kind == "extra_forbidden":
        holder = _model_at(loc)
        keys = list(holder.model_fields) if holder else []
        what = "unknown key"
        if keys:
            what += f"; expected one of {', '.join(keys)}"
            close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
            if close:
                what += f" (did you mean {close[0]!r}?)"
        return path, what
    if kind == "missing":
        return path, "is required"
    if kind == "union_tag_invalid":
        what = f"unknown kind {show(ctx.get('tag'))}; expected one of {', '.join(schema.FEATURE_KINDS)}"
        if ctx.get("tag") == "count":
            what += " (counts per event type are always kept; kind = \"window\" counts over time)"
        return f"{path}.kind", what
    if kind == "union_tag_not_found":
        return f"{path}.kind", f"is required: one of {', '.join(schema.FEATURE_KINDS)}"
    if kind in _TYPES:
        return path, f"expected {_TYPES[kind]}, got {show(value)}"
    for op, sign in _OPS.items():
        if op in ctx and kind.startswith(("greater", "less")):
            number = "an integer" if isinstance(ctx[op], int) and isinstance(value, int) else "a number"
            return path, f"expected {number} {sign} {ctx[op]}, got {show(value)}"
    if kind == "literal_error":
        return path, f"expected one of {ctx.get('expected')}, got {show(value)}"
    if kind == "string_too_short":
        return path, "expected a non-empty string"
    if kind == "string_too_long":
        return path, f"expected at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return path, f"expected a string matching {ctx.get('pattern')}, got {show(value)}"
    if kind == "too_short":
        return path, f"expected at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return path, f"expected at most {ctx.get('max_length')} item(s)"
    if kind == "value_error":
        return path, str(ctx.get("error", e["msg"]))
    return path, e["msg"]


# --------------------------------------------------------------------------------------------------
# references: duplicate ids, dangling names


def _references(raw: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for table, key in (("feature", "name"), ("segment", "id"), ("placement", "id"), ("action", "id")):
        seen: dict[str, int] = {}
        for i, element in enumerate(_tables(raw, table)):
            value = element.get(key)
            if isinstance(value, str):
                if value in seen:
                    problems.append((f"{table}[{i}].{key}", f"duplicate {table} {key} {show(value)} "
                                                            f"(first at {table}[{seen[value]}])"))
                else:
                    seen[value] = i
    placements = [p["id"] for p in _tables(raw, "placement") if isinstance(p.get("id"), str)]
    for i, action in enumerate(_tables(raw, "action")):
        names = action.get("placements")
        for j, name in enumerate(names if isinstance(names, list) else []):
            if isinstance(name, str) and name not in placements:
                problems.append((f"action[{i}].placements[{j}]",
                                 f"unknown placement {show(name)}; expected one of {_listing(placements)}"))
    learners = _policy_names()
    for i, placement in enumerate(_tables(raw, "placement")):
        for key in ("policy", "holdout_policy"):
            name = placement.get(key)
            if isinstance(name, str) and name != model.BASELINE_POLICY:
                known = learners()
                if name not in known:
                    problems.append((f"placement[{i}].{key}", f"unknown policy {show(name)}; expected one of "
                                                              f"{', '.join([model.BASELINE_POLICY, *known])}"))
    return problems


def _segment_references(doc: schema.Document) -> list[Problem]:
    """Features a condition names exist and have the kind and window it needs; a segment a condition or an
    audience names is declared (a condition's: earlier, so membership never goes round in a circle)."""
    problems: list[Problem] = []
    windows = {f.name: f.windows for f in doc.feature if isinstance(f, schema.WindowFeature)}
    affinities = [f.name for f in doc.feature if isinstance(f, schema.AffinityFeature)]
    declared = [s.id for s in doc.segment]
    for i, seg in enumerate(doc.segment):
        for part in ("all", "any", "none"):
            for j, c in enumerate(getattr(seg, part)):
                at = f"segment[{i}].{part}[{j}]"
                if c.window is not None:
                    if c.window not in windows:
                        problems.append((f"{at}.window", f"unknown window feature {show(c.window)}; expected one "
                                                         f"of {', '.join(windows) or '(none is declared)'}"))
                    elif c.span not in windows[c.window]:
                        problems.append((f"{at}.span", f"feature {show(c.window)} keeps {', '.join(windows[c.window])}"
                                                       f", not {show(c.span)}"))
                if c.affinity is not None and c.affinity not in affinities:
                    problems.append((f"{at}.affinity", f"unknown affinity feature {show(c.affinity)}; expected one "
                                                       f"of {', '.join(affinities) or '(none is declared)'}"))
                if c.segment is not None and c.segment not in declared[:i]:
                    problems.append((f"{at}.segment", f"segment {show(c.segment)} is not declared before "
                                                      f"segment[{i}]" + (" (a segment cannot name itself or a later "
                                                                         "one)" if c.segment in declared else "")))
    clusters = doc.clusters
    if clusters.enabled and clusters.feature not in affinities:
        problems.append(("clusters.feature", f"unknown affinity feature {show(clusters.feature)}; expected one of "
                                             f"{', '.join(affinities) or '(none is declared)'}"))
    for i, action in enumerate(doc.action):
        for key in ("include", "exclude"):
            for j, name in enumerate(getattr(action.audience, key) if action.audience else []):
                if name.startswith("cluster:"):  # a behavioural cluster (engine/clusters.py)
                    if not clusters.enabled or int(name[8:]) >= clusters.k:
                        problems.append((f"action[{i}].audience.{key}[{j}]",
                                         f"{show(name)}: clusters are {'off' if not clusters.enabled else ''}"
                                         f"{f'cluster:0 to cluster:{clusters.k - 1}' if clusters.enabled else ''}"
                                         " ([clusters] enabled, k)"))
                elif name not in declared:
                    problems.append((f"action[{i}].audience.{key}[{j}]",
                                     f"unknown segment {show(name)}; expected one of "
                                     f"{', '.join(declared) or '(no segment is declared)'}"))
    return problems


def _tables(raw: Mapping[str, Any], table: str) -> list[Mapping[str, Any]]:
    value = raw.get(table)
    return [e for e in value if isinstance(e, Mapping)] if isinstance(value, list) else []


def _listing(names: Sequence[str]) -> str:
    if not names:
        return "(no placement is declared)"
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")


def _policy_names() -> typing.Callable[[], list[str]]:
    """The learners' names, imported only when a placement names one (policies import numpy and river)."""
    cached: list[list[str]] = []

    def names() -> list[str]:
        if not cached:
            from engine.policies import POLICIES

            cached.append(sorted(POLICIES))
        return cached[0]

    return names


def _components(doc: schema.Document) -> list[Problem]:
    """Parameters handed to policies and to the co-visitation model: they check their own."""
    problems: list[Problem] = []
    for i, p in enumerate(doc.placement):
        for key, name, params in (("policy", p.policy, p.policy_params), ("holdout_policy", p.holdout_policy, {})):
            if name == model.BASELINE_POLICY:
                continue
            from engine.policies import make_policy

            try:
                make_policy(name, **params)
            except TypeError as exc:
                problems.append((f"placement[{i}].policy_params", f"{exc}; {name} takes {_keywords(name)}"))
            except ValueError as exc:
                problems.append((f"placement[{i}].{'policy_params' if params else key}", str(exc)))
    for i, a in enumerate(doc.action):
        if a.valid_from is not None and a.valid_to is not None and a.valid_to <= a.valid_from:
            problems.append((f"action[{i}].valid_to", "expected a time after valid_from"))
    actions = {a.id for a in doc.action}
    for name in doc.attribution.cost_per_impression.actions:
        if name not in actions:
            problems.append((f"attribution.cost_per_impression.actions.{name}",
                             f"unknown action {show(name)}; expected one of {', '.join(sorted(actions)[:10])}"
                             if actions else f"unknown action {show(name)}; no action is declared"))
    if "purchase" in doc.attribution.goals:
        problems.append(("attribution.goals", "purchase is always a conversion; list the other goal types"))
    problems.extend(_channel_references(doc))
    if doc.collaborative.enabled:
        from engine.recommend import CoVisitation

        try:
            CoVisitation(**doc.collaborative.params)
        except TypeError as exc:
            problems.append(("collaborative.params", f"{exc}; it takes {_parameters(CoVisitation)}"))
        except ValueError as exc:
            problems.append(("collaborative.params", str(exc)))
    return problems


def _channel_references(doc: schema.Document) -> list[Problem]:
    """An action's channels are channels of one of its placements (else it could never go out on them)."""
    problems: list[Problem] = []
    channels = {p.id: p.channels for p in doc.placement}
    for i, a in enumerate(doc.action):
        offered = {c for name in a.placements for c in channels.get(name, ())}
        for j, c in enumerate(a.channels):
            if c not in offered:
                problems.append((f"action[{i}].channels[{j}]", f"{show(c)} is not a channel of its placements "
                                 f"({', '.join(sorted(offered)) or 'none declares channels'})"))
    return problems


def _keywords(policy: str) -> str:
    from engine.policies import POLICIES

    return _parameters(POLICIES[policy])


def _parameters(cls: type) -> str:
    names = [p.name for p in inspect.signature(cls).parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return ", ".join(names) if names else "no parameters"


# --------------------------------------------------------------------------------------------------
# the objects the code reads


def _build(doc: schema.Document) -> model.EngineConfig:
    features = doc.feature
    return model.EngineConfig(
        profile=model.ProfileSettings(**doc.profile.model_dump()),
        privacy=model.PrivacySettings(consent_mode=doc.privacy.consent_mode),
        scoring=model.ScoringSettings(**doc.scoring.model_dump()),
        affinities=tuple(
            model.AffinityFeature(name=f.name, field=f.field, weights=dict(f.weights),
                                  half_life_hours=f.half_life_hours, top_k=f.top_k)
            for f in features if isinstance(f, schema.AffinityFeature)
        ),
        recents=tuple(
            model.RecentFeature(name=f.name, field=f.field, events=tuple(f.events), size=f.size)
            for f in features if isinstance(f, schema.RecentFeature)
        ),
        windows=tuple(
            model.WindowFeature(name=f.name, events=tuple(f.events), windows=tuple(f.windows))
            for f in features if isinstance(f, schema.WindowFeature)
        ),
        placements={
            p.id: model.Placement(id=p.id, max_items=p.max_items, learning=model.LearningSettings(
                policy=p.policy, params=dict(p.policy_params), holdout_share=p.holdout_share,
                holdout_policy=p.holdout_policy, reward=model.RewardSettings(**p.reward.model_dump()),
                snapshot_every_updates=p.snapshot_every_updates, snapshot_every_seconds=p.snapshot_every_seconds,
            ), **_next_best_action(doc, p))
            for p in doc.placement
        },
        actions={
            a.id: model.Action(id=a.id, placements=tuple(a.placements), category=a.category, item_id=a.item_id,
                               tags=tuple(a.tags), title=a.title, payload=dict(a.payload),
                               valid_from=a.valid_from, valid_to=a.valid_to,
                               audience=model.Audience(tuple(a.audience.include), tuple(a.audience.exclude))
                               if a.audience is not None else None,
                               channels=tuple(a.channels), value=1.0 if a.value is None else a.value,
                               lever=1.0 if a.lever is None else a.lever, caps=_caps(a.caps))
            for a in doc.action
        },
        segments=tuple(
            model.Segment(id=s.id, description=s.description,
                          **{part: tuple(model.SegmentCondition(**c.model_dump()) for c in getattr(s, part))
                             for part in ("all", "any", "none")})
            for s in doc.segment
        ),
        clusters=model.ClusterSettings(**doc.clusters.model_dump()),
        collaborative=model.CollaborativeSettings(
            enabled=doc.collaborative.enabled, weights=dict(doc.collaborative.weights),
            params=dict(doc.collaborative.params), snapshot_every_updates=doc.collaborative.snapshot_every_updates,
            snapshot_every_seconds=doc.collaborative.snapshot_every_seconds,
        ),
        attribution=model.AttributionSettings(
            enabled=doc.attribution.enabled, window_hours=doc.attribution.window_hours,
            models=tuple(doc.attribution.models), goals=tuple(doc.attribution.goals),
            max_touches=doc.attribution.max_touches,
            cost_per_impression_actions=dict(doc.attribution.cost_per_impression.actions),
            cost_per_impression_channels={str(k): v for k, v in doc.attribution.cost_per_impression.channels.items()},
        ),
        contact=_contact(doc.contact),
        contact_policy=_contact_policy(doc.contact_policy),
    )


def _caps(c: schema.Caps | None) -> model.Caps | None:
    return None if c is None else model.Caps(hour=c.hour, day=c.day, week=c.week)


def _contact_policy(c: schema.ContactPolicy) -> model.ContactPolicySettings:
    return model.ContactPolicySettings(
        enabled=c.enabled, suppress_purchased=c.suppress_purchased, suppress_in_cart=c.suppress_in_cart,
        max_shown_without_click=c.max_shown_without_click, dismiss_cooldown_hours=c.dismiss_cooldown_hours,
        action_caps=_caps(c.action_caps) or model.Caps(),
        channel_caps={str(ch): _caps(v) or model.Caps() for ch, v in c.channel_caps.items()},
        contact_pressure=_caps(c.contact_pressure) or model.Caps(),
        max_tracked_actions=c.max_tracked_actions, max_tracked_purchases=c.max_tracked_purchases)


def _next_best_action(doc: schema.Document, p: schema.Placement) -> dict[str, Any]:
    """A placement's next-best-action settings; the arbitration's default depends on its actions: the
    value-weighted order as soon as one declares a value or a lever (or the placement a threshold), else the
    policy's own order (so a placement without business values ranks exactly as before)."""
    arbitration: str | None = p.arbitration
    if arbitration is None:
        valued = p.min_expected_value is not None or any(
            a.value is not None or a.lever is not None for a in doc.action if p.id in a.placements)
        arbitration = "propensity_x_value_x_lever" if valued else "policy"
    return {"channels": tuple(p.channels), "business_hours": p.business_hours, "arbitration": arbitration,
            "min_expected_value": p.min_expected_value}


def _contact(c: schema.Contact) -> model.ContactSettings:
    from engine.timing import parse_hours

    return model.ContactSettings(
        default_timezone=c.default_timezone, hours={ch: parse_hours(h) for ch, h in c.hours.items()},
        business_hours=parse_hours(c.business_hours), send_within_hours=c.send_within_hours,
        activity_half_life_days=c.activity_half_life_days, activity_prior_strength=c.activity_prior_strength,
        engagement_prior_strength=c.engagement_prior_strength)
