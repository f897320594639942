"""Decisions and their rewards: the logic serving (which decides) and streams (which learns) share.

>>> holdout_arm("visitor-1", "home_hero", 0.0)
'learning'
>>> holdout_arm("visitor-1", "home_hero", 0.5) == holdout_arm("visitor-1", "home_hero", 0.5)  # sticky
True
>>> from engine.config import AffinityFeature
>>> cat = AffinityFeature(name="category", field="category", weights={"click": 1.0})
>>> sorted(action_features(Action(id="a", placements=("p",), category="shoes", tags=("sale",)), [cat]))
['category:shoes', 'tag:sale']
>>> decision_slot(new_decision_id()) in range(256)
True
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.config import Action, AffinityFeature, RewardSettings

LEARNING_ARM = "learning"
CONTROL_ARM = "control"


_ID_BYTES = 16
_id_pool = b""
_id_pos = 0
_id_pid = 0


def new_decision_id() -> str:
    """32 random hex digits: 128 bits from the OS (like a uuid4, without its version bits), read 256 ids at a
    time (one ``getrandom`` call per request was visible in profiles); refilled after a fork."""
    global _id_pool, _id_pos, _id_pid
    if _id_pos >= len(_id_pool) or _id_pid != os.getpid():
        _id_pool, _id_pos, _id_pid = os.urandom(_ID_BYTES * 256), 0, os.getpid()
    start = _id_pos
    _id_pos = start + _ID_BYTES
    return _id_pool[start:_id_pos].hex()


def decision_slot(decision_id: str) -> int:
    """Decisions are spread over 256 Redis hash slots by the first byte of their id, so the reward join
    of one decision (its state and its place in the expiry index) lives in one Cluster slot."""
    try:
        return int(decision_id[:2], 16)
    except ValueError:
        return int(hashlib.blake2b(decision_id.encode(), digest_size=1).hexdigest(), 16)


def holdout_arm(visitor_id: str, placement: str, share: float) -> str:
    """Sticky assignment: the same visitor always falls in the same arm of a placement."""
    if share <= 0.0:
        return LEARNING_ARM
    h = hashlib.blake2b(f"{placement}/{visitor_id}".encode(), digest_size=8).digest()
    return CONTROL_ARM if int.from_bytes(h, "big") / 2**64 < share else LEARNING_ARM


def action_features(action: Action, affinities: Sequence[AffinityFeature]) -> dict[str, float]:
    """What a policy knows about an action besides its id (for crossed features and cold start).

    For each affinity feature whose field the action has (``category``, ``item_id``) the key is
    ``<feature>:<value>``, the counterpart of the visitor's ``aff_<feature>:<value>`` context feature,
    so a policy can learn one shared weight for "the visitor's affinity to this action's category".
    """
    f: dict[str, float] = {}
    for feat in affinities:
        value = getattr(action, feat.field, None)
        if isinstance(value, str) and value:
            f[f"{feat.name}:{value}"] = 1.0
    for t in action.tags:
        f[f"tag:{t}"] = 1.0
    return f


def request_context_features(context: Mapping[str, Any]) -> dict[str, float]:
    """Numeric features from the page context the website sends with a decide request.

    >>> request_context_features({"channel": "web", "segment": "vip", "url": "https://x"})
    {'channel:web': 1.0, 'segment:vip': 1.0}
    """
    out: dict[str, float] = {}
    # "segment" lets a site pass its own segment (e.g. from its CRM) for per-segment popularity
    for key in ("channel", "locale", "device", "segment"):
        v = context.get(key)
        if isinstance(v, str) and v:
            out[f"{key}:{v}"] = 1.0
    return out


@dataclass(frozen=True, slots=True)
class Reward:
    """A reward carried by an event: which decision and action it rewards, and with what."""

    decision_id: str
    action_id: str | None
    kind: str  # click | conversion | dismiss
    value: float


def reward_of(event_type: str, properties: Mapping[str, Any]) -> Reward | None:
    """The reward an event carries, if it names a decision (click, purchase or feedback)."""
    decision_id = properties.get("decision_id")
    if not decision_id or not isinstance(decision_id, str):
        return None
    action_id = properties.get("action_id")
    if event_type == "click":
        return Reward(decision_id, action_id, "click", 1.0)
    if event_type == "purchase":
        return Reward(decision_id, action_id, "conversion", float(properties.get("value") or 0.0))
    if event_type == "feedback":
        kind = properties.get("kind", "click")
        return Reward(decision_id, action_id, kind, float(properties.get("value") or 0.0))
    return None


def reward_value(reward: Reward, settings: RewardSettings) -> float:
    if reward.kind == "click":
        return settings.click
    if reward.kind == "conversion":
        return reward.value if settings.conversion_value and reward.value > 0 else settings.conversion
    return 0.0  # an explicit dismissal: learned as no reward, but it ends the wait for a "first" reward
