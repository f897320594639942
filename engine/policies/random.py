"""The uniform random policy: the exploration floor every other policy is compared against.

>>> import random
>>> from engine.policies import Candidate
>>> r = RandomPolicy().rank({}, [Candidate("a"), Candidate("b"), Candidate("c"), Candidate("d")], 2, random.Random(7))
>>> len(r.action_ids), r.propensity, r.explored
(2, 0.25, True)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Self

from engine.model_state import ModelState
from engine.policies.base import Candidate, Features, Ranked, empty_ranked

__all__ = ["RandomPolicy"]


class RandomPolicy:
    """Shows a uniformly random permutation of the candidates; learns nothing but counts updates.

    The propensity of the top action is ``1 / len(candidates)``; every answer is exploration.
    """

    name = "random"

    def __init__(self) -> None:
        self.n_updates = 0

    def rank(self, context: Features, candidates: Sequence[Candidate], n: int, rng: random.Random) -> Ranked:
        if not candidates or n <= 0:
            return empty_ranked()
        k = len(candidates)
        order = rng.sample(range(k), min(n, k))
        return Ranked([candidates[i].action_id for i in order], [0.0] * len(order), 1.0 / k, True)

    def learn_one(self, context: Features, candidate: Candidate, reward: float) -> None:
        self.n_updates += 1

    def to_state(self) -> ModelState:
        """Nothing but the update count.

        >>> RandomPolicy.from_state(RandomPolicy().to_state()).n_updates
        0
        """
        return ModelState({"n_updates": self.n_updates})

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        policy = cls()
        policy.n_updates = state.integer("n_updates", 0)
        return policy
