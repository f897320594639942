"""Ranking policies that learn online: one interface, several algorithms.

=====================  =============================================================================
``RandomPolicy``       uniform random; the exploration floor and the logging policy of replay data
``PopularityPolicy``   smoothed CTR per action, globally or per ``segment:<name>``; optimistic bonus
``LinUCB``             linear UCB, disjoint per action (+ optional hybrid shared part), Sherman-Morrison
``LinearThompson``     linear Thompson sampling on the same statistics, Monte-Carlo propensities
``CTRRanker``          River logistic regression over crossed features + epsilon-greedy
=====================  =============================================================================

All of them implement :class:`Policy` (``rank`` / ``learn_one`` / ``n_updates`` / ``name``) and can be
snapshotted with :mod:`engine.snapshots`.

>>> import random
>>> policy = make_policy("linucb", alpha=0.1)
>>> policy.rank({"aff_cat:shoes": 1.0}, [Candidate("a", {"cat:shoes": 1.0})], n=1, rng=random.Random(0)).top
'a'
"""

from __future__ import annotations

from typing import Any

from engine.policies.base import Candidate, Policy, Ranked
from engine.policies.ctr import CTRRanker
from engine.policies.features import FeatureHasher
from engine.policies.linear import LinearThompson, LinUCB
from engine.policies.popularity import PopularityPolicy
from engine.policies.random import RandomPolicy

__all__ = [
    "Candidate",
    "Ranked",
    "Policy",
    "RandomPolicy",
    "PopularityPolicy",
    "LinUCB",
    "LinearThompson",
    "CTRRanker",
    "FeatureHasher",
    "POLICIES",
    "make_policy",
]

#: Policy name (as in ``policy.name`` and in configuration) -> class.
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (RandomPolicy, PopularityPolicy, LinUCB, LinearThompson, CTRRanker)
}


def make_policy(name: str, **params: Any) -> Policy:
    """Build a policy from its configured name and parameters; unknown names raise ``ValueError``.

    >>> make_policy("popularity", bonus=0.0).name
    'popularity'
    >>> make_policy("nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown policy 'nope'; expected one of ctr_ranker, linear_thompson, linucb, popularity, random
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(sorted(POLICIES))}") from None
    return cls(**params)
