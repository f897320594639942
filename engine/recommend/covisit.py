"""Online item-to-item co-visitation ("people who engaged with X engage with Y"), learned in the stream.

State, all of it bounded:

* per item: its (decayed) popularity and at most ``top_k`` neighbours with their co-visitation
  weights (two fixed-size numpy rows). When a row is full, it is pruned to its ``prune_to`` fraction of
  heaviest entries, which frees slots for newcomers; pairs that keep co-occurring accumulate weight and
  survive prunings, one-off pairs do not. The rows live in the model snapshot (``model:{__covisit__/covisit}``,
  ``engine.layout.model_key``), never in Redis keys of their own.
* per visitor: the last ``history_size`` interactions, kept in an LRU of at most ``max_users``
  visitors. A profile's recent items (its ``r<f>:<i>`` fields, ``engine.layout``) can be passed in with
  :meth:`CoVisitation.learn_history` / :meth:`CoVisitation.score` instead, so the model then needs no
  per-visitor state at all; serving scores that way.

Learning an interaction of weight ``w`` with item ``j`` at time ``t`` adds ``w * w_h * g(t)`` to the
pair (``h``, ``j``) in both directions, for every item ``h`` in the visitor's recent history (weight
``w_h``); ``g`` is the forward-decay gain (``half_life=None``: no decay). Scoring a history
``h_1 .. h_m`` (oldest first) gives candidate ``c``::

    score(c) = sum_k recency ** (m - k) * w_k * C[h_k, c] / pop(h_k) ** alpha / pop(c) ** beta

i.e. co-visitation weights normalised like an asymmetric cosine (``alpha``/``beta`` damp popular
history items and popular candidates), more recent history items weighing more. A small popularity
``prior`` breaks ties and ranks items when the history has no known neighbours (cold start).

Why pruning and not a heavy-hitter sketch: with Space-Saving newcomers inherit the evicted count, and the
tail of co-visited items is long, so rows fill with noise; pruning to 75% came closest to keeping every
pair (the HR@10 of each on MovieLens-100K, ``bench/movielens.py``: ``docs/performance-history.md``).

Why one long module: it is one data structure whose learning, pruning and scoring share the same arrays
and derived caches; :meth:`CoVisitation.to_state` / :meth:`CoVisitation.from_state` turn it into plain data
(arrays, ids, numbers) for the snapshots the learner publishes and the API loads.
"""

from __future__ import annotations

import copy
import heapq
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Self, cast

import numpy as np

