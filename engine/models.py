"""Which models a placement learns, and the name each is stored under (``model:{<name>}``).

Shared by the learner (``streams``), which publishes them, and serving, which loads them.

>>> from engine.config import parse_config
>>> cfg = parse_config({"placement": [{"id": "p", "policy": "linucb"}],
...                     "action": [{"id": "a", "placements": ["p"], "category": "shoes"}]})
>>> [model_name("p", policy) for policy in learned_policies(cfg, "p")]
['p/linucb']
"""

from __future__ import annotations

from engine.config import BASELINE_POLICY, EngineConfig


def model_name(placement: str, policy: str) -> str:
    return f"{placement}/{policy}"


def learned_policies(config: EngineConfig, placement: str) -> list[str]:
    """The placement's learning and control policies, once each, without the baseline (nothing to learn)."""
    ls = config.placements[placement].learning
    return [p for p in dict.fromkeys((ls.policy, ls.holdout_policy)) if p != BASELINE_POLICY]
