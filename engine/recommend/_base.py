"""Shared plumbing of the online recommenders: an item vocabulary with growable numpy state and
forward time decay.

Forward decay (Cormode et al., 2009) keeps decayed sums without touching old entries: an event at time
``t`` adds ``w * 2 ** ((t - L) / half_life)`` where ``L`` is a landmark; the decayed value at any time is
the stored value times ``2 ** (-(now - L) / half_life)``, the same factor for every entry, so rankings
can use the stored values directly. When the exponent grows large the model moves its landmark and
rescales everything once (the same trick as the ``L:<feature>`` landmarks in :mod:`engine.layout`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

#: Rescale when the forward-decay gain reaches ``2 ** MAX_EXPONENT``; float64 keeps ~1e-16 relative
#: precision so entries many half-lives apart still add without loss of meaning.
MAX_EXPONENT = 40.0


class ForwardDecay:
    """Gain of an event at time ``ts`` relative to a moving landmark.

    >>> d = ForwardDecay(half_life=10.0)
    >>> d.gain(100.0), d.gain(110.0), d.gain(120.0)
    (1.0, 2.0, 4.0)
    >>> ForwardDecay(None).gain(1e9)
    1.0
    >>> d.gain(None)  # no clock given: the newest time seen so far
    4.0
    """

    __slots__ = ("half_life", "landmark", "last_ts")

    def __init__(self, half_life: float | None) -> None:
        if half_life is not None and not half_life > 0:
            raise ValueError(f"half_life must be > 0 or None, got {half_life!r}")
        self.half_life = half_life
        self.landmark: float | None = None
        self.last_ts: float | None = None

    def exponent(self, ts: float | None) -> float:
        if self.half_life is None:
            return 0.0
        if ts is None:
            ts = self.last_ts
            if ts is None:
                return 0.0
        ts = float(ts)
        if self.landmark is None:
            self.landmark = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
        return (ts - self.landmark) / self.half_life

    def gain(self, ts: float | None) -> float:
        return float(2.0 ** self.exponent(ts))

    def needs_rescale(self, ts: float | None) -> bool:
        return self.exponent(ts) > MAX_EXPONENT

    def move_landmark(self) -> float:
        """Move the landmark to the newest time seen; returns the factor every stored value must be
        multiplied by."""
        if self.half_life is None or self.landmark is None or self.last_ts is None:
            return 1.0
        factor = float(2.0 ** (-(self.last_ts - self.landmark) / self.half_life))
        self.landmark = self.last_ts
        return factor


class ItemIndex:
    """Item id <-> dense row index, with free-slot recycling so evicted items give their row back.

    >>> ix = ItemIndex()
    >>> ix.add("a"), ix.add("b"), ix.add("a")
    (0, 1, 0)
    >>> ix.get("b"), ix.get("zz"), len(ix)
    (1, None, 2)
    >>> _ = ix.remove("a"); ix.add("c"), ix.ids()
    (0, ['c', 'b'])
    """

    __slots__ = ("_of", "_ids", "_free")

    def __init__(self) -> None:
        self._of: dict[Hashable, int] = {}
        self._ids: list[Hashable | None] = []
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._of)

    def __contains__(self, item_id: Hashable) -> bool:
        return item_id in self._of

    @property
    def size(self) -> int:
        """Number of rows in use or free (the high-water mark): arrays must have at least this many."""
        return len(self._ids)

    def get(self, item_id: Hashable) -> int | None:
        return self._of.get(item_id)

    def add(self, item_id: Hashable) -> int:
        ix = self._of.get(item_id)
        if ix is not None:
            return ix
        if self._free:
            ix = self._free.pop()
            self._ids[ix] = item_id
        else:
            ix = len(self._ids)
            self._ids.append(item_id)
        self._of[item_id] = ix
        return ix

    def remove(self, item_id: Hashable) -> int:
        ix = self._of.pop(item_id)
        self._ids[ix] = None
        self._free.append(ix)
        return ix

    def id_at(self, ix: int) -> Hashable | None:
        return self._ids[ix]

    def ids(self) -> list[Hashable]:
        """Item ids in row order (free rows skipped)."""
        return [i for i in self._ids if i is not None]

    def live_mask(self) -> np.ndarray:
        """Boolean array over rows: True where the row holds an item."""
        return np.fromiter((i is not None for i in self._ids), dtype=bool, count=len(self._ids))

    def rows(self, item_ids: Iterable[Hashable]) -> list[int | None]:
        of = self._of
        return [of.get(i) for i in item_ids]


def grow(array: np.ndarray, rows: int, fill: float | int = 0) -> np.ndarray:
    """Return ``array`` with at least ``rows`` rows (capacity doubles), new rows set to ``fill``."""
    if rows <= array.shape[0]:
        return array
    cap = max(rows, 2 * array.shape[0], 16)
    out = np.full((cap, *array.shape[1:]), fill, dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


def top_k_items(index: ItemIndex, scores: np.ndarray, k: int) -> list[tuple[Hashable, float]]:
    """Best ``k`` finite scores of live rows, ties broken by row order (deterministic)."""
    scores = np.where(index.live_mask() & np.isfinite(scores), scores, -np.inf)
    n = int(np.isfinite(scores).sum())
    k = min(k, n)
    if k <= 0:
        return []
    order = np.lexsort((np.arange(scores.size), -scores))[:k]
    return [(index.id_at(int(r)), float(scores[r])) for r in order]