from engine.model_state import ModelState, StateError
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
        self._reset_cache()

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

    def forget(self, user_ids: Iterable[Hashable]) -> int:
        """Drop these visitors' histories (right to be forgotten); returns how many it held. What they
        taught the model stays: item-to-item weights and popularity hold no visitor ids.

        >>> model = CoVisitation(top_k=4)
        >>> model.learn_many([("ann", "a", 1.0, None), ("bob", "a", 1.0, None)])
        >>> model.forget(["ann", "nobody"]), model.history("ann"), model.history_items("bob")
        (1, [], ['a'])
        """
        users = self._users
        return sum(users.pop(u, None) is not None for u in user_ids)

    def without_histories(self) -> CoVisitation:
        """The model without its per-visitor histories, sharing its arrays: what serving needs, which scores
        the visitor's recent items read from the profile. The histories are most of a snapshot's size and
        nearly all of its loading time (Python objects per visitor), and loading holds the API's event loop.
        Snapshot the result before learning goes on: the arrays are shared.

        >>> model = CoVisitation(top_k=4)
        >>> model.learn_many([("ann", "a", 1.0, None), ("ann", "b", 1.0, None)])
        >>> lean = model.without_histories()
        >>> lean.history("ann"), model.history_items("ann")
        ([], ['a', 'b'])
        >>> lean.score(["a"], ["b"]) == model.score(["a"], ["b"])
        True
        """
        twin = copy.copy(self)  # through __getstate__/__setstate__: pending writes applied, caches rebuilt
        twin._users = OrderedDict()
        return twin

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
        self._learn_each(((user_id, item_id, weight, ts),))  # (learn_many's batch set-up costs more for one)

    def learn_many(self, interactions: Iterable[tuple[Hashable, Hashable, float, float | None]]) -> None:
        """Learn ``(user_id, item_id, weight, ts)`` interactions in order: the same model as
        :meth:`learn_one` on each in turn (same weights, bit for bit, same prunings), several times
        cheaper per interaction on a stream's batch.

        Pairs are looked up in per-row Python dicts (item row -> slot, built the first time a row is
        learned, not in a snapshot) and the weight updates of the whole batch are applied with one
        ``np.add.at`` in their original order (a row is brought up to date before it is pruned).

        >>> batched, one_by_one = CoVisitation(top_k=4), CoVisitation(top_k=4)
        >>> stream = [("ann", "a", 1.0, 1.0), ("ann", "b", 0.5, 2.0), ("bob", "a", 1.0, 3.0),
        ...           ("bob", "b", 2.0, 4.0), ("bob", "c", 1.0, 5.0)]
        >>> batched.learn_many(stream)
        >>> for user, item, weight, ts in stream:
        ...     one_by_one.learn_one(user, item, weight, ts)
        >>> batched.neighbours("b") == one_by_one.neighbours("b") == [("a", 2.5), ("c", 2.0)]
        True
        """
        if self.max_items is not None:  # an eviction can happen at any item: one interaction at a time
            self._learn_each(interactions)
            return
        decay, of = self._decay, self._index._of
        pop_at, pop_add = self._pending[4], self._pending[5]
        seg: tuple[list[int], list[float], list[int], list[tuple[Hashable, float]]] = ([], [], [], [])
        js, wgs, lens, flat = seg
        try:
            for user_id, item_id, weight, ts in interactions:
                if weight <= 0:
                    continue
                hist = self._history(user_id)
                weight = float(weight)
                gain = 1.0
                if decay.half_life is not None:
                    if decay.needs_rescale(ts):
                        seg, (js, wgs, lens, flat) = ([], [], [], []), seg
                        self._learn_pairs(js, wgs, lens, flat)
                        js, wgs, lens, flat = seg
                        self._flush()
                        factor = decay.move_landmark()
                        self._pop *= factor
                        self._w *= factor
                    gain = decay.gain(ts)
                j = of.get(item_id)
                if j is None:
                    j = self._add_item(item_id)
                wg = weight * gain
                pop_at.append(j)
                pop_add.append(wg)
                js.append(j)
                wgs.append(wg)
                lens.append(len(hist))
                flat.extend(hist)
                hist.append((item_id, weight))
        finally:
            seg, (js, wgs, lens, flat) = ([], [], [], []), seg
            self._learn_pairs(js, wgs, lens, flat)
            self._flush()

    def _history(self, user_id: Hashable) -> deque[tuple[Hashable, float]]:
        """The user's recent interactions, most recently active users last (the least recent is evicted)."""
        users = self._users
        hist = users.get(user_id)
        if hist is None:
            hist = users[user_id] = deque(maxlen=self.history_size)
            if self.max_users is not None and len(users) > self.max_users:
                users.popitem(last=False)
        else:
            users.move_to_end(user_id)
        return hist

    def _learn_each(self, interactions: Iterable[tuple[Hashable, Hashable, float, float | None]]) -> None:
        try:
            for user_id, item_id, weight, ts in interactions:
                if weight <= 0:
                    continue
                hist = self._history(user_id)
                weight = float(weight)
                self._learn(hist, item_id, weight, ts)
                hist.append((item_id, weight))
        finally:
            self._flush()

    def _learn_pairs(
        self, js: list[int], wgs: list[float], lens: list[int], flat: list[tuple[Hashable, float]]
    ) -> None:
        """The pair updates of a run of interactions (item rows ``js``, weights x gains ``wgs``), each
        with the ``lens[t]`` history entries that ``flat`` holds for it; no item is evicted meanwhile.

        The same updates as :meth:`_learn` one interaction at a time: per interaction its distinct
        history rows (in history order, or ascending if one repeats: as ``np.unique``) with summed
        additions, neighbour ``j`` added to each of their rows, then them to row ``j``. Grouping and
        summing are vectorised; pairs that exist are looked up in one pass, and only new pairs (slots,
        prunings) are handled one at a time, in order."""
        if not flat:
            return
        of = self._index._of
        rows = np.array([of.get(h, -1) for h, _ in flat], dtype=np.int64)  # -1: evicted
        ws = np.array([wh for _, wh in flat], dtype=np.float64)
        m = len(js)
        inter = np.repeat(np.arange(m), lens)
        ja = np.array(js, dtype=np.int64)
        valid = (rows >= 0) & (rows != ja[inter]) & (ws > 0)
        if not valid.all():
            rows, ws, inter = rows[valid], ws[valid], inter[valid]
            if not rows.size:
                return
        adds = ws * np.array(wgs, dtype=np.float64)[inter]
        size = self._index.size
        uniq, first, inv = np.unique(inter * size + rows, return_index=True, return_inverse=True)
        sums = np.bincount(inv.ravel(), weights=adds, minlength=uniq.size)
        g_inter, g_row = np.divmod(uniq, size)
        dup = np.bincount(inter, minlength=m) > np.bincount(g_inter, minlength=m)
        order = np.lexsort((np.where(dup[g_inter], g_row, first), g_inter))
        g_inter, g_row, sums = g_inter[order], g_row[order], sums[order]
        g_j = ja[g_inter]
        # cells in order: per interaction, j in each history row (A), then the history rows in row j (B)
        order = np.argsort(np.concatenate([2 * g_inter, 2 * g_inter + 1]), kind="stable")
        c_key = np.concatenate([2 * g_inter, 2 * g_inter + 1])[order]
        c_row = np.concatenate([g_row, g_j])[order]
        c_nbr = np.concatenate([g_j, g_row])[order]
        c_add = np.concatenate([sums, sums])[order]
        slot_of, k = self._slot_of, self.top_k
        for r in np.unique(c_row).tolist():
            if slot_of[r] is None:
                self._row(r)
        rl, nl = c_row.tolist(), c_nbr.tolist()
        S: list[int | None] = [slot_of[r].get(n) for r, n in zip(rl, nl, strict=True)]
        if None not in S:
            np.add.at(self._w.reshape(-1), c_row * k + np.array(S, dtype=np.int64), c_add)
            return
        keys = 2 * np.arange(m) + 1  # where each interaction's block of row-j cells starts and ends
        lo, hi = np.searchsorted(c_key, keys, side="left"), np.searchsorted(c_key, keys, side="right")
        self._new_pairs(S, rl, nl, c_row, c_key.tolist(), c_add, lo.tolist(), hi.tolist())

    def _new_pairs(
        self, S: list[int | None], rl: list[int], nl: list[int], c_row: np.ndarray, c_key: list[int],
        c_add: np.ndarray, block_lo: list[int], block_hi: list[int],
    ) -> None:
        """Finish :meth:`_learn_pairs` when some cells are new pairs: ``S[p]`` is cell ``p``'s slot
        (``None``: not in its row yet, ``-1``: nothing left to add). Weights are added in cell order, up
        to a cell whose row must be pruned first."""
        slot_of, k, w = self._slot_of, self.top_k, self._w.reshape(-1)
        nbr_at, nbr_val = self._pending[2], self._pending[3]
        heap = [p for p, s in enumerate(S) if s is None]
        applied = 0

        def apply_upto(end: int) -> None:
            nonlocal applied
            if end > applied:
                sl = np.array(S[applied:end], dtype=np.int64)
                use = sl >= 0
                np.add.at(w, (c_row[applied:end] * k + sl)[use], c_add[applied:end][use])
                applied = end

        def prune(r: int, after: int) -> None:
            self._prune(r)  # flushes the pending slot writes
            d = slot_of[r]
            for q in (np.flatnonzero(c_row[after:] == r) + after).tolist():
                # S[q] is checked just before; _prune() asserted that row r has its dict d
                if S[q] is not None and S[q] >= 0 and nl[q] not in d:  # type: ignore[operator]
                    S[q] = None
                    heapq.heappush(heap, q)

        while heap:
            p = heapq.heappop(heap)
            if S[p] is not None:
                continue
            r, key = rl[p], c_key[p]
            d = slot_of[r]
            assert d is not None
            if not key & 1:  # j into a history item's row
                s = d.get(nl[p])
                if s is None:
                    if self._fill[r] >= k and not self._holes[r]:
                        apply_upto(p)
                        prune(r, p + 1)
                    s = d[nl[p]] = self._take_slot(r)
                    nbr_at.append(r * k + s)
                    nbr_val.append(nl[p])
                S[p] = s
                continue
            # the history items of one interaction into row j, together (as _learn)
            lo, hi = block_lo[key >> 1], block_hi[key >> 1]
            new = []
            for q in range(lo, hi):
                if S[q] is None:
                    s = d.get(nl[q])
                    if s is None:
                        new.append(q)
                    else:
                        S[q] = s
            if self._free_slots(r) < len(new):
                apply_upto(lo)
                hits = [q for q in range(lo, hi) if S[q] is not None]
                if hits:
                    np.add.at(w, [r * k + S[q] for q in hits], c_add[hits])  # type: ignore[operator]  # no None in hits
                    for q in hits:
                        S[q] = -1
                prune(r, hi)
                free = self._free_slots(r)
                if free < len(new):  # more newcomers than a pruned row has room for: heaviest first
                    new = sorted(new, key=lambda q: -c_add[q])
                    for q in new[free:]:
                        S[q] = -1
                    new = new[:free]
            for q in new:
                s = d[nl[q]] = self._take_slot(r)
                nbr_at.append(r * k + s)
                nbr_val.append(nl[q])
                S[q] = s
        apply_upto(len(S))

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
        try:
            self._learn(pairs, item_id, float(weight), ts)
        finally:
            self._flush()

    # Learning state that is derived from the arrays (rebuilt after a restore or a copy, never in a snapshot):
    # _slot_of[r]: {neighbour row: slot} of row r (None until row r is first learned), with its free
    # slots: every slot >= _fill[r], and _holes[r] below it (descending, so pop() gives the lowest);
    # _pending: array writes not applied yet (flat indices into _w/_nbr, rows of _pop), in order.
    _CACHE = ("_slot_of", "_fill", "_holes", "_pending")

    def _reset_cache(self) -> None:
        self._slot_of: list[dict[int, int] | None] = [None] * self._index.size
        self._fill: list[int] = [0] * self._index.size
        self._holes: list[list[int]] = [[] for _ in range(self._index.size)]
        self._pending: tuple[list[int], list[float], list[int], list[int], list[int], list[float]] = (
            [], [], [], [], [], [])

    def __getstate__(self) -> dict[str, Any]:
        # what copy.copy takes (without_histories): pending writes applied, the derived caches left out
        self._flush()
        state = self.__dict__.copy()
        for name in self._CACHE:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_cache()

    #: Constructor parameters a state carries.
    _PARAMS = ("top_k", "prune_to", "history_size", "recency", "alpha", "beta", "half_life", "prior",
               "max_users", "max_items")

    def to_state(self) -> ModelState:
        """The model as plain data: parameters, item ids by row, the used rows of the arrays, the visitors'
        histories (ids as JSON, lengths and weights as arrays). Item and visitor ids must be strings or
        integers. The arrays are views of the model's: take the snapshot before learning goes on.

        >>> model = CoVisitation(top_k=4)
        >>> model.learn_many([("ann", "a", 1.0, None), ("ann", "b", 0.5, None), ("bob", "a", 1.0, None)])
        >>> clone = CoVisitation.from_state(model.to_state())
        >>> clone.neighbours("a"), clone.history("ann"), clone.score(["a"]) == model.score(["a"])
        ([('b', 0.5)], [('a', 1.0), ('b', 0.5)], True)
        """
        self._flush()
        size = self._index.size
        users = list(self._users)
        hists = list(self._users.values())
        params: dict[str, Any] = {k: getattr(self, k) for k in self._PARAMS}
        params.update(
            n_prunes=self.n_prunes, n_evicted_items=self.n_evicted_items,
            landmark=self._decay.landmark, last_ts=self._decay.last_ts,
            items=self._index._ids, free=self._index._free,
            users=users, history_items=[i for h in hists for i, _ in h],
        )
        arrays: dict[str, np.ndarray] = {
            "pop": self._pop[:size], "nbr": self._nbr[:size], "w": self._w[:size],
            "history_lengths": np.fromiter(map(len, hists), np.int32, len(hists)),
            "history_weights": np.fromiter((w for h in hists for _, w in h), np.float64),
        }
        return ModelState(params, arrays)

    @classmethod
    def from_state(cls, state: ModelState) -> Self:
        """The model :meth:`to_state` described (types, shapes and row references checked)."""
        model = cls(
            top_k=state.integer("top_k"), prune_to=state.number("prune_to"),
            history_size=state.integer("history_size"), recency=state.number("recency"),
            alpha=state.number("alpha"), beta=state.number("beta"), half_life=state.optional_number("half_life"),
            prior=state.number("prior"), max_users=state.optional_integer("max_users"),
            max_items=state.optional_integer("max_items"),
        )
        model.n_prunes = state.integer("n_prunes", 0)
        model.n_evicted_items = state.integer("n_evicted_items", 0)
        model._decay.landmark = state.optional_number("landmark")
        model._decay.last_ts = state.optional_number("last_ts")
        ids = state.ids("items", allow_none=True)
        size = len(ids)
        of = {item: r for r, item in enumerate(ids) if item is not None}
        free = state.ids("free")
        if len(of) + len(free) != size or any(type(r) is not int or not 0 <= r < size or ids[r] is not None
                                              for r in free):
            raise StateError("item rows and free rows do not match")
        model._index._ids, model._index._of, model._index._free = ids, of, free
        k = model.top_k
        model._pop = state.array("pop", "<f8", (size,))
        model._nbr = state.array("nbr", "<i4", (size, k))
        model._w = state.array("w", "<f8", (size, k))
        if size and not (-1 <= int(model._nbr.min()) and int(model._nbr.max()) < size):
            raise StateError("neighbour rows out of range")
        users = state.ids("users")
        lengths = state.array("history_lengths", "<i4", (len(users),)).tolist()
        items = state.ids("history_items")
        weights = state.array("history_weights", "<f8", (len(items),)).tolist()
        if sum(lengths) != len(items) or min(lengths, default=0) < 0 or len(set(users)) != len(users):
            raise StateError("visitor histories do not match their lengths")
        pairs = list(zip(items, weights, strict=True))
        hs, at = model.history_size, 0
        for user, n in zip(users, lengths, strict=True):
            model._users[user] = deque(pairs[at:at + n], maxlen=hs)
            at += n
        model._reset_cache()
        return model

    def _flush(self) -> None:
        """Apply the pending array writes, in the order they were made (``np.add.at`` is unbuffered, so
        a weight sums its additions exactly as ``+=`` one at a time would)."""
        w_at, w_add, nbr_at, nbr_val, pop_at, pop_add = self._pending
        if nbr_at:
            self._nbr.reshape(-1)[nbr_at] = nbr_val
            nbr_at.clear()
            nbr_val.clear()
        if w_at:
            np.add.at(self._w.reshape(-1), w_at, w_add)
            w_at.clear()
            w_add.clear()
        if pop_at:
            np.add.at(self._pop, pop_at, pop_add)
            pop_at.clear()
            pop_add.clear()

    def _row(self, r: int) -> dict[int, int]:
        """Row ``r``'s neighbour -> slot dict (built from the arrays the first time)."""
        d = self._slot_of[r]
        if d is None:
            nbr = self._nbr[r].tolist()
            d = self._slot_of[r] = {n: s for s, n in enumerate(nbr) if n >= 0}
            fill = max(d.values(), default=-1) + 1
            self._fill[r] = fill
            self._holes[r] = [s for s in range(fill - 1, -1, -1) if nbr[s] < 0]
        return d

    def _free_slots(self, r: int) -> int:
        return self.top_k - self._fill[r] + len(self._holes[r])

    def _take_slot(self, r: int) -> int:
        """The lowest free slot of row ``r`` (which must have one)."""
        holes = self._holes[r]
        if holes:
            return holes.pop()
        s = self._fill[r]
        self._fill[r] = s + 1
        return s

    def _learn(
        self,
        history: Sequence[tuple[Hashable, float]] | History,
        item_id: Hashable,
        weight: float,
        ts: float | None,
    ) -> None:
        decay = self._decay
        if decay.half_life is None:
            gain = 1.0
        else:
            if decay.needs_rescale(ts):
                self._flush()
                factor = decay.move_landmark()
                self._pop *= factor
                self._w *= factor
            gain = decay.gain(ts)
        j = self._add_item(item_id)
        wg = weight * gain
        w_at, w_add, nbr_at, nbr_val, pop_at, pop_add = self._pending
        pop_at.append(j)
        pop_add.append(wg)
        recent = list(history)[-self.history_size :] if len(history) > self.history_size else history
        of = self._index._of
        found = [of.get(h) for h, _ in recent]
        ws = [wh for _, wh in recent]
        if None in found or j in found or min(ws, default=1.0) <= 0:  # unknown (evicted) items, j itself
            keep = [(r, wh) for r, wh in zip(found, ws, strict=True) if r is not None and r != j and wh > 0]
            rows = [r for r, _ in keep]
            ws = [wh for _, wh in keep]
        else:
            rows = cast(list[int], found)  # no None in it (checked just above)
        if not rows:
            return
        adds = [wh * wg for wh in ws]
        if len(set(rows)) < len(rows):  # a repeated history item: its additions summed first, rows in order
            acc: dict[int, float] = {}
            for r, a in zip(rows, adds, strict=True):
                acc[r] = acc[r] + a if r in acc else a
            rows = sorted(acc)
            adds = [acc[r] for r in rows]
        k = self.top_k
        slot_of = self._slot_of
        # neighbour j in each history item's row (list comprehensions: most pairs exist already)
        dicts = [self._row(r) if (d := slot_of[r]) is None else d for r in rows]
        slots = [d.get(j) for d in dicts]
        if None in slots:
            for n, (r, d, s) in enumerate(zip(rows, dicts, slots, strict=True)):
                if s is None:
                    if self._fill[r] >= k and not self._holes[r]:
                        self._prune(r)
                    s = slots[n] = d[j] = self._take_slot(r)
                    nbr_at.append(r * k + s)
                    nbr_val.append(j)
        w_at.extend([r * k + s for r, s in zip(rows, cast(list[int], slots), strict=True)])  # all filled
        w_add.extend(adds)
        # the history items in row j: known ones first, then newcomers into the lowest free slots
        d = slot_of[j]
        if d is None:
            d = self._row(j)
        base = j * k
        slots = list(map(d.get, rows))
        if None not in slots:
            w_at.extend([base + s for s in cast(list[int], slots)])
            w_add.extend(adds)
            return
        new = []
        for r, a, s in zip(rows, adds, slots, strict=True):
            if s is None:
                new.append((r, a))
            else:
                w_at.append(base + s)
                w_add.append(a)
        if self._free_slots(j) < len(new):
            self._prune(j)
            free = self._free_slots(j)
            if free < len(new):  # more newcomers than a pruned row has room for: heaviest first
                new = sorted(new, key=lambda p: -p[1])[:free]
        for r, a in new:
            s = d[r] = self._take_slot(j)
            nbr_at.append(base + s)
            nbr_val.append(r)
            w_at.append(base + s)
            w_add.append(a)

    def _add_item(self, item_id: Hashable) -> int:
        r = self._index.get(item_id)
        if r is not None:
            return r
        if self.max_items is not None and len(self._index) >= self.max_items:
            self._flush()
            self._evict_least_popular()
        r = self._index.add(item_id)
        size = self._index.size
        if size > self._pop.shape[0]:
            self._pop = grow(self._pop, size)
            self._nbr = grow(self._nbr, size, fill=-1)
            self._w = grow(self._w, size)
        if size > len(self._slot_of):
            self._slot_of.append(None)
            self._fill.append(0)
            self._holes.append([])
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
        for row in (r, *np.flatnonzero(refs.any(axis=1)).tolist()):  # rebuilt from the arrays when next learned
            self._slot_of[row] = None
        self.n_evicted_items += 1

    def _prune(self, r: int) -> None:
        """Keep the ``prune_to`` fraction of the heaviest neighbours of row ``r``."""
        self._flush()
        drop = np.argpartition(-self._w[[r]], self._keep, axis=1)[0, self._keep :]
        d = self._slot_of[r]
        assert d is not None
        for n in self._nbr[r, drop].tolist():
            if n >= 0:
                del d[n]
        self._w[r, drop] = 0.0
        self._nbr[r, drop] = -1
        self._fill[r] = self.top_k
        self._holes[r] = np.flatnonzero(self._nbr[r] < 0)[::-1].tolist()
        self.n_prunes += 1

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
