"""The declared configuration: features, scoring weights, placements and the catalogue of actions.

Loaded from TOML and validated once, so a typo fails at start-up with a message that names the
place, not at 3 a.m. on the first event that touches it.

>>> cfg = parse_config({
...     "feature": [{"name": "category", "kind": "affinity", "field": "category",
...                  "weights": {"page_view": 1.0}}],
...     "placement": [{"id": "home"}],
...     "action": [{"id": "a1", "placements": ["home"], "category": "shoes"}],
... })
>>> cfg.affinities[0].name, cfg.actions_for("home")[0].id
('category', 'a1')
>>> parse_config({"feature": [{"name": "x", "kind": "magic"}]})
Traceback (most recent call last):
...
engine.config.ConfigError: feature[0] (x): unknown kind 'magic'; expected one of affinity, count, recent, window
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: Event types the stream knows; mirrors the JSON Schema enum in schemas/json.
KNOWN_EVENTS = (
    "page_view", "click", "add_to_cart", "remove_from_cart", "purchase", "search",
    "identify", "consent", "feedback",
)
#: Window name -> (bucket width seconds, number of buckets). Ring buffers keep state bounded.
WINDOWS: dict[str, tuple[int, int]] = {"1h": (300, 12), "24h": (3600, 24), "7d": (86400, 7)}


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class AffinityFeature:
    name: str
    field: str
    weights: Mapping[str, float]
    half_life_hours: float = 72.0
    top_k: int = 50


@dataclass(frozen=True, slots=True)
class RecentFeature:
    name: str
    field: str
    events: tuple[str, ...]
    size: int = 20


@dataclass(frozen=True, slots=True)
class WindowFeature:
    name: str
    events: tuple[str, ...]
    windows: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    ttl_days: float = 90.0
    session_timeout_minutes: float = 30.0
    dedup_window: int = 64


@dataclass(frozen=True, slots=True)
class ScoringSettings:
    category_weight: float = 1.0
    item_weight: float = 2.0
    tag_weight: float = 0.3
    popularity_half_life_hours: float = 24.0
    covisit_weight: float = 1.5


@dataclass(frozen=True, slots=True)
class CollaborativeSettings:
    """Item-to-item co-visitation learned in the stream and used as a ranking feature."""

    enabled: bool = True
    #: Interaction weight per event type (events carrying an ``item_id``).
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"page_view": 0.5, "click": 1.0, "add_to_cart": 1.5, "purchase": 2.0}
    )
    params: Mapping[str, Any] = field(default_factory=dict)
    snapshot_every_updates: int = 50_000
    snapshot_every_seconds: float = 5.0


#: The transparent, non-learning scorer (engine.scoring); every other policy name is a learner.
BASELINE_POLICY = "affinity_popularity"
REWARD_AGGREGATIONS = ("first", "sum", "max")


@dataclass(frozen=True, slots=True)
class RewardSettings:
    #: How long a decision waits for its click/conversion before the default reward is learned.
    window_seconds: float = 600.0
    default: float = 0.0
    #: How several rewards of one decision combine: the first one, their sum, or their maximum.
    aggregation: str = "max"
    #: Learn a conversion's monetary value instead of 1.0.
    conversion_value: bool = False
    click: float = 1.0
    conversion: float = 1.0


@dataclass(frozen=True, slots=True)
class LearningSettings:
    policy: str = BASELINE_POLICY
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Share of visitors (sticky per visitor) who get ``holdout_policy`` instead: the control arm.
    holdout_share: float = 0.0
    holdout_policy: str = BASELINE_POLICY
    reward: RewardSettings = field(default_factory=RewardSettings)
    snapshot_every_updates: int = 200
    snapshot_every_seconds: float = 5.0

    @property
    def learns(self) -> bool:
        return self.policy != BASELINE_POLICY or self.holdout_policy != BASELINE_POLICY


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    max_items: int = 5
    learning: LearningSettings = field(default_factory=LearningSettings)


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    placements: tuple[str, ...]
    category: str | None = None
    item_id: str | None = None
    tags: tuple[str, ...] = ()
    title: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    valid_from: float | None = None
    valid_to: float | None = None

    def is_valid_at(self, now: float) -> bool:
        return (self.valid_from is None or now >= self.valid_from) and (
            self.valid_to is None or now < self.valid_to
        )


@dataclass(frozen=True, slots=True)
class EngineConfig:
    profile: ProfileSettings
    scoring: ScoringSettings
    affinities: tuple[AffinityFeature, ...]
    recents: tuple[RecentFeature, ...]
    windows: tuple[WindowFeature, ...]
    counted_events: tuple[str, ...]
    placements: Mapping[str, Placement]
    actions: Mapping[str, Action]
    collaborative: CollaborativeSettings = field(default_factory=CollaborativeSettings)

    def actions_for(self, placement: str) -> list[Action]:
        return [a for a in self.actions.values() if placement in a.placements]


def load_config(path: Path | str) -> EngineConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}: '{key}' is required")
    return d[key]


def _events(values: Any, where: str) -> tuple[str, ...]:
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(f"{where}: 'events' must be a non-empty list of event types")
    for ev in values:
        if ev not in KNOWN_EVENTS:
            raise ConfigError(f"{where}: unknown event type '{ev}'")
    return tuple(values)


def _timestamp(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise ConfigError(f"{where}: '{value}' is not an ISO-8601 timestamp") from exc


def _check_policy(name: Any, params: Mapping[str, Any], where: str) -> None:
    if name == BASELINE_POLICY:
        return
    from engine.policies import make_policy  # policies import numpy/river: only when configured

    try:
        make_policy(name, **params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _learning(p: Mapping[str, Any], where: str) -> LearningSettings:
    try:
        reward = RewardSettings(**p.get("reward", {}))
    except TypeError as exc:
        raise ConfigError(f"{where}: reward: {exc}") from exc
    if reward.aggregation not in REWARD_AGGREGATIONS:
        raise ConfigError(f"{where}: reward.aggregation must be one of {', '.join(REWARD_AGGREGATIONS)}")
    if reward.window_seconds <= 0:
        raise ConfigError(f"{where}: reward.window_seconds must be positive")
    learning = LearningSettings(
        policy=p.get("policy", BASELINE_POLICY), params=dict(p.get("policy_params", {})),
        holdout_share=float(p.get("holdout_share", 0.0)),
        holdout_policy=p.get("holdout_policy", BASELINE_POLICY), reward=reward,
        snapshot_every_updates=int(p.get("snapshot_every_updates", 200)),
        snapshot_every_seconds=float(p.get("snapshot_every_seconds", 5.0)),
    )
    if not 0.0 <= learning.holdout_share < 1.0:
        raise ConfigError(f"{where}: holdout_share must be in [0, 1)")
    _check_policy(learning.policy, learning.params, f"{where}: policy")
    _check_policy(learning.holdout_policy, {}, f"{where}: holdout_policy")
    return learning


def parse_config(raw: Mapping[str, Any]) -> EngineConfig:
    affinities: list[AffinityFeature] = []
    recents: list[RecentFeature] = []
    windows: list[WindowFeature] = []
    counted: list[str] = []
    names: set[str] = set()
    for i, f in enumerate(raw.get("feature", [])):
        where = f"feature[{i}] ({f.get('name', '?')})"
        name = _require(f, "name", where)
        if name in names:
            raise ConfigError(f"{where}: duplicate feature name")
        if not name.replace("_", "").isalnum():
            raise ConfigError(f"{where}: name must be letters, digits and underscores")
        names.add(name)
        kind = f.get("kind")
        if kind == "affinity":
            weights = _require(f, "weights", where)
            _events(list(weights), where)
            affinities.append(AffinityFeature(
                name=name, field=_require(f, "field", where), weights=dict(weights),
                half_life_hours=float(f.get("half_life_hours", 72.0)), top_k=int(f.get("top_k", 50)),
            ))
        elif kind == "recent":
            recents.append(RecentFeature(
                name=name, field=_require(f, "field", where),
                events=_events(_require(f, "events", where), where), size=int(f.get("size", 20)),
            ))
        elif kind == "window":
            wins = tuple(_require(f, "windows", where))
            for w in wins:
                if w not in WINDOWS:
                    raise ConfigError(f"{where}: unknown window '{w}'; expected one of {', '.join(WINDOWS)}")
            windows.append(WindowFeature(name=name, events=_events(_require(f, "events", where), where),
                                         windows=wins))
        elif kind == "count":
            counted.extend(_events(_require(f, "events", where), where))
        else:
            raise ConfigError(
                f"{where}: unknown kind '{kind}'; expected one of affinity, count, recent, window"
            )
    for a in affinities:
        if a.half_life_hours <= 0 or a.top_k <= 0:
            raise ConfigError(f"feature {a.name}: half_life_hours and top_k must be positive")

    placements: dict[str, Placement] = {}
    for i, p in enumerate(raw.get("placement", [])):
        pid = _require(p, "id", f"placement[{i}]")
        placements[pid] = Placement(id=pid, max_items=int(p.get("max_items", 5)),
                                    learning=_learning(p, f"placement[{i}] ({pid})"))

    actions: dict[str, Action] = {}
    for i, a in enumerate(raw.get("action", [])):
        where = f"action[{i}] ({a.get('id', '?')})"
        aid = _require(a, "id", where)
        if aid in actions:
            raise ConfigError(f"{where}: duplicate action id")
        pls = tuple(_require(a, "placements", where))
        for p in pls:
            if p not in placements:
                raise ConfigError(f"{where}: unknown placement '{p}'")
        actions[aid] = Action(
            id=aid, placements=pls, category=a.get("category"), item_id=a.get("item_id"),
            tags=tuple(a.get("tags", ())), title=a.get("title"), payload=dict(a.get("payload", {})),
            valid_from=_timestamp(a.get("valid_from"), where), valid_to=_timestamp(a.get("valid_to"), where),
        )

    try:
        profile = ProfileSettings(**raw.get("profile", {}))
    except TypeError as exc:
        raise ConfigError(f"profile: {exc}") from exc
    try:
        scoring = ScoringSettings(**raw.get("scoring", {}))
    except TypeError as exc:
        raise ConfigError(f"scoring: {exc}") from exc
    collab_raw = dict(raw.get("collaborative", {}))
    try:
        collaborative = CollaborativeSettings(**collab_raw)
    except TypeError as exc:
        raise ConfigError(f"collaborative: {exc}") from exc
    _events(list(collaborative.weights), "collaborative.weights")
    if collaborative.enabled:
        from engine.recommend import CoVisitation

        try:
            CoVisitation(**collaborative.params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"collaborative.params: {exc}") from exc
    return EngineConfig(
        collaborative=collaborative,
        profile=profile, scoring=scoring, affinities=tuple(affinities), recents=tuple(recents),
        windows=tuple(windows), counted_events=tuple(counted) or KNOWN_EVENTS,
        placements=placements, actions=actions,
    )
