"""A click-through-rate ranker: one River classifier over crossed features, with epsilon-greedy.

Each (context, candidate) pair becomes a sparse hashed feature dict (``FeatureHasher.cross_sparse``):
context features, action features, the action id, ``context x action`` crosses (including
``context x action id``, i.e. per-action weights) and match features. One
``river.linear_model.LogisticRegression`` trained with AdaGrad (per-feature step sizes suit sparse
hashed crosses far better than one constant SGD rate), or any River binary classifier passed as
``model`` (e.g. ``river.facto.FMClassifier``), predicts the click probability.

Snapshots hold the classifier's parameters, not the object (``to_state``: weights, intercept, optimiser state
as arrays and numbers), which is supported for ``LogisticRegression`` with the log loss, zero initial weights,
constant learning rates, SGD or AdaGrad and no L1 penalty (the default model); another ``model`` can rank and
learn in process but refuses to be snapshotted.

Exploration is epsilon-greedy over the *top* slot: with probability ``epsilon`` the top action is drawn
uniformly among the ``k`` candidates, otherwise it is the greedy one. Logged propensities are exact:
``(1 - epsilon) / t + epsilon / k`` for one of the ``t`` tied greedy actions, ``epsilon / k`` for any
other. The greedy score is optimistic: ``p + optimism * sqrt(p (1 - p) / (1 + n_a))`` (``p`` the
predicted click probability, floored at 1 % inside the square root; ``n_a`` the rewards learned for
the action), a count-based upper confidence bound on the Bernoulli click, so a new action is tried
early instead of waiting for an epsilon draw, and the bonus fades as its rewards come in.

>>> import random
>>> from engine.policies import Candidate
>>> ranker = CTRRanker(epsilon=0.1, optimism=0.0)
>>> shoes, books = Candidate("shoes", {"cat:shoes": 1}), Candidate("books", {"cat:books": 1})
>>> rng = random.Random(0)
>>> for _ in range(300):
...     ranker.learn_one({"aff_cat:shoes": 1.0}, shoes, 1.0)
...     ranker.learn_one({"aff_cat:shoes": 1.0}, books, 0.0)
>>> r = ranker.rank({"aff_cat:shoes": 1.0}, [shoes, books], n=2, rng=random.Random(1))
>>> r.action_ids, round(r.propensity, 2), r.explored
(['shoes', 'books'], 0.95, False)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from engine.model_state import ModelState, StateError
from engine.policies.base import Candidate, Features, Ranked, empty_ranked, order_rest
from engine.policies.features import FeatureHasher

__all__ = ["CTRRanker"]


class CTRRanker:
    """Logistic-regression CTR model + optimistic epsilon-greedy exploration with exact propensities."""

    name = "ctr_ranker"

    def __init__(
        self,
        epsilon: float = 0.05,
        optimism: float = 2.0,
        model: Any = None,
        learning_rate: float = 0.1,
        l2: float = 0.0,
        hash_dims: int = 1 << 20,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon = epsilon
        self.optimism = optimism
        if model is None:
            # imported here, not at module level: River (with SciPy) adds much to a process's RSS, and
            # serving imports every policy class but builds a CTRRanker only when a placement is configured
            # with it
            from river import linear_model, optim

            model = linear_model.LogisticRegression(optimizer=optim.AdaGrad(learning_rate), l2=l2)
        self.model = model
        self.n_updates = 0
        self._hasher = FeatureHasher(hash_dims, seed=seed)
        self._counts: dict[str, int] = {}

    def _features(self, context: Features, candidates: Sequence[Candidate]) -> list[dict[int, float]]:
        return self._hasher.cross_sparse(context, candidates, with_ids=True, with_context=True)

    def predict(self, context: Features, candidates: Sequence[Candidate]) -> list[float]:
        """Predicted click probability per candidate (no exploration bonus)."""
        predict = self.model.predict_proba_one
        return [predict(x).get(True, 0.0) for x in self._features(context, candidates)]

    def learn_one(self, context: Features, candidate: Candidate, reward: float) -> None:
        x = self._hasher.cross_sparse_one(context, candidate, with_ids=True, with_context=True)
        self.model.learn_one(x, reward > 0)
        self._counts[candidate.action_id] = self._counts.get(candidate.action_id, 0) + 1
        self.n_updates += 1

    def rank(self, context: Features, candidates: Sequence[Candidate], n: int, rng: random.Random) -> Ranked:
        if not candidates or n <= 0:
            return empty_ranked()
        k = len(candidates)
        probs = self.predict(context, candidates)
        counts = self._counts
        scores = [
            p + self.optimism * math.sqrt(max(p, 0.01) * (1.0 - p) / (1.0 + counts.get(c.action_id, 0)))
            for p, c in zip(probs, candidates, strict=True)
        ]
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if s >= best - 1e-12]
        if self.epsilon > 0.0 and rng.random() < self.epsilon:
            top = rng.randrange(k)
        else:
            top = tied[rng.randrange(len(tied))] if len(tied) > 1 else tied[0]
        greedy = top in tied
        propensity = self.epsilon / k + ((1.0 - self.epsilon) / len(tied) if greedy else 0.0)
        order = order_rest(scores, top, min(n, k))
        return Ranked([candidates[i].action_id for i in order], [scores[i] for i in order], propensity, not greedy)

    # -- state (engine.model_state) -----------------------------------------------------------------
    def to_state(self) -> ModelState:
        """The ranker and its classifier's parameters as plain data (see the module docstring for the
        classifiers this supports; ``TypeError`` for others).

        >>> import random
        >>> from engine.policies import Candidate
        >>> r = CTRRanker(epsilon=0.0)
        >>> r.learn_one({"aff_cat:a": 1.0}, Candidate("x", {"cat:a": 1.0}), 1.0)
        >>> r2 = CTRRanker.from_state(r.to_state())
        >>> r2.predict({"aff_cat:a": 1.0}, [Candidate("x", {"cat:a": 1.0})]) == r.predict(
        ...     {"aff_cat:a": 1.0}, [Candidate("x", {"cat:a": 1.0})])
        True
        """
        from river import linear_model, optim

        m = self.model
        opt: Any = getattr(m, "optimizer", None)
        kinds = {optim.SGD: "sgd", optim.AdaGrad: "adagrad"}
        if (type(m) is not linear_model.LogisticRegression or type(opt) not in kinds
                or type(m.loss) is not optim.losses.Log or type(m.initializer) is not optim.initializers.Zeros
                or type(opt.lr) is not optim.schedulers.Constant
                or type(m.intercept_lr) is not optim.schedulers.Constant or m.l1 != 0):
            raise TypeError("CTRRanker snapshots support LogisticRegression (log loss, zero initial weights, "
                            "constant learning rates, SGD or AdaGrad, no L1), not this model")
        weights = m._weights.to_dict()
        clf: dict[str, Any] = {
            "optimizer": kinds[type(opt)], "lr": float(opt.lr.learning_rate), "n_iterations": int(opt.n_iterations),
            "eps": float(getattr(opt, "eps", 0.0)), "l2": float(m.l2), "intercept": float(m.intercept),
            "intercept_init": float(m.intercept_init), "intercept_lr": float(m.intercept_lr.learning_rate),
            "clip_gradient": float(m.clip_gradient), "weight_pos": float(m.loss.weight_pos),
            "weight_neg": float(m.loss.weight_neg),
        }
        g2 = getattr(opt, "g2", {})
        params: dict[str, Any] = {
            "epsilon": self.epsilon, "optimism": self.optimism, "hash_dims": self._hasher.dims,
            "seed": self._hasher.seed, "n_updates": self.n_updates, "counts": self._counts, "classifier": clf,
        }
        arrays = {
            "w_keys": np.fromiter(weights.keys(), np.int64, len(weights)),
            "w_values": np.fromiter(weights.values(), np.float64, len(weights)),
            "g2_keys": np.fromiter(g2.keys(), np.int64, len(g2)),
            "g2_values": np.fromiter(g2.values(), np.float64, len(g2)),
        }
        return ModelState(params, arrays)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        """The ranker :meth:`to_state` described, its classifier rebuilt from the parameters."""
        import collections

        from river import linear_model, optim, utils

        clf = ModelState(state.mapping("classifier"))
        kind = clf.text("optimizer")
        if kind not in ("sgd", "adagrad"):
            raise StateError(f"unknown optimizer {kind!r}")
        lr = clf.number("lr")
        opt: Any = optim.SGD(lr) if kind == "sgd" else optim.AdaGrad(lr, eps=clf.number("eps"))
        opt.n_iterations = clf.integer("n_iterations", 0)
        loss = optim.losses.Log(weight_pos=clf.number("weight_pos"), weight_neg=clf.number("weight_neg"))
        model = linear_model.LogisticRegression(
            optimizer=opt, loss=loss, l2=clf.number("l2"), intercept_init=clf.number("intercept_init"),
            intercept_lr=clf.number("intercept_lr"), clip_gradient=clf.number("clip_gradient"))
        model.intercept = clf.number("intercept")
        w_keys, g_keys = state.array("w_keys", "<i8", (None,)), state.array("g2_keys", "<i8", (None,))
        w_values = state.array("w_values", "<f8", w_keys.shape).tolist()
        model._weights = utils.VectorDict(dict(zip(w_keys.tolist(), w_values, strict=True)))
        if kind == "adagrad":
            g2_values = state.array("g2_values", "<f8", g_keys.shape).tolist()
            opt.g2 = collections.defaultdict(float, zip(g_keys.tolist(), g2_values, strict=True))
        ranker = cls(epsilon=state.number("epsilon"), optimism=state.number("optimism"), model=model,
                     hash_dims=state.integer("hash_dims", 2), seed=state.integer("seed"))
        counts = state.mapping("counts")
        if not set(map(type, counts.values())) <= {int}:
            raise StateError("'counts' must map action ids to integers")
        ranker._counts = counts
        ranker.n_updates = state.integer("n_updates", 0)
        return ranker
