"""The co-visitation model as a snapshot-able ranking signal.

The learner learns it from the stream's item interactions (routed to one owner, like a placement's
model); serving loads its signed snapshot and turns "people who engaged with this visitor's recent
items engaged with X" into a per-candidate feature ``covisit`` in [0, 1] (the best candidate = 1).

>>> sig = CollaborativeSignal()
>>> for visitor in ("u1", "u2", "u3"):
...     sig.learn_interaction(visitor, "boots", 1.0)
...     sig.learn_interaction(visitor, "socks", 1.0)
>>> sig.learn_interaction("u4", "hat", 1.0)
>>> s = sig.candidate_scores(["boots"], ["socks", "hat"])
>>> s["socks"], "hat" in s  # the hat was never seen with boots: no collaborative score
(1.0, False)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Self

from engine.model_state import ModelState
from engine.recommend.covisit import CoVisitation

COVISIT_MODEL = "__covisit__/covisit"
#: the name the learner's own snapshot (with the visitors' histories) is signed under, so it cannot be served
#: in place of the serving snapshot, nor the other way round
COVISIT_STATE = COVISIT_MODEL + "#learner-state"
#: the learning topic's key of everything the co-visitation learner receives (one owner, in order)
COVISIT_KEY = COVISIT_MODEL.encode()


class CollaborativeSignal:
    name = "covisit"

    def __init__(self, **params: Any) -> None:
        # no popularity prior: popularity is its own feature, and a visitor whose items have no
        # neighbours must get no collaborative score rather than a popularity ranking in disguise
        self.model = CoVisitation(**{"prior": 0.0, **params})
        self.n_updates = 0

    def learn_interaction(self, visitor: str, item: str, weight: float, ts: float | None = None) -> None:
        self.model.learn_one(visitor, item, weight, ts)
        self.n_updates += 1

    def learn_many(self, rows: Sequence[Sequence[Any]]) -> None:
        """Learn a batch of ``(visitor, item, weight, ts)`` interactions in order (what the stream sends
        per batch); the same model as :meth:`learn_interaction` on each, several times cheaper.

        >>> sig = CollaborativeSignal()
        >>> sig.learn_many([["u1", "boots", 1.0, 0.0], ["u1", "socks", 0.5, 1.0]])
        >>> sig.n_updates, sig.candidate_scores(["boots"], ["socks"])
        (2, {'socks': 1.0})
        """
        self.model.learn_many(rows)  # type: ignore[arg-type]  # JSON lists of the same 4 fields as the tuples
        self.n_updates += len(rows)

    def forget(self, visitors: Sequence[str]) -> int:
        """Drop these visitors' interaction histories (``CoVisitation.forget``); returns how many were held."""
        return self.model.forget(visitors)

    def for_serving(self) -> CollaborativeSignal:
        """This signal without the model's per-visitor histories (``CoVisitation.without_histories``): the
        snapshot serving loads. Serving passes the visitor's recent items from the profile, so its scores
        are the same.

        >>> sig = CollaborativeSignal()
        >>> sig.learn_many([["u1", "boots", 1.0, 0.0], ["u1", "socks", 0.5, 1.0]])
        >>> lean = sig.for_serving()
        >>> lean.candidate_scores(["boots"], ["socks"]), lean.model.history("u1"), lean.n_updates
        ({'socks': 1.0}, [], 2)
        """
        twin = copy.copy(self)
        twin.model = self.model.without_histories()
        return twin

    def to_state(self) -> ModelState:
        """The co-visitation model's state (:meth:`CoVisitation.to_state`) and the update count.

        >>> sig = CollaborativeSignal()
        >>> sig.learn_many([["u1", "boots", 1.0, 0.0], ["u1", "socks", 0.5, 1.0]])
        >>> twin = CollaborativeSignal.from_state(sig.to_state())
        >>> twin.n_updates, twin.candidate_scores(["boots"], ["socks"]), twin.model.history_items("u1")
        (2, {'socks': 1.0}, ['boots', 'socks'])
        """
        state = self.model.to_state()
        return ModelState({**state.params, "n_updates": self.n_updates}, state.arrays)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        signal = cls()
        signal.model = CoVisitation.from_state(state)
        signal.n_updates = state.integer("n_updates", 0)
        return signal

    def candidate_scores(self, recent_first: Sequence[str], items: Sequence[str]) -> dict[str, float]:
        """Scores of ``items`` for a visitor whose recent items are given most recent first,
        normalised so the best is 1.0; empty when the history says nothing."""
        if not recent_first or not items:
            return {}
        raw: dict[Any, float] = self.model.score(list(reversed(recent_first)), items)  # keys: the str items
        seen = set(recent_first)
        best = max((v for k, v in raw.items() if k not in seen), default=0.0)
        if best <= 0:
            return {}
        return {k: v / best for k, v in raw.items() if v > 0 and k not in seen}
