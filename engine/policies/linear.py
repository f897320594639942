"""Linear contextual bandits: :class:`LinUCB` and :class:`LinearThompson`, fast enough for the stream.

Both keep the same ridge-regression statistics (Li et al., 2010, "A contextual-bandit approach to
personalized news article recommendation"):

* a **disjoint** part per action: ``A_a^-1`` (``d x d``) and ``b_a`` over the hashed *context*
  features ``x`` (bias in slot 0), so each action learns its own response to the visitor;
* optionally (``shared_dims > 0``) a **shared** part, Li's *hybrid* model: ``A_0``, ``b_0`` over
  hashed ``context x action`` crosses and match features ``z`` (``engine.policies.features``), so
  what is learned about "shoe lovers click shoe offers" carries over to a brand-new shoe offer.

``A_a^-1`` is kept up to date with Sherman-Morrison rank-1 updates (``O(d^2)`` per event, no matrix
inversion); the hybrid part inverts the small ``k x k`` matrix ``A_0`` lazily, at most once per
``rank`` after updates. Scoring all candidates is a few batched numpy products over stacked per-action
matrices, where River's ``bandit.LinUCBDisjoint`` (documented as "too slow to realistically be used")
scores arm by arm through one ``BayesianLinearRegression`` each and has no shared part, no action
features and no propensities; ``python -m bench.quality`` measures both side by side.
Feature names are hashed (``context_dims``/``shared_dims`` slots), so memory per action is fixed:
``8 * d * (d + k + 1)`` bytes, about 49 KiB at the defaults (d=64, k=32).

Unseen actions use the prior (``A^-1 = I / ridge``, ``b = 0``): zero mean, maximal uncertainty, so UCB
puts them first (optimistic) and Thompson sampling gives them wide draws -- cold start is explored
without any special case.

>>> import random
>>> from engine.policies import Candidate
>>> policy = LinUCB(alpha=0.5, context_dims=16)
>>> shoes, books = Candidate("shoes", {"cat:shoes": 1}), Candidate("books", {"cat:books": 1})
>>> rng = random.Random(0)
>>> for _ in range(200):
...     for ctx, liked in (({"aff_cat:shoes": 1.0}, "shoes"), ({"aff_cat:books": 1.0}, "books")):
...         top = policy.rank(ctx, [shoes, books], n=1, rng=rng).top
...         policy.learn_one(ctx, shoes if top == "shoes" else books, float(top == liked))
>>> policy.rank({"aff_cat:shoes": 1.0}, [shoes, books], n=2, rng=rng).action_ids
['shoes', 'books']
>>> policy.rank({"aff_cat:books": 1.0}, [shoes, books], n=1, rng=rng).top
'books'
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from engine.model_state import ModelState, StateError
from engine.policies.base import Candidate, Features, Ranked, empty_ranked, tie_break_top
from engine.policies.features import FeatureHasher
from engine.policies.propensity import win_probability

__all__ = ["LinUCB", "LinearThompson"]


class _LinearBandit:
    """Shared statistics of the hybrid/disjoint linear bandit (see module docstring)."""

    name = "linear"
    _gen: np.random.Generator | None  # Thompson sampling's generator, per process (not pickled)

    def __init__(self, context_dims: int = 64, shared_dims: int = 32, ridge: float = 1.0, seed: int = 0) -> None:
        if ridge <= 0:
            raise ValueError("ridge must be > 0")
        self.context_dims = context_dims
        self.shared_dims = shared_dims
        self.ridge = ridge
        self.seed = seed
        self.n_updates = 0
        d, k = context_dims, shared_dims
        self._x_hasher = FeatureHasher(d, seed=seed)
        self._z_hasher = FeatureHasher(k, seed=seed + 1) if k else None
        self._slots: dict[str, int] = {}  # action id -> row; row 0 is the prior, never updated
        self._Ainv = np.zeros((0, d, d))
        self._b = np.zeros((0, d))
        self._B = np.zeros((0, d, k))
        self._counts = np.zeros(0, dtype=np.int64)
        self._grow(8)
        self._A0 = np.eye(k) * ridge
        self._b0 = np.zeros(k)
        self._A0inv: np.ndarray = np.eye(k) / ridge
        self._beta = np.zeros(k)
        self._shared_dirty = False
        self._serving: tuple[Any, ...] | None = None  # request-independent products, see _serving_state

    # -- storage ---------------------------------------------------------------------------------
    def _grow(self, capacity: int) -> None:
        d, k = self.context_dims, self.shared_dims
        old = self._Ainv.shape[0]
        Ainv = np.empty((capacity, d, d))
        Ainv[:old] = self._Ainv
        Ainv[old:] = np.eye(d) / self.ridge
        b = np.zeros((capacity, d))
        b[:old] = self._b
        B = np.zeros((capacity, d, k))
        B[:old] = self._B
        counts = np.zeros(capacity, dtype=np.int64)
        counts[:old] = self._counts
        self._Ainv, self._b, self._B, self._counts = Ainv, b, B, counts

    def _slot(self, action_id: str) -> int:
        i = self._slots.get(action_id)
        if i is None:
            i = self._slots[action_id] = len(self._slots) + 1
            if i >= self._Ainv.shape[0]:
                self._grow(2 * self._Ainv.shape[0])
        return i

    # -- state (engine.model_state) -----------------------------------------------------------------
    #: Constructor parameters a state carries (each subclass adds its own).
    _PARAMS: tuple[str, ...] = ("context_dims", "shared_dims", "ridge", "seed")

    def to_state(self) -> ModelState:
        """The statistics as plain data: the action ids in row order, and the arrays of the used rows only
        (the unused capacity is not shipped). The shared inverse is brought up to date first, so a loaded
        model never has to invert anything on its first rank; the hashers' caches, the serving products and
        Thompson's generator (each process draws its own numbers) are not part of it.

        >>> import random
        >>> from engine.policies import Candidate
        >>> p = LinUCB(alpha=0.5, context_dims=8, shared_dims=4)
        >>> p.learn_one({"x": 1.0}, Candidate("a", {"cat:c": 1.0}), 1.0)
        >>> q = LinUCB.from_state(p.to_state())
        >>> ctx, cands = {"x": 1.0}, [Candidate("a", {"cat:c": 1.0}), Candidate("b")]
        >>> q.rank(ctx, cands, 2, random.Random(0)) == p.rank(ctx, cands, 2, random.Random(0)), q.n_actions
        (True, 1)
        """
        self._refresh_shared()
        used = len(self._slots) + 1
        params: dict[str, Any] = {k: getattr(self, k) for k in self._PARAMS}
        params.update(n_updates=self.n_updates, actions=list(self._slots))  # insertion order is row order
        arrays = {"Ainv": self._Ainv[:used], "b": self._b[:used], "B": self._B[:used], "counts": self._counts[:used],
                  "A0": self._A0, "b0": self._b0, "A0inv": self._A0inv, "beta": self._beta}
        return ModelState(params, arrays)

    @classmethod
    def _construct(cls, state: ModelState) -> Self:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        """The model :meth:`to_state` described (shapes and types checked: ``StateError`` otherwise)."""
        policy = cls._construct(state)
        d, k = policy.context_dims, policy.shared_dims
        actions = state.strings("actions")
        used = len(actions) + 1
        if len(set(actions)) != len(actions):
            raise StateError("duplicate action ids")
        policy._slots = {a: i for i, a in enumerate(actions, start=1)}
        policy._Ainv = state.array("Ainv", "<f8", (used, d, d))
        policy._b = state.array("b", "<f8", (used, d))
        policy._B = state.array("B", "<f8", (used, d, k))
        policy._counts = state.array("counts", "<i8", (used,))
        policy._A0 = state.array("A0", "<f8", (k, k))
        policy._b0 = state.array("b0", "<f8", (k,))
        policy._A0inv = state.array("A0inv", "<f8", (k, k))
        policy._beta = state.array("beta", "<f8", (k,))
        policy.n_updates = state.integer("n_updates", 0)
        return policy

    def prepare(self) -> None:
        """Compute the request-independent products now (serving calls this when a model is loaded),
        so the first request after a reload does not pay for them."""
        self._serving_state()

    def _serving_state(self) -> tuple[Any, ...]:
        """Per model state (it changes only with ``learn_one``): ``theta_a = A_a^-1 b_a`` for every
        stored action, and ``A_a^-1`` packed as its upper triangle with doubled off-diagonal terms, so
        that ``x' A_a^-1 x`` for all actions is one matrix-vector product with the packed ``x x'``."""
        key = (self.n_updates, len(self._slots))
        cached: tuple[Any, ...] | None = getattr(self, "_serving", None)
        if cached is not None and cached[0] == key:
            return cached
        used = len(self._slots) + 1
        d = self.context_dims
        Ainv = self._Ainv[:used]
        theta = np.einsum("adk,ak->ad", Ainv, self._b[:used])
        iu, ju = np.triu_indices(d)
        weight = np.where(iu == ju, 1.0, 2.0)
        # float32: the variance only scales the exploration noise; half the memory traffic of the product
        packed = np.ascontiguousarray(Ainv[:, iu, ju] * weight, dtype=np.float32)
        self._serving = (key, theta, packed, iu * d + ju)
        return self._serving

    @property
    def n_actions(self) -> int:
        """Number of actions the policy has learned about."""
        return len(self._slots)

    def action_updates(self, action_id: str) -> int:
        """How many rewards this action has been trained on (0 if unseen)."""
        i = self._slots.get(action_id)
        return 0 if i is None else int(self._counts[i])

    # -- learning --------------------------------------------------------------------------------
    def learn_one(self, context: Features, candidate: Candidate, reward: float) -> None:
        x = self._x_hasher.vector(context)
        i = self._slot(candidate.action_id)
        Ainv, b = self._Ainv[i], self._b[i]  # views, updated in place
        r = float(reward)
        u = Ainv @ x
        s = 1.0 + x @ u
        if self._z_hasher is not None:
            # Li et al.'s hybrid update (A0 += B'A^-1 B before, A0 += zz' - B'A^-1 B after the per-action
            # update), expanded algebraically into rank-3 terms: O(d^2 + dk + k^2), no k x d x d products.
            z = self._z_hasher.cross_vector(context, candidate)
            B = self._B[i]
            v = B.T @ u  # B' A^-1 x
            t = u @ b  # x' A^-1 b
            M = np.stack((z, v, v + (s - 1.0) * z))
            # (2 - s) zz' - vz' - zv' + ww'/s with w = v + (s - 1) z, as one M' D M
            D = np.array([[2.0 - s, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0 / s]])
            self._A0 += M.T @ D @ M
            c = r - (t + r * (s - 1.0)) / s
            self._b0 += (r - t - c * (s - 1.0)) * z - c * v
            B += np.outer(x, z)
            self._shared_dirty = True
        Ainv -= np.outer(u, u) / s  # Sherman-Morrison: (A + x x')^-1
        b += r * x
        self._counts[i] += 1
        self.n_updates += 1

    # -- scoring ---------------------------------------------------------------------------------
    def _refresh_shared(self) -> None:
        if self._shared_dirty:
            self._A0inv = np.linalg.inv(self._A0)
            self._A0inv = (self._A0inv + self._A0inv.T) / 2.0
            self._beta = self._A0inv @ self._b0
            self._shared_dirty = False

    def posterior(self, context: Features, candidates: Sequence[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance (up to the noise scale) of each candidate's expected reward."""
        x = self._x_hasher.vector(context)
        slots = self._slots
        if self._z_hasher is None:  # disjoint: two products with precomputed per-model matrices
            _, theta, packed, tri = self._serving_state()
            at = [slots.get(c.action_id, 0) for c in candidates]
            mean_all = theta @ x
            var_all = packed @ np.multiply.outer(x, x).ravel()[tri].astype(np.float32)
            return mean_all[at], np.maximum(var_all[at], 0.0).astype(np.float64)
        idx = np.fromiter((slots.get(c.action_id, 0) for c in candidates), np.int64, len(candidates))
        used = len(slots) + 1
        if 2 * len(candidates) >= used:  # most actions: one product over the stored block, no copy
            Ax = (self._Ainv[:used] @ x)[idx]
        else:
            Ax = self._Ainv[idx] @ x  # (K, d)
        mean = np.einsum("kd,kd->k", Ax, self._b[idx])
        var = Ax @ x
        if self._z_hasher is not None:
            self._refresh_shared()
            Z = self._z_hasher.cross_matrix(context, candidates)
            U = np.matmul(Ax[:, None, :], self._B[idx])[:, 0, :]  # B_a^T A_a^-1 x
            mean += (Z - U) @ self._beta
            D = Z - U
            var += np.einsum("kj,kj->k", D @ self._A0inv, D)
        return mean, np.maximum(var, 0.0)

    @staticmethod
    def _answer(
        candidates: Sequence[Candidate], scores: np.ndarray, mean: np.ndarray, top: int, n: int, propensity: float
    ) -> Ranked:
        if n <= 1:
            order = [top][:n]
        else:  # top first, then the others by decreasing score (stable), as order_rest does
            rest = np.argsort(-scores, kind="stable").tolist()
            rest.remove(top)
            order = [top, *rest[: n - 1]]
        explored = bool(mean[top] < mean.max() - 1e-12)
        picked = scores[order].tolist()
        return Ranked([candidates[i].action_id for i in order], picked, propensity, explored)


