"""Value arbitration: the final order of a placement's actions by expected business value, not only clicks.

``priority = propensity x value x lever`` (Pega's arbitration, with its context weight folded into the
lever): ``propensity`` the policy's estimate that the action succeeds, ``value`` what a success is worth
(an action's ``value``), ``lever`` a business multiplier (an action's ``lever``: push a campaign, hold one
back). ``arbitration = "propensity"`` orders by the propensity alone; an expected value ``propensity x value``
below the placement's ``min_expected_value`` answers "nothing now" (``below_threshold``).

A policy's scores are on its own scale, so each is turned into a propensity comparable across actions:

==========================  ========================================================================
policy                      propensity
==========================  ========================================================================
``linear_thompson``         the posterior mean of the expected reward, clipped to [0, 1]: a Thompson
                            draw is a random point of that posterior, so arbitrating draws would let
``linucb``                  noise, not value, pick between close actions; the same for the UCB's mean.
                            The ridge prior's mean is 0, which would rank every new action last and
                            answer "nothing now" to everyone at the start: an action with ``n`` updates
                            gets ``(n mean + 10 x 0.05) / (n + 10)``, the prior fading as it learns
``popularity``              the smoothed rate (its Beta-Binomial posterior mean)
``ctr_ranker``              the classifier's click probability
``random``                  ``1 / K`` for each (no knowledge: value and lever decide)
``affinity_popularity``     the action's share of the candidates' scores (the baseline's score is a
                            relevance, not a probability: the shares sum to 1 like propensities)
==========================  ========================================================================

A placement that learns conversion values (``reward.conversion_value = true``) learns expected *value*: its
estimate is taken as ``propensity x value`` already (not clipped to 1, value not applied twice).

The order is greedy on the priorities, so exploration is the placement's ``epsilon`` (policy parameter,
default 0.05 for a learner, 0 for the baseline): with that probability the top action is drawn uniformly,
and the propensity logged for off-policy evaluation is exact, ``epsilon / K + (1 - epsilon) / ties`` for a
greedy top, ``epsilon / K`` for another.

>>> import random
>>> r = arbitrate(["a", "b"], [0.1, 0.1], [10.0, 50.0], [1.0, 1.0], "propensity_x_value_x_lever", 0.0,
...               random.Random(0))
>>> r.order, r.priorities, r.propensity                       # equal propensity: the valuable action first
([1, 0], [1.0, 5.0], 1.0)
>>> arbitrate(["a", "b"], [0.1, 0.1], [10.0, 50.0], [1.0, 1.0], "propensity", 0.0, random.Random(0)).propensity
0.5
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.policies.base import Candidate, Features

#: What each mode multiplies.
MODES = ("propensity_x_value_x_lever", "propensity")
#: Exploration of a learning placement under arbitration unless its policy parameters give ``epsilon``.
DEFAULT_EPSILON = 0.05
#: A linear policy's propensity for an action it has not learned about, and the updates that prior is worth.
PRIOR_PROPENSITY, PRIOR_UPDATES = 0.05, 10.0


def shares(scores: Sequence[float]) -> list[float]:
    """Scores as shares of their sum (negative ones count as 0); equal shares when all are 0.

    >>> shares([3.0, 1.0]), shares([0.0, 0.0])
    ([0.75, 0.25], [0.5, 0.5])
    """
    pos = [max(float(s), 0.0) for s in scores]
    total = sum(pos)
    if total <= 0:
        return [1.0 / len(pos)] * len(pos) if pos else []
    return [s / total for s in pos]


def estimates(policy: Any, context: Features, candidates: Sequence[Candidate], learns_value: bool) -> list[float]:
    """Each candidate's propensity (or expected value, ``learns_value``) under a learned policy (table above).

    >>> from engine.policies import make_policy
    >>> estimates(make_policy("random"), {}, [Candidate("a"), Candidate("b")], False)
    [0.5, 0.5]
    >>> estimates(make_policy("linear_thompson"), {}, [Candidate("new")], False)   # unseen: the prior
    [0.05]
    """
    hi = float("inf") if learns_value else 1.0
    posterior = getattr(policy, "posterior", None)
    if posterior is not None:
        mean, _ = posterior(dict(context), candidates)
        means = [min(max(float(m), 0.0), hi) for m in mean]
        if learns_value:  # values have no common prior: an unseen action's 0 ties, and epsilon explores
            return means
        updates = policy.action_updates
        m, p0 = PRIOR_UPDATES, PRIOR_PROPENSITY
        return [(n * mu + m * p0) / (n + m) for mu, n in
                zip(means, (updates(c.action_id) for c in candidates), strict=True)]
    rates = getattr(policy, "rates", None)
    if rates is not None:
        return [min(max(float(p), 0.0), hi) for p, _ in rates(context, candidates)]
    predict = getattr(policy, "predict", None)
    if predict is not None:
        return [min(max(float(p), 0.0), hi) for p in predict(context, candidates)]
    return [1.0 / len(candidates)] * len(candidates) if candidates else []


@dataclass(slots=True)
class Arbitrated:
    #: indices into the candidates, best first (all of them)
    order: list[int]
    #: per candidate (input order): what it was ranked by
    priorities: list[float]
    #: the probability of ``order[0]`` being first (exact under the epsilon floor)
    propensity: float
    explored: bool


def arbitrate(ids: Sequence[str], propensities: Sequence[float], values: Sequence[float], levers: Sequence[float],
              mode: str, epsilon: float, rng: random.Random) -> Arbitrated:
    """Order candidates by priority (ties: a uniform draw among the tied, then the input order) with an
    ``epsilon`` uniform floor on the top slot."""
    k = len(ids)
    if k == 0:
        return Arbitrated([], [], 1.0, False)
    if mode == "propensity":
        prio = [float(p) for p in propensities]
    else:
        prio = [float(p) * v * lv for p, v, lv in zip(propensities, values, levers, strict=True)]
    best = max(prio)
    tied = [i for i, p in enumerate(prio) if p >= best - 1e-12 * max(1.0, abs(best))]
    if epsilon > 0.0 and rng.random() < epsilon:
        top = rng.randrange(k)
    else:
        top = tied[rng.randrange(len(tied))] if len(tied) > 1 else tied[0]
    greedy = top in tied
    propensity = epsilon / k + ((1.0 - epsilon) / len(tied) if greedy else 0.0)
    rest = sorted((i for i in range(k) if i != top), key=lambda i: -prio[i])
    return Arbitrated([top, *rest], prio, propensity, not greedy)


def expected_value(propensity: float, value: float, learns_value: bool) -> float:
    """What one showing of the action is expected to bring.

    >>> expected_value(0.1, 30.0, False), expected_value(4.5, 30.0, True)
    (3.0, 4.5)
    """
    return propensity if learns_value else propensity * value
