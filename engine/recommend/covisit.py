"""Online item-to-item co-visitation ("people who engaged with X engage with Y"), learned in the stream.

State, all of it bounded:

* per item: its (decayed) popularity and at most ``top_k`` neighbours with their co-visitation
  weights (two fixed-size numpy rows). When a row is full, it is pruned to its ``prune_to`` fraction of
  heaviest entries, which frees slots for newcomers; pairs that keep co-occurring accumulate weight and
  survive prunings, one-off pairs do not. In Redis this is a sorted set per item trimmed with
  ``ZREMRANGEBYRANK`` when its ``ZCARD`` exceeds ``top_k``; here it is part of the model snapshot.
* per visitor: the last ``history_size`` interactions, kept in an LRU of at most ``max_users``
  visitors. In the stream the same list lives in Redis (``p:{cid}:recent:<feature>``) and can be passed
  in with :meth:`CoVisitation.learn_history` / :meth:`CoVisitation.score` instead, so the model then
  needs no per-visitor state at all.

Learning an interaction of weight ``w`` with item ``j`` at time ``t`` adds ``w * w_h * g(t)`` to the
pair (``h``, ``j``) in both directions, for every item ``h`` in the visitor's recent history (weight
``w_h``); ``g`` is the forward-decay gain (``half_life=None``: no decay). Scoring a history
``h_1 .. h_m`` (oldest first) gives candidate ``c``::

    score(c) = sum_k recency ** (m - k) * w_k * C[h_k, c] / pop(h_k) ** alpha / pop(c) ** beta

i.e. co-visitation weights normalised like an asymmetric cosine (``alpha``/``beta`` damp popular
history items and popular candidates), more recent history items weighing more. A small popularity
``prior`` breaks ties and ranks items when the history has no known neighbours (cold start).

Why pruning and not a heavy-hitter sketch: on the first 50,000 MovieLens-100K ratings (see
``bench/movielens.py``) rows of 100 slots reached HR@10 0.087 with Space-Saving (newcomers inherit the
evicted count, and the tail of co-visited items is long, so rows fill with noise), 0.186 scoring the
Space-Saving lower bounds, 0.117 with Unbiased Space-Saving, 0.195 with prune-to-75%; keeping every
pair reached 0.207.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence

import numpy as np

from engine.recommend._base import ForwardDecay, ItemIndex, grow, top_k_items

History = deque[tuple[Hashable, float]]


class CoVisitation:
    """Item-to-item co-visitation recommender with bounded, stream-friendly state.

    Parameters
    ----------
    top_k
        Neighbour slots per item (the bound of the per-item state).
    prune_to
        Fraction of the heaviest neighbours a full row keeps when it is pruned.
    history_size
        Recent interactions per visitor that pair with a new one, and that are used for scoring.
    recency
        Scoring weight ratio between consecutive history items (1.0: all equal).
    alpha, beta
        Popularity normalisation exponents of the history item and of the candidate
        (0.5/0.5 is cosine, 0/0 raw counts).
    half_life
        Forward-decay half-life in the unit of ``ts`` (seconds for Unix times); ``None``: no decay.
    prior
        Weight of the popularity tie-breaker, relative to the best co-visitation score.
    max_users
        Visitor histories kept by :meth:`learn_one` (least recently seen evicted); ``None``: no limit.
    max_items
        Items kept; a new item beyond it evicts the least popular one with its neighbour row and
        every reference to it; ``None``: no limit.

    Examples
    --------
    >>> model = CoVisitation(top_k=10)
    >>> for user, items in {"ann": "abc", "bob": "abd", "cid": "ab", "dan": "ce"}.items():
    ...     for item in items:
    ...         model.learn_one(user, item)
    >>> model.neighbours("a", k=2)
    [('b', 3.0), ('c', 1.0)]

    A visitor who has only seen ``a`` gets ``b`` first ("people who engaged with a engage with b");
    ``c`` and ``d`` were each seen once with ``a``, but ``c`` is more popular overall, so it says less
    about ``a`` (``beta``):

    >>> [item for item, _ in model.recommend(["a"], k=3)]
    ['b', 'd', 'c']
    >>> scores = model.score(["a"], candidates=["b", "e", "unknown"])
    >>> scores["b"] > scores["e"] > 0.0 == scores["unknown"]
    True

    The model keeps ``ann``'s recent history (or pass a history kept elsewhere, e.g. in Redis):

    >>> model.history("ann")
    [('a', 1.0), ('b', 1.0), ('c', 1.0)]
    >>> [item for item, _ in model.recommend(model.history_items("ann"), k=1)]
    ['d']

    An empty history falls back to popularity:

    >>> model.recommend([], k=2)
    [('a', 1.0), ('b', 1.0)]
    """

    def __init__(
        self,
        *,
        top_k: int = 200,
        prune_to: float = 0.75,
        history_size: int = 20,
        recency: float = 0.85,
        alpha: float = 0.3,
        beta: float = 0.4,
        half_life: float | None = None,
        prior: float = 1e-3,
        max_users: int | None = 100_000,
        max_items: int | None = None,
    ) -> None:
        if top_k < 2 or history_size < 1:
            raise ValueError("top_k must be >= 2 and history_size >= 1")
        if not 0.0 < prune_to < 1.0:
            raise ValueError(f"prune_to must be in (0, 1), got {prune_to!r}")
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {recency!r}")
        if max_users is not None and max_users < 1:
            raise ValueError("max_users must be >= 1 or None")
        if max_items is not None and max_items < 2:
            raise ValueError("max_items must be >= 2 or None")
        self.top_k = top_k
        self.prune_to = prune_to
        self.history_size = history_size
        self.recency = recency
        self.alpha = alpha
        self.beta = beta
        self.half_life = half_life
        self.prior = prior
        self.max_users = max_users
        self.max_items = max_items
        self._keep = max(1, min(top_k - 1, int(top_k * prune_to)))
        self._decay = ForwardDecay(half_life)
        self._index = ItemIndex()
        self._pop = np.zeros(0, dtype=np.float64)
        self._nbr = np.full((0, top_k), -1, dtype=np.int32)  # neighbour rows, -1 = empty slot
        self._w = np.zeros((0, top_k), dtype=np.float64)  # their weights (0 for empty slots)
        self._users: OrderedDict[Hashable, History] = OrderedDict()
        self.n_prunes = 0
        self.n_evicted_items = 0

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return len(self._index)

    @property
    def items(self) -> list[Hashable]:
        """Known item ids (in row order, free rows skipped)."""
        return self._index.ids()

    @property
    def row_items(self) -> list[Hashable | None]:
        """Item id of every entry of :meth:`score_array` (``None`` for a free row)."""
        return [self._index.id_at(r) for r in range(self._index.size)]

    def row_of(self, item_id: Hashable) -> int | None:
        """Index of ``item_id`` in :meth:`score_array` (``None`` if unknown)."""
        return self._index.get(item_id)

    def history(self, user_id: Hashable) -> list[tuple[Hashable, float]]:
        """The visitor's kept ``(item, weight)`` history, oldest first (empty if unknown)."""
        return list(self._users.get(user_id, ()))

    def history_items(self, user_id: Hashable) -> list[Hashable]:
        return [i for i, _ in self._users.get(user_id, ())]

    def neighbours(self, item_id: Hashable, k: int | None = None) -> list[tuple[Hashable, float]]:
        """The item's strongest co-visited items with their (decayed, unnormalised) weights."""
        r = self._index.get(item_id)
        if r is None:
            return []
        nbr, w = self._nbr[r], self._w[r]
        used = np.flatnonzero(nbr >= 0)
        used = used[np.lexsort((nbr[used], -w[used]))][:k]
        return [(self._index.id_at(int(nbr[s])), float(w[s])) for s in used]

    def state_size(self) -> dict[str, int]:
        """Sizes that must stay bounded: items, rows, visitors, longest history, fullest neighbour row."""
        size = self._index.size
        return {
            "items": len(self._index),
            "rows": size,
            "users": len(self._users),
            "max_history": max((len(h) for h in self._users.values()), default=0),
            "max_neighbours": int((self._nbr[:size] >= 0).sum(axis=1).max(initial=0)),
        }

    # ------------------------------------------------------------------ learning

    def learn_one(self, user_id: Hashable, item_id: Hashable, weight: float = 1.0, ts: float | None = None) -> None:
        """Learn that ``user_id`` interacted with ``item_id`` at time ``ts``; ``weight`` is the
        interaction's strength (e.g. 1 for a purchase, 0.5 for a view); ``weight <= 0`` is ignored."""
        if weight <= 0:
            return
        hist = self._users.get(user_id)
        if hist is None:
            hist = self._users[user_id] = deque(maxlen=self.history_size)
            if self.max_users is not None and len(self._users) > self.max_users:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(user_id)
        self._learn(hist, item_id, weight, ts)
        hist.append((item_id, float(weight)))

    def learn_history(
        self,
        history: Sequence[Hashable],
        item_id: Hashable,
        weight: float = 1.0,
        ts: float | None = None,
        history_weights: Sequence[float] | None = None,
    ) -> None:
        """Like :meth:`learn_one`, with the visitor's recent items (oldest first) given by the caller
        instead of kept by the model; nothing per visitor is stored.

        >>> model = CoVisitation()
        >>> model.learn_history([], "a")
        >>> model.learn_history(["a"], "b", history_weights=[0.5])
        >>> model.neighbours("b"), model.state_size()["users"]
        ([('a', 0.5)], 0)
        """
        if weight <= 0:
            return
        if history_weights is None:
            pairs: Sequence[tuple[Hashable, float]] = [(h, 1.0) for h in history]
        else:
            pairs = list(zip(history, history_weights, strict=True))
        self._learn(pairs, item_id, weight, ts)

    def _learn(
        self,
        history: Sequence[tuple[Hashable, float]] | History,
        item_id: Hashable,
        weight: float,
        ts: float | None,
    ) -> None:
        if self._decay.needs_rescale(ts):
            factor = self._decay.move_landmark()
            self._pop *= factor
            self._w *= factor
        gain = self._decay.gain(ts)
        j = self._add_item(item_id)
        self._pop[j] += weight * gain
        recent = list(history)[-self.history_size :]
        rows, ws = [], []
        for (_, wh), r in zip(recent, self._index.rows(h for h, _ in recent), strict=True):
            if r is not None and r != j and wh > 0:
                rows.append(r)
                ws.append(wh)
        if not rows:
            return
        hs = np.asarray(rows, dtype=np.int64)
        add = np.asarray(ws, dtype=np.float64) * (weight * gain)
        if len(set(rows)) < len(rows):
            hs, inv = np.unique(hs, return_inverse=True)
            add = np.bincount(inv, weights=add)
        self._add_to_rows(hs, j, add)
        self._add_to_row(j, hs, add)

    def _add_item(self, item_id: Hashable) -> int:
        r = self._index.get(item_id)
        if r is not None:
            return r
        if self.max_items is not None and len(self._index) >= self.max_items:
            self._evict_least_popular()
        r = self._index.add(item_id)
        size = self._index.size
        self._pop = grow(self._pop, size)
        self._nbr = grow(self._nbr, size, fill=-1)
        self._w = grow(self._w, size)
        return r

    def _evict_least_popular(self) -> None:
        size = self._index.size
        r = int(np.argmin(np.where(self._index.live_mask(), self._pop[:size], np.inf)))
        self._index.remove(self._index.id_at(r))
        self._pop[r] = 0.0
        self._nbr[r] = -1
        self._w[r] = 0.0
        refs = self._nbr[:size] == r
        self._nbr[:size][refs] = -1
        self._w[:size][refs] = 0.0
        self.n_evicted_items += 1

    def _prune(self, rows: np.ndarray) -> None:
        """Keep the ``prune_to`` fraction of heaviest neighbours of each of ``rows`` (distinct)."""
        drop = np.argpartition(-self._w[rows], self._keep, axis=1)[:, self._keep :]
        r = np.repeat(rows, drop.shape[1])
        self._w[r, drop.ravel()] = 0.0
        self._nbr[r, drop.ravel()] = -1
        self.n_prunes += rows.size

    def _add_to_rows(self, hs: np.ndarray, j: int, add: np.ndarray) -> None:
        """Add neighbour ``j`` with weight ``add[k]`` to each row ``hs[k]`` (rows are distinct)."""
        match = self._nbr[hs] == j
        found = match.any(axis=1)
        f = np.flatnonzero(found)
        if f.size:
            self._w[hs[f], match[f].argmax(axis=1)] += add[f]
        n = np.flatnonzero(~found)
        if n.size:
            rows = hs[n]
            free = self._nbr[rows] < 0
            full = ~free.any(axis=1)
            if full.any():
                self._prune(rows[full])
                free = self._nbr[rows] < 0
            slots = free.argmax(axis=1)
            self._w[rows, slots] = add[n]
            self._nbr[rows, slots] = j

    def _add_to_row(self, j: int, hs: np.ndarray, add: np.ndarray) -> None:
        """Add neighbours ``hs`` (distinct) with weights ``add`` to row ``j``."""
        nbr, w = self._nbr[j], self._w[j]  # views
        match = hs[:, None] == nbr[None, :]
        found = match.any(axis=1)
        f = np.flatnonzero(found)
        if f.size:
            w[match[f].argmax(axis=1)] += add[f]
        n = np.flatnonzero(~found)
        if not n.size:
            return
        free = np.flatnonzero(nbr < 0)
        if free.size < n.size:
            self._prune(np.array([j]))
            free = np.flatnonzero(nbr < 0)
            if free.size < n.size:  # more newcomers than a pruned row has room for: heaviest first
                n = n[np.argsort(-add[n], kind="stable")][: free.size]
        slots = free[: n.size]
        w[slots] = add[n]
        nbr[slots] = hs[n]

    # ------------------------------------------------------------------ scoring

    def score_array(self, history: Sequence[Hashable], weights: Sequence[float] | None = None) -> np.ndarray:
        """Scores of every row (item ids in :attr:`row_items`; free rows get ``-inf``) for a visitor
        whose recent items are ``history`` (oldest first), optionally with their interaction
        ``weights``. Unknown history items are ignored.

        >>> model = CoVisitation()
        >>> model.learn_history([], "x"); model.learn_history(["x"], "y")
        >>> scores = model.score_array(["x"])
        >>> dict(zip(model.row_items, scores.round(3).tolist()))
        {'x': 0.001, 'y': 1.001}
        """
        size = self._index.size
        pop = self._pop[:size]
        recent = list(history)[-self.history_size :]
        wts = [1.0] * len(recent) if weights is None else list(weights)[-self.history_size :]
        if len(wts) != len(recent):
            raise ValueError("history and weights differ in length")
        rows, coef = [], []
        m = len(recent)
        for k, (r, wk) in enumerate(zip(self._index.rows(recent), wts, strict=True)):
            if r is not None and wk > 0 and pop[r] > 0:
                rows.append(r)
                coef.append(wk * self.recency ** (m - 1 - k) / pop[r] ** self.alpha)
        top = float(pop.max(initial=0.0))
        best = 0.0
        if rows:
            hs = np.asarray(rows)
            nbr = self._nbr[hs]
            used = nbr >= 0
            vals = self._w[hs] * np.asarray(coef)[:, None]
            scores = np.bincount(nbr[used], weights=vals[used], minlength=size)[:size].astype(np.float64)
            scores /= np.maximum(pop, 1e-300) ** self.beta
            best = float(scores.max(initial=0.0))
        else:
            scores = np.zeros(size)
        if top > 0:
            scores += (self.prior * best if best > 0 else 1.0) * pop / top
        if len(self._index) < size:
            scores[~self._index.live_mask()] = -np.inf
        return scores

    def score(
        self,
        history: Sequence[Hashable],
        candidates: Sequence[Hashable] | None = None,
        weights: Sequence[float] | None = None,
    ) -> dict[Hashable, float]:
        """Score ``candidates`` (default: every known item) for a visitor with recent ``history``
        (oldest first); unknown candidates score 0."""
        scores = self.score_array(history, weights)
        if candidates is None:
            return {self._index.id_at(r): float(s) for r, s in enumerate(scores) if np.isfinite(s)}
        rows = self._index.rows(candidates)
        return {c: (0.0 if r is None else float(scores[r])) for c, r in zip(candidates, rows, strict=True)}

    def recommend(
        self,
        history: Sequence[Hashable],
        k: int = 10,
        exclude: Sequence[Hashable] | None = None,
        weights: Sequence[float] | None = None,
    ) -> list[tuple[Hashable, float]]:
        """The ``k`` best items, best first; ``exclude`` defaults to the history itself."""
        scores = self.score_array(history, weights)
        for r in self._index.rows(history if exclude is None else exclude):
            if r is not None:
                scores[r] = -np.inf
        return top_k_items(self._index, scores, k)
