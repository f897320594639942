"""``"explain": true`` in a decide request: why each candidate was shown, ranked lower, or left out.

Per candidate of the placement (or of the request's ``candidates``): whether it was eligible and, if not, the
rule that excluded it (its validity period, its audience and the segment that decided, the contact policy:
``suppressed: purchased``, ``cooldown: dismissed 2h ago``, ``cap: 3/day reached``, or no channel that can reach
the customer: consent, contact hours, ``cap: email 1/day reached``, contact pressure); for an eligible one,
its score and what made it:

- the baseline scorer (``affinity_popularity``): its terms, ``score = prior x (1 + category + item + tags +
  covisit)`` (``engine.scoring.AffinityPopularityScorer.terms``), largest first;
- a learned linear policy: the posterior mean and standard deviation of its expected reward, the two things
  Thompson sampling and UCB weigh.

Built only when asked: a decision without ``explain`` pays nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine.config import Action, EngineConfig
from engine.config.model import BASELINE_POLICY
from engine.features import Profile

if TYPE_CHECKING:
    from serving.decide import DecideRequest, Ranking
    from serving.services import Services


def exclusion(action: Action, segments: frozenset[str], now: float) -> str | None:
    """The rule that keeps this action out of the decision, or None.

    >>> from engine.config.model import Audience
    >>> a = Action(id="a", placements=("p",), audience=Audience(include=("has_cart",), exclude=("lapsed",)))
    >>> exclusion(a, frozenset(), 0.0)
    'audience: a member of none of has_cart'
    >>> exclusion(a, frozenset({"has_cart", "lapsed"}), 0.0)
    'audience: excluded as a member of lapsed'
    >>> exclusion(a, frozenset({"has_cart"}), 0.0) is None
    True
    """
    if action.valid_from is not None and now < action.valid_from:
        return f"validity: starts at {action.valid_from:.0f} (epoch s)"
    if action.valid_to is not None and now >= action.valid_to:
        return f"validity: ended at {action.valid_to:.0f} (epoch s)"
    audience = action.audience
    if audience is not None:
        if audience.include and segments.isdisjoint(audience.include):
            return f"audience: a member of none of {', '.join(audience.include)}"
        hit = [s for s in audience.exclude if s in segments]
        if hit:
            return f"audience: excluded as a member of {', '.join(hit)}"
    return None


def explanation(svc: Services, req: DecideRequest, ranking: Ranking, profile: Profile | None, personalised: bool,
                context: Mapping[str, float], collaborative: Mapping[str, float], now: float) -> dict[str, Any]:
    config: EngineConfig = svc.config
    ids = req.candidates if req.candidates is not None else svc.placement_action_ids[req.placement]
    segments = frozenset(ranking.segments)
    shown = {a.id: i for i, (a, _) in enumerate(ranking.actions)}
    eligible: list[Action] = []
    out: list[dict[str, Any]] = []
    for aid in ids:
        action = config.actions[aid]
        reason = exclusion(action, segments, now) or ranking.unreachable.get(aid)
        entry: dict[str, Any] = {"action_id": aid, "eligible": reason is None}
        if reason is not None:
            entry["excluded_by"] = reason
        else:
            eligible.append(action)
            entry["rank"] = shown.get(aid)  # None: eligible, but below the n asked for
        out.append(entry)
    scores = _scores(svc, req, ranking, profile if personalised else None, context, collaborative, eligible)
    for entry in out:
        if entry["eligible"]:
            entry.update(scores.get(entry["action_id"], {}))
            # next-best action (serving/nba.py): propensity, value, lever, their product, channel, send_at
            entry.update(ranking.arbitration.get(entry["action_id"], {}))
    return {"policy": ranking.policy, "segments": ranking.segments, "candidates": out}


def _scores(svc: Services, req: DecideRequest, ranking: Ranking, profile: Profile | None,
            context: Mapping[str, float], collaborative: Mapping[str, float],
            eligible: Sequence[Action]) -> dict[str, dict[str, Any]]:
    if ranking.policy in (BASELINE_POLICY, svc.scorer.name):
        affinities = profile.affinities if profile is not None else None
        out = {}
        for a in eligible:
            prior, terms = svc.scorer.terms(a, affinities, svc.popularity, collaborative)
            score = prior * (1.0 + sum(v for _, v in terms))
            out[a.id] = {"score": round(score, 6), "contributions": [
                {"term": "popularity prior", "value": round(prior, 6)},
                *({"term": name, "value": round(v, 6)} for name, v in sorted(terms, key=lambda t: -abs(t[1])) if v)]}
        return out
    model = svc.models.get(req.placement, ranking.policy)
    posterior = getattr(model.policy, "posterior", None)
    if posterior is None:
        return {}
    candidates = [svc.candidates[a.id] for a in eligible]
    mean, var = posterior(dict(context), candidates)
    return {a.id: {"expected_reward": round(float(m), 6), "uncertainty": round(math.sqrt(max(float(v), 0.0)), 6)}
            for a, m, v in zip(eligible, mean, var, strict=True)}


#: The ``explanation`` member of a decide answer, as the OpenAPI description gives it.
EXPLANATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "present when the request asked for it (explain: true)",
    "properties": {
        "policy": {"type": "string"},
        "segments": {"type": "array", "items": {"type": "string"}},
        "candidates": {"type": "array", "items": {"type": "object", "required": ["action_id", "eligible"],
                                                   "properties": {
            "action_id": {"type": "string"},
            "eligible": {"type": "boolean"},
            "excluded_by": {"type": "string", "description": "the rule that excluded it (validity, audience, "
                            "contact policy: suppression, cool-down, cap; channel)"},
            "rank": {"type": ["integer", "null"], "description": "its place in the answer; null: below n"},
            "score": {"type": "number"},
            "contributions": {"type": "array", "items": {"type": "object", "properties": {
                "term": {"type": "string"}, "value": {"type": "number"}}}},
            "expected_reward": {"type": "number"},
            "uncertainty": {"type": "number"},
            "propensity": {"type": "number", "description": "next-best action: the policy's estimate, "
                           "comparable across actions (engine.arbitration)"},
            "value": {"type": "number"}, "lever": {"type": "number"},
            "expected_value": {"type": "number", "description": "propensity x value"},
            "priority": {"type": "number", "description": "what the final order sorts by: propensity x value "
                         "x lever (or the propensity alone)"},
            "channel": {"type": "string"}, "send_at": {"type": ["string", "null"]},
            "channel_rate": {"type": "number", "description": "the customer's engagement rate on that channel"},
        }}},
    },
}