class LinUCB(_LinearBandit):
    """Linear upper confidence bound: score = mean + ``alpha`` * std; deterministic (ties at random).

    ``alpha`` should match the reward scale (for click-through rates of a few percent, 0.05-0.3).
    The propensity of the top action is ``1 / (number of tied top scores)``; ``explored`` is true when
    the uncertainty bonus, not the mean, put the top action first.

    >>> import random
    >>> from engine.policies import Candidate
    >>> p = LinUCB(alpha=1.0)
    >>> p.learn_one({"x": 1.0}, Candidate("old"), 1.0)
    >>> r = p.rank({"x": 1.0}, [Candidate("old"), Candidate("new")], n=2, rng=random.Random(0))
    >>> r.action_ids, r.propensity, r.explored  # the unseen action is explored first
    (['new', 'old'], 1.0, True)
    """

    name = "linucb"

    def __init__(
        self, alpha: float = 0.3, context_dims: int = 64, shared_dims: int = 32, ridge: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(context_dims=context_dims, shared_dims=shared_dims, ridge=ridge, seed=seed)
        self.alpha = alpha

    _PARAMS = (*_LinearBandit._PARAMS, "alpha")

    @classmethod
    def _construct(cls, state: ModelState) -> Self:
        return cls(alpha=state.number("alpha"), context_dims=state.integer("context_dims", 2),
                   shared_dims=state.integer("shared_dims", 0), ridge=state.number("ridge"), seed=state.integer("seed"))

    def rank(self, context: Features, candidates: Sequence[Candidate], n: int, rng: random.Random) -> Ranked:
        if not candidates or n <= 0:
            return empty_ranked()
        mean, var = self.posterior(context, candidates)
        scores = mean + self.alpha * np.sqrt(var)
        top, n_tied = tie_break_top(scores.tolist(), rng)
        return self._answer(candidates, scores, mean, top, min(n, len(candidates)), 1.0 / n_tied)


class LinearThompson(_LinearBandit):
    """Linear Thompson sampling: each candidate's score is drawn from ``N(mean, v^2 * var)``.

    Draws are per candidate, from the marginal posterior of its score (exact for the disjoint model;
    with ``shared_dims`` the correlation through the shared weights is ignored when sampling). The
    propensity of the shown top action ``t`` is what a Monte-Carlo estimate with ``propensity_samples``
    extra draws, counting the draw actually used as one of them, reports on average:
    ``E[(1 + wins) / (1 + samples)] = (1 + samples * P(t)) / (1 + samples)`` (so it is never below
    ``1 / (1 + samples)``), with ``P(t)`` computed by quadrature (:mod:`engine.policies.propensity`) instead
    of drawn: the same expected value without the sampling noise, at about a third of the cost of the draws.

    >>> import random
    >>> from engine.policies import Candidate
    >>> p = LinearThompson(v=0.5)
    >>> r = p.rank({}, [Candidate("a"), Candidate("b")], n=2, rng=random.Random(3))
    >>> sorted(r.action_ids), 0.3 < r.propensity < 0.7
    (['a', 'b'], True)
    """

    name = "linear_thompson"

    def __init__(
        self,
        v: float = 0.3,
        context_dims: int = 64,
        shared_dims: int = 32,
        ridge: float = 1.0,
        propensity_samples: int = 100,
        seed: int = 0,
        epsilon: float = 0.0,
    ) -> None:
        super().__init__(context_dims=context_dims, shared_dims=shared_dims, ridge=ridge, seed=seed)
        if not 0.0 <= epsilon < 1.0:
            raise ValueError("epsilon must be in [0, 1)")
        self.v = v
        self.propensity_samples = propensity_samples
        # a uniform floor: every candidate keeps probability >= epsilon / K of being shown first, so
        # off-policy estimates from these logs stay sound even after the posterior has converged
        self.epsilon = epsilon
        self._gen: np.random.Generator | None = None

    _PARAMS = (*_LinearBandit._PARAMS, "v", "propensity_samples", "epsilon")

    @classmethod
    def _construct(cls, state: ModelState) -> Self:
        return cls(v=state.number("v"), context_dims=state.integer("context_dims", 2),
                   shared_dims=state.integer("shared_dims", 0), ridge=state.number("ridge"),
                   propensity_samples=state.integer("propensity_samples", 0), seed=state.integer("seed"),
                   epsilon=state.number("epsilon"))

    def rank(self, context: Features, candidates: Sequence[Candidate], n: int, rng: random.Random) -> Ranked:
        if not candidates or n <= 0:
            return empty_ranked()
        mean, var = self.posterior(context, candidates)
        sd = self.v * np.sqrt(var)
        gen = self._gen
        if gen is None:  # one generator per policy object, seeded from the caller's rng on first use
            gen = self._gen = np.random.default_rng(rng.getrandbits(64))
        K = len(candidates)
        # the decision's draws (the same numbers as the first row of the (1 + samples, K) block drawn before the
        # propensity became a quadrature: multiply, then add, so the scores are the same floats)
        scores = gen.standard_normal(K)
        scores *= sd
        scores += mean
        tied = np.flatnonzero(scores >= scores.max() - 1e-12)  # as tie_break_top, without a Python loop
        n_tied = len(tied)
        top = int(tied[0]) if n_tied == 1 else int(tied[rng.randrange(n_tied)])
        samples = self.propensity_samples
        eps = self.epsilon
        if eps > 0.0 and K > 1:
            if rng.random() < eps:
                top = rng.randrange(K)
            # the Monte-Carlo estimate counted the decision's own draw, whose first maximum may not be top
            own = 1.0 if int(scores.argmax()) == top else 0.0
            p_ts = (own + samples * self._win_probability(mean, sd, top, gen)) / (1 + samples)
            return self._answer(candidates, scores, mean, top, min(n, K), (1.0 - eps) * p_ts + eps / K)
        if n_tied > 1 or K == 1:  # degenerate (zero variance): deterministic with ties
            propensity = 1.0 / n_tied
        else:
            propensity = (1.0 + samples * self._win_probability(mean, sd, top, gen)) / (1 + samples)
        return self._answer(candidates, scores, mean, top, min(n, K), propensity)

    def _win_probability(self, mean: np.ndarray, sd: np.ndarray, top: int, gen: np.random.Generator) -> float:
        """P(a fresh set of draws puts ``top`` first)."""
        samples = self.propensity_samples
        if samples <= 0:
            return 0.0
        if sd.all():
            return win_probability(mean, sd, top)
        # a zero deviation (a candidate with no uncertainty left, or v = 0): ties between fixed scores go to the
        # first maximum, as argmax breaks them, which the quadrature does not model; sample as before
        draws = gen.standard_normal((samples, len(mean)))
        draws *= sd
        draws += mean
        return int(np.count_nonzero(draws.argmax(axis=1) == top)) / samples
