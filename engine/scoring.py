"""The transparent baseline scorer: affinity x popularity.

``score = prior(popularity) * (1 + w_cat * cat_affinity + w_item * item_affinity + w_tag * tag_share)``
where affinities are the visitor's time-decayed scores normalised by their strongest one, so a single
click already moves the ranking, and popularity is the global forward-decayed engagement.

>>> from engine.config import Action, ScoringSettings
>>> scorer = AffinityPopularityScorer(ScoringSettings())
>>> shoes = Action(id="a", placements=("p",), category="shoes")
>>> books = Action(id="b", placements=("p",), category="books")
>>> pop = PopularitySnapshot({"category": {"books": 10.0, "shoes": 1.0}})
>>> [a.id for a, _ in scorer.rank([shoes, books], None, pop)]  # anonymous: popularity decides
['b', 'a']
>>> [a.id for a, _ in scorer.rank([shoes, books], {"category": {"shoes": 3.0}}, pop)]
['a', 'b']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.config import Action, ScoringSettings

Affinities = Mapping[str, Mapping[str, float]]


@dataclass(slots=True)
class PopularitySnapshot:
    """Global popularity per affinity feature (e.g. ``{"category": {"shoes": 12.5}}``), decayed to
    the time the snapshot was taken. Serving refreshes it in the background, never per request."""

    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    taken_at: float = 0.0

    def get(self, feature: str, value: str | None) -> float:
        if value is None:
            return 0.0
        return self.scores.get(feature, {}).get(value, 0.0)


def _normalised(scores: Mapping[str, float] | None) -> Mapping[str, float]:
    if not scores:
        return {}
    peak = max(scores.values())
    if peak <= 0:
        return {}
    return {k: v / peak for k, v in scores.items()}


class AffinityPopularityScorer:
    name = "affinity_popularity"
    version = "1"

    def __init__(self, weights: ScoringSettings) -> None:
        self.w = weights
        # popularity prior per action id, for the snapshot it was computed from (snapshots are immutable and
        # replaced as a whole, about once a second): not recomputed per request
        self._priors_of: PopularitySnapshot | None = None
        self._priors: dict[str, float] = {}

    def _prior(self, a: Action, popularity: PopularitySnapshot) -> float:
        if popularity is not self._priors_of:
            self._priors_of, self._priors = popularity, {}
        p = self._priors.get(a.id)
        if p is None:
            p = self._priors[a.id] = 1.0 + math.log1p(
                popularity.get("item", a.item_id) + 0.5 * popularity.get("category", a.category))
        return p

    def score(self, actions: Sequence[Action], affinities: Affinities | None,
              popularity: PopularitySnapshot, collaborative: Mapping[str, float] | None = None) -> list[float]:
        """``collaborative``: co-visitation score in [0, 1] per action id (see engine.recommend.signal)."""
        cat = _normalised((affinities or {}).get("category"))
        item = _normalised((affinities or {}).get("item"))
        out: list[float] = []
        if popularity is not self._priors_of:
            self._priors_of, self._priors = popularity, {}
        priors, prior_of = self._priors, self._prior
        for a in actions:
            prior = priors.get(a.id) or prior_of(a, popularity)
            if not (cat or item or collaborative):
                out.append(prior)
                continue
            personal = 1.0
            if cat or item:
                personal += self.w.category_weight * cat.get(a.category or "", 0.0)
                personal += self.w.item_weight * item.get(a.item_id or "", 0.0)
                if a.tags and cat:
                    personal += self.w.tag_weight * sum(cat.get(t, 0.0) for t in a.tags) / len(a.tags)
            if collaborative:
                personal += self.w.covisit_weight * float(collaborative.get(a.id, 0.0))
            out.append(prior * personal)
        return out

    def rank(self, actions: Sequence[Action], affinities: Affinities | None,
             popularity: PopularitySnapshot, collaborative: Mapping[str, float] | None = None,
             ) -> list[tuple[Action, float]]:
        scored = zip(actions, self.score(actions, affinities, popularity, collaborative), strict=True)
        # ties broken by action id so the answer is deterministic
        return sorted(scored, key=lambda pair: (-pair[1], pair[0].id))
