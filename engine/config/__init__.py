"""The declared configuration: features, scoring weights, placements and the catalogue of actions.

Loaded from TOML and validated once, strictly (unknown keys, wrong types, out-of-range numbers,
duplicate ids and dangling references are all errors), so a typo fails at start-up with a message
that names the file, the path and what was expected, not at 3 a.m. on the first event that touches it.

* :mod:`engine.config.schema`: what a file may contain (pydantic; also the editors' JSON Schema);
* :mod:`engine.config.load`: checking and building; :mod:`engine.config.compose`: ``include`` and overlays;
* :mod:`engine.config.model`: the frozen objects the rest of the code reads.

``python -m engine.config PATH`` validates a file.

>>> cfg = parse_config({
...     "feature": [{"name": "category", "kind": "affinity", "field": "category",
...                  "weights": {"page_view": 1.0}}],
...     "placement": [{"id": "home"}],
...     "action": [{"id": "a1", "placements": ["home"], "category": "shoes"}],
... })
>>> cfg.affinities[0].name, cfg.actions_for("home")[0].id
('category', 'a1')
>>> parse_config({"feature": [{"name": "x", "kind": "magic"}]}, source="engine.toml")
Traceback (most recent call last):
...
engine.config.ConfigError: engine.toml: feature[0].kind: unknown kind "magic"; expected one of affinity, recent, window
"""

from engine.config.errors import ConfigError
from engine.config.load import load_config, parse_config
from engine.config.model import (
    BASELINE_POLICY,
    OPT_IN,
    OPT_OUT,
    REWARD_AGGREGATIONS,
    WINDOWS,
    Action,
    AffinityFeature,
    AttributionSettings,
    CollaborativeSettings,
    EngineConfig,
    LearningSettings,
    Placement,
    PrivacySettings,
    ProfileSettings,
    RecentFeature,
    RewardSettings,
    ScoringSettings,
    WindowFeature,
)
from engine.config.schema import event_types

#: Event types the stream knows: the JSON Schema enum of schemas/json/envelope.v1.schema.json.
KNOWN_EVENTS: tuple[str, ...] = event_types()

__all__ = [
    "BASELINE_POLICY",
    "KNOWN_EVENTS",
    "OPT_IN",
    "OPT_OUT",
    "REWARD_AGGREGATIONS",
    "WINDOWS",
    "Action",
    "AffinityFeature",
    "AttributionSettings",
    "CollaborativeSettings",
    "ConfigError",
    "EngineConfig",
    "LearningSettings",
    "Placement",
    "PrivacySettings",
    "ProfileSettings",
    "RecentFeature",
    "RewardSettings",
    "ScoringSettings",
    "WindowFeature",
    "load_config",
    "parse_config",
]
