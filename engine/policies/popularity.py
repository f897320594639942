"""Popularity: rank actions by their smoothed click-through rate, globally or per segment.

Every rate is a Beta-Binomial posterior mean shrunk towards the level above it:

* overall rate ``mu = (clicks + prior_ctr * m) / (shows + m)`` over all actions;
* per action ``p_a = (clicks_a + m * mu) / (shows_a + m)``;
* per segment and action ``p_sa = (clicks_sa + m * p_a) / (shows_sa + m)``, so a segment with little
  data falls back on the action's global rate rather than on noise.

``m`` is ``prior_strength`` (pseudo-impressions). The score adds ``bonus`` posterior standard deviations
(``sqrt(p (1 - p) / (n + m + 1))``): a new action, with ``n = 0``, gets an optimistic score and is shown
until its rate is known. Set ``bonus=0`` for pure, greedy popularity.

Segments come from the context: every key ``segment:<name>`` with a positive value is an active
segment; with several, their scores are averaged; with none (or ``segment_prefix=None``), the global
rates are used.

>>> import random
>>> from engine.policies import Candidate
>>> pop = PopularityPolicy(bonus=0.0)
>>> a, b = Candidate("a"), Candidate("b")
>>> for _ in range(50):
...     pop.learn_one({"segment:men": 1}, a, 1.0)
...     pop.learn_one({"segment:men": 1}, b, 0.0)
...     pop.learn_one({"segment:women": 1}, a, 0.0)
...     pop.learn_one({"segment:women": 1}, b, 1.0)
>>> pop.rank({"segment:men": 1}, [a, b], 1, random.Random(0)).top
'a'
>>> pop.rank({"segment:women": 1}, [a, b], 1, random.Random(0)).top
'b'
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Self

from engine.model_state import ModelState, StateError
from engine.policies.base import Candidate, Features, Ranked, empty_ranked, order_rest, tie_break_top

__all__ = ["PopularityPolicy", "SEGMENT_PREFIX"]

SEGMENT_PREFIX = "segment:"


class PopularityPolicy:
    """Smoothed CTR per action (and per segment); deterministic, ties broken at random.

    Rewards are expected in ``[0, 1]`` (a click, a conversion); other values are clipped.
    """

    name = "popularity"

    def __init__(
        self,
        prior_ctr: float = 0.05,
        prior_strength: float = 20.0,
        bonus: float = 1.0,
        segment_prefix: str | None = SEGMENT_PREFIX,
    ) -> None:
        if not 0.0 < prior_ctr < 1.0 or prior_strength <= 0.0:
            raise ValueError("prior_ctr must be in (0, 1) and prior_strength > 0")
        self.prior_ctr = prior_ctr
        self.prior_strength = prior_strength
        self.bonus = bonus
        self.segment_prefix = segment_prefix
        self.n_updates = 0
        self._shows_total = 0.0
        self._clicks_total = 0.0
        self._counts: dict[str, list[float]] = {}  # action -> [shows, clicks]
        self._segments: dict[str, dict[str, list[float]]] = {}  # segment -> action -> [shows, clicks]

    def _active_segments(self, context: Features) -> list[str]:
        pre = self.segment_prefix
        if not pre:
            return []
        cut = len(pre)
        return [k[cut:] for k, v in context.items() if v and v > 0 and k.startswith(pre)]

    def learn_one(self, context: Features, candidate: Candidate, reward: float) -> None:
        r = min(max(float(reward), 0.0), 1.0)
        aid = candidate.action_id
        c = self._counts.setdefault(aid, [0.0, 0.0])
        c[0] += 1.0
        c[1] += r
        for seg in self._active_segments(context):
            sc = self._segments.setdefault(seg, {}).setdefault(aid, [0.0, 0.0])
            sc[0] += 1.0
            sc[1] += r
        self._shows_total += 1.0
        self._clicks_total += r
        self.n_updates += 1

    def rates(self, context: Features, candidates: Sequence[Candidate]) -> list[tuple[float, float]]:
        """(smoothed rate, its posterior standard deviation) per candidate, in this context."""
        m = self.prior_strength
        mu = (self._clicks_total + self.prior_ctr * m) / (self._shows_total + m)
        segments = [self._segments.get(s, {}) for s in self._active_segments(context)]
        out: list[tuple[float, float]] = []
        for cand in candidates:
            shows, clicks = self._counts.get(cand.action_id, (0.0, 0.0))
            p = (clicks + m * mu) / (shows + m)
            if not segments:
                out.append((p, math.sqrt(p * (1.0 - p) / (shows + m + 1.0))))
                continue
            mean = sd = 0.0
            for seg in segments:
                s_shows, s_clicks = seg.get(cand.action_id, (0.0, 0.0))
                ps = (s_clicks + m * p) / (s_shows + m)
                mean += ps
                sd += math.sqrt(ps * (1.0 - ps) / (s_shows + m + 1.0))
            out.append((mean / len(segments), sd / len(segments)))
        return out

    def rank(self, context: Features, candidates: Sequence[Candidate], n: int, rng: random.Random) -> Ranked:
        if not candidates or n <= 0:
            return empty_ranked()
        rates = self.rates(context, candidates)
        scores = [p + self.bonus * sd for p, sd in rates]
        top, n_tied = tie_break_top(scores, rng)
        order = order_rest(scores, top, min(n, len(candidates)))
        best_mean = max(p for p, _ in rates)
        return Ranked(
            [candidates[i].action_id for i in order],
            [scores[i] for i in order],
            1.0 / n_tied,
            rates[top][0] < best_mean - 1e-12,
        )

    # -- state (engine.model_state) -----------------------------------------------------------------
    def to_state(self) -> ModelState:
        """Parameters and counts as plain data (no arrays: the counts are per action and per segment).

        >>> pop = PopularityPolicy()
        >>> pop.learn_one({"segment:vip": 1.0}, Candidate("a"), 1.0)
        >>> PopularityPolicy.from_state(pop.to_state()).rates({"segment:vip": 1.0}, [Candidate("a")]) == pop.rates(
        ...     {"segment:vip": 1.0}, [Candidate("a")])
        True
        """
        return ModelState({
            "prior_ctr": self.prior_ctr, "prior_strength": self.prior_strength, "bonus": self.bonus,
            "segment_prefix": self.segment_prefix, "n_updates": self.n_updates, "shows_total": self._shows_total,
            "clicks_total": self._clicks_total, "counts": self._counts, "segments": self._segments,
        })

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        policy = cls(prior_ctr=state.number("prior_ctr"), prior_strength=state.number("prior_strength"),
                     bonus=state.number("bonus"), segment_prefix=state.optional_text("segment_prefix"))
        policy.n_updates = state.integer("n_updates", 0)
        policy._shows_total = state.number("shows_total")
        policy._clicks_total = state.number("clicks_total")
        policy._counts = _counts(state.mapping("counts"))
        policy._segments = {seg: _counts(c) for seg, c in state.mapping("segments").items()}
        return policy


def _counts(raw: Any) -> dict[str, list[float]]:
    """``{action: [shows, clicks]}`` as read from a state, checked."""
    if not isinstance(raw, dict):
        raise StateError("counts must be an object")
    out: dict[str, list[float]] = {}
    for action, pair in raw.items():
        if not (isinstance(pair, list) and len(pair) == 2 and set(map(type, pair)) <= {int, float}):
            raise StateError(f"counts of {action!r} must be [shows, clicks]")
        out[action] = [float(pair[0]), float(pair[1])]
    return out
