"""The policy interface every ranker in ``engine.policies`` implements.

A *policy* ranks candidate actions for one visitor and learns from the reward of the action it showed.
The verbs are the same for every policy, River-style:

* ``rank(context, candidates, n, rng) -> Ranked``: the top ``n`` actions, best first, plus the
  probability the policy had of putting the shown top action first (its *propensity*, logged with the
  decision so that later off-policy evaluation is unbiased) and whether that top action was an
  exploration move rather than the greedy choice.
* ``learn_one(context, candidate, reward)``: one reward for one shown action, with the context *as
  logged at decision time*.

``context`` holds the visitor's features (``{"aff_cat:shoes": 0.7, "recency_h": 2.0,
"segment:vip": 1}``), a :class:`Candidate` holds one action's id and features (``{"cat:shoes": 1,
"tag:sale": 1}``). Missing keys mean 0. Unseen actions and feature names are always accepted.

>>> import random
>>> from engine.policies import RandomPolicy
>>> policy = RandomPolicy()
>>> candidates = [Candidate("a", {"cat:shoes": 1.0}), Candidate("b"), Candidate("c")]
>>> ranked = policy.rank({"aff_cat:shoes": 0.7}, candidates, n=2, rng=random.Random(1))
>>> len(ranked.action_ids), round(ranked.propensity, 3), ranked.explored
(2, 0.333, True)
>>> isinstance(policy, Policy)
True
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Candidate", "Ranked", "Policy", "Features", "tie_break_top", "order_rest", "empty_ranked"]

Features = Mapping[str, float]



@dataclass(frozen=True, slots=True)
class Candidate:
    """One eligible action and its features (category, tags, price band ... as numbers).

    >>> Candidate("summer-sale", {"cat:shoes": 1.0, "tag:sale": 1.0}).action_id
    'summer-sale'
    """

    action_id: str
    features: Mapping[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Ranked:
    """What a policy answers.

    ``action_ids`` and ``scores`` are best first (``scores`` are on the policy's own scale, e.g. an
    upper confidence bound or a sampled value). ``propensity`` is the probability the policy had of
    putting ``action_ids[0]`` first, given this context and these candidates; ``explored`` says the
    top action was not the greedy one (an exploration move).

    >>> Ranked(["a", "b"], [0.9, 0.1], propensity=1.0, explored=False).top
    'a'
    """

    action_ids: list[str]
    scores: list[float]
    propensity: float
    explored: bool

    @property
    def top(self) -> str | None:
        return self.action_ids[0] if self.action_ids else None


@runtime_checkable
class Policy(Protocol):
    """What the stream workers (``learn_one``) and serving (``rank``) rely on."""

    name: str
    n_updates: int

    def rank(
        self, context: Features, candidates: Sequence[Candidate], n: int, rng: random.Random
    ) -> Ranked:
        """Rank ``candidates`` (unique action ids) for ``context``; return at most ``n`` of them."""
        ...

    def learn_one(self, context: Features, candidate: Candidate, reward: float) -> None:
        """Learn from the ``reward`` the shown ``candidate`` earned in ``context``."""
        ...


def tie_break_top(scores: Sequence[float], rng: random.Random, tol: float = 1e-12) -> tuple[int, int]:
    """Index of the best score, ties broken uniformly at random, and the number of tied actions.

    The tie count is what a deterministic policy's propensity depends on (``1 / n_tied``).

    >>> tie_break_top([0.2, 0.5, 0.5], random.Random(0))[1]
    2
    """
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if s >= best - tol]
    if len(tied) == 1:
        return tied[0], 1
    return tied[rng.randrange(len(tied))], len(tied)


def order_rest(scores: Sequence[float], top: int, n: int) -> list[int]:
    """``top`` first, then the other indices by decreasing score (stable), ``n`` indices in all.

    >>> order_rest([0.1, 0.9, 0.5], top=0, n=3)
    [0, 1, 2]
    """
    if n <= 1:
        return [top][:n]
    rest = sorted((i for i in range(len(scores)) if i != top), key=lambda i: -scores[i])
    return [top, *rest[: n - 1]]


def empty_ranked() -> Ranked:
    """The answer for no candidates (or ``n <= 0``): nothing shown, with certainty."""
    return Ranked([], [], 1.0, False)
