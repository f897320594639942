"""Online popularity: the non-personalised baseline and the cold-start fallback of the recommenders."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from engine.recommend._base import ForwardDecay, ItemIndex, grow, top_k_items


class Popularity:
    """(Optionally time-decayed) sum of interaction weights per item.

    ``half_life`` is in the unit of ``ts`` (seconds for Unix times); ``None`` counts forever.

    >>> pop = Popularity()
    >>> for user, item in [("u1", "a"), ("u2", "a"), ("u2", "b")]:
    ...     pop.learn_one(user, item)
    >>> pop.score([], ["a", "b", "unknown"])
    {'a': 2.0, 'b': 1.0, 'unknown': 0.0}
    >>> pop.recommend(k=1)
    [('a', 2.0)]

    With a half-life, older events weigh less (scores are relative, only their order matters):

    >>> pop = Popularity(half_life=10.0)
    >>> pop.learn_one("u1", "old", ts=0.0); pop.learn_one("u1", "old", ts=0.0)
    >>> pop.learn_one("u2", "new", ts=30.0)   # three half-lives later: worth 8 old events
    >>> [item for item, _ in pop.recommend(k=2)]
    ['new', 'old']
    """

    def __init__(self, half_life: float | None = None) -> None:
        self.half_life = half_life
        self._decay = ForwardDecay(half_life)
        self._index = ItemIndex()
        self._pop = np.zeros(0, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def items(self) -> list[Hashable]:
        """Known item ids, in the order of :meth:`score_array`."""
        return self._index.ids()

    def row_of(self, item_id: Hashable) -> int | None:
        """Index of ``item_id`` in :meth:`score_array` (``None`` if unknown)."""
        return self._index.get(item_id)

    def learn_one(self, user_id: Hashable, item_id: Hashable, weight: float = 1.0, ts: float | None = None) -> None:
        """Count one interaction; ``user_id`` is unused (kept for a common signature)."""
        if weight <= 0:
            return
        if self._decay.needs_rescale(ts):
            self._pop *= self._decay.move_landmark()
        ix = self._index.add(item_id)
        self._pop = grow(self._pop, self._index.size)
        self._pop[ix] += weight * self._decay.gain(ts)

    def score_array(self) -> np.ndarray:
        """Scores of all item rows (a view; do not modify)."""
        return self._pop[: self._index.size]

    def score(
        self, history: Sequence[Hashable] = (), candidates: Sequence[Hashable] | None = None
    ) -> dict[Hashable, float]:
        """Score ``candidates`` (default: every known item); ``history`` is ignored."""
        if candidates is None:
            return {self._index.id_at(r): float(self._pop[r]) for r in np.flatnonzero(self._index.live_mask()).tolist()}
        rows = self._index.rows(candidates)
        return {c: (0.0 if r is None else float(self._pop[r])) for c, r in zip(candidates, rows, strict=True)}

    def recommend(self, k: int = 10, exclude: Sequence[Hashable] = ()) -> list[tuple[Hashable, float]]:
        """The ``k`` most popular items not in ``exclude``, best first."""
        scores = self.score_array().copy()
        for r in self._index.rows(exclude):
            if r is not None:
                scores[r] = -np.inf
        return top_k_items(self._index, scores, k)
