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
        if popularity is not self._priors_of:
            self._priors_of, self._priors = popularity, {}
        priors, prior_of = self._priors, self._prior
        if not (cat or item or collaborative):
            return [priors.get(a.id) or prior_of(a, popularity) for a in actions]
        w = self.w
        cw, iw, tw, vw = w.category_weight, w.item_weight, w.tag_weight, w.covisit_weight
        cat_get, item_get = cat.get, item.get
        # a tag counts only when the visitor has an affinity of that name: most actions share none, and adding
        # tag_weight * 0 / len(tags) is adding 0.0, so those skip the sum (same floats, same order of additions)
        cat_keys = cat.keys()
        out: list[float] = []
        for a in actions:
            prior = priors.get(a.id) or prior_of(a, popularity)
            personal = 1.0
            if cat or item:
                personal += cw * cat_get(a.category or "", 0.0)
                personal += iw * item_get(a.item_id or "", 0.0)
                tags = a.tags
                if tags and cat and not cat_keys.isdisjoint(tags):
                    personal += tw * sum(cat_get(t, 0.0) for t in tags) / len(tags)
            if collaborative:
                personal += vw * float(collaborative.get(a.id, 0.0))
            out.append(prior * personal)
        return out

    def terms(self, action: Action, affinities: Affinities | None, popularity: PopularitySnapshot,
              collaborative: Mapping[str, float] | None = None) -> tuple[float, list[tuple[str, float]]]:
        """What one action's score is made of: ``(prior, [(term, value), ...])`` with
        ``score = prior * (1 + sum of the values)``, the same numbers ``score`` adds (for explanations).

        >>> from engine.config import Action, ScoringSettings
        >>> scorer = AffinityPopularityScorer(ScoringSettings())
        >>> shoes = Action(id="a", placements=("p",), category="shoes", tags=("shoes", "sale"))
        >>> prior, terms = scorer.terms(shoes, {"category": {"shoes": 3.0, "books": 6.0}}, PopularitySnapshot())
        >>> prior, terms
        (1.0, [('category affinity', 0.5), ('item affinity', 0.0), ('tag affinity', 0.075), ('co-visitation', 0.0)])
        >>> scorer.score([shoes], {"category": {"shoes": 3.0, "books": 6.0}}, PopularitySnapshot()) == [prior * 1.575]
        True
        """
        cat = _normalised((affinities or {}).get("category"))
        item = _normalised((affinities or {}).get("item"))
        w = self.w
        prior = self._prior(action, popularity)
        tags = action.tags
        tag = w.tag_weight * sum(cat.get(t, 0.0) for t in tags) / len(tags) if tags and cat else 0.0
        covisit = w.covisit_weight * float((collaborative or {}).get(action.id, 0.0))
        return prior, [("category affinity", w.category_weight * cat.get(action.category or "", 0.0)),
                       ("item affinity", w.item_weight * item.get(action.item_id or "", 0.0)),
                       ("tag affinity", tag), ("co-visitation", covisit)]

    def rank(self, actions: Sequence[Action], affinities: Affinities | None,
             popularity: PopularitySnapshot, collaborative: Mapping[str, float] | None = None,
             ) -> list[tuple[Action, float]]:
        scores = self.score(actions, affinities, popularity, collaborative)
        # ties broken by action id so the answer is deterministic (then by position: the sort of the
        # (action, score) pairs by (-score, id) was stable); plain tuples sort in C, without a key function
        order = sorted(zip([-s for s in scores], [a.id for a in actions], range(len(scores)), strict=True))
        return [(actions[i], scores[i]) for _, _, i in order]
