"""Behavioural clusters: an online k-means over profile feature vectors, learned in the learner.

The model is the sequential k-means of River's ``river.cluster.KMeans`` (each point moves its nearest centre
towards it by a step that shrinks with the centre's count, never below ``1 / halflife``), held in numpy
arrays so that it snapshots as data (``engine/snapshots.py``: signed, no pickle) and assigns a profile in
microseconds in serving. Two differences, both for repeatable runs: the first ``k`` points at least
``min_distance`` apart become the centres (River draws random centres), and no randomness afterwards.

A profile's vector (:func:`vector`): the shares of its strongest values of one affinity feature (``category``:
``category:shoes`` 0.6, ``category:books`` 0.4), its activity (page views, clicks, add-to-carts, purchases,
log-scaled), its monetary value (log-scaled) and its recency (1 just now, 1/e after a week). Per cluster the
model also keeps, for its description, a decayed size and monetary sum.

>>> from engine.features import Profile
>>> def p(cat, views, value):
...     return Profile("c", True, {"page_view": views}, 0.0, 100.0, {}, {"category": {cat: 5.0}}, {}, {}, value,
...                    {}, {})
>>> model = Clusters(k=2, min_distance=0.5)
>>> for _ in range(20):
...     _ = model.learn_one(vector(p("shoes", 3, 0.0), "category", 100.0), 0.0)
...     _ = model.learn_one(vector(p("books", 40, 300.0), "category", 100.0), 300.0)
>>> model.assign(vector(p("books", 30, 200.0), "category", 100.0)), model.assign(vector(p("shoes", 1, 0.0),
...                                                                                       "category", 100.0))
(1, 0)
>>> [(c["cluster"], c["top_values"][0][0], round(c["mean_value"])) for c in model.describe()]
[(0, 'shoes', 0), (1, 'books', 300)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.features import Profile
from engine.model_state import ModelState

#: The vector's fixed dimensions; one per affinity value follows (``<feature>:<value>``).
ACTIVITY = (("page_view", 100.0), ("click", 30.0), ("add_to_cart", 10.0), ("purchase", 5.0))
FIXED = (*(f"log_{e}" for e, _ in ACTIVITY), "log_value", "recency")
#: A purchase total of this much scores 1 on ``log_value``.
VALUE_SCALE = 1000.0
RECENCY_S = 7 * 86400.0
#: Affinity values per profile in its vector.
TOP_VALUES = 5
#: The model's name in Redis and in its snapshots, and its kind.
CLUSTERS_MODEL = "__clusters__/clusters"
CLUSTERS_KIND = "clusters"
#: The key of its messages on the learning topic: one learner owns the model.
CLUSTERS_KEY = CLUSTERS_MODEL.encode()


def vector(profile: Profile, feature: str, now: float) -> dict[str, float]:
    """A profile's point: its affinity shares of ``feature``, activity, value and recency, each about 0-1."""
    out: dict[str, float] = {}
    for event, scale in ACTIVITY:
        n = profile.counts.get(event, 0)
        if n:
            out[f"log_{event}"] = math.log1p(n) / math.log1p(scale)
    if profile.monetary > 0:
        out["log_value"] = math.log1p(profile.monetary) / math.log1p(VALUE_SCALE)
    if profile.last_seen is not None:
        out["recency"] = math.exp(-max(0.0, now - profile.last_seen) / RECENCY_S)
    scores = profile.affinities.get(feature) or {}
    top = sorted(scores.items(), key=lambda kv: -kv[1])[:TOP_VALUES]
    total = sum(s for _, s in top)
    for value, score in top:
        if total > 0 and score > 0:
            out[f"{feature}:{value}"] = score / total
    return out


class Clusters:
    """Online k-means (see the module); ``learn_one`` returns the cluster the point joined."""

    name = CLUSTERS_KIND

    def __init__(self, k: int = 8, halflife: float = 5000.0, min_distance: float = 0.3,
                 max_dims: int = 256) -> None:
        if k < 1 or halflife <= 0 or min_distance < 0 or max_dims < len(FIXED):
            raise ValueError(f"k >= 1, halflife > 0, min_distance >= 0 and max_dims >= {len(FIXED)} expected")
        self.k, self.halflife, self.min_distance, self.max_dims = k, float(halflife), float(min_distance), max_dims
        self.dims: list[str] = list(FIXED)
        self._index = {d: i for i, d in enumerate(self.dims)}
        self.centres = np.zeros((0, len(self.dims)))
        self.counts = np.zeros(0)  # points assigned, all time (the step size)
        self.sizes = np.zeros(0)  # decayed points assigned (the description's size)
        self.values = np.zeros(0)  # decayed monetary sums
        self.n_updates = 0
        self._decay = 0.5 ** (1.0 / self.halflife)

    def _point(self, x: Mapping[str, float], grow: bool) -> np.ndarray:
        if grow:
            for d in x:
                if d not in self._index and len(self.dims) < self.max_dims:
                    self._index[d] = len(self.dims)
                    self.dims.append(d)
            if self.centres.shape[1] < len(self.dims):
                self.centres = np.pad(self.centres, ((0, 0), (0, len(self.dims) - self.centres.shape[1])))
        point = np.zeros(len(self.dims))
        for d, v in x.items():
            i = self._index.get(d)
            if i is not None:
                point[i] = v
        return point

    def _nearest(self, point: np.ndarray) -> tuple[int, float]:
        distances = ((self.centres - point) ** 2).sum(axis=1)
        c = int(distances.argmin())
        return c, float(math.sqrt(distances[c]))

    def assign(self, x: Mapping[str, float]) -> int | None:
        """The nearest cluster; None before the first point was learned."""
        if not len(self.centres):
            return None
        return self._nearest(self._point(x, grow=False))[0]

    def learn_one(self, x: Mapping[str, float], value: float = 0.0) -> int:
        point = self._point(x, grow=True)
        self.n_updates += 1
        self.sizes *= self._decay
        self.values *= self._decay
        if len(self.centres) < self.k and (not len(self.centres) or self._nearest(point)[1] >= self.min_distance):
            self.centres = np.vstack([self.centres, point])
            self.counts, self.sizes = np.append(self.counts, 1.0), np.append(self.sizes, 1.0)
            self.values = np.append(self.values, value)
            return len(self.centres) - 1
        c, _ = self._nearest(point)
        self.counts[c] += 1.0
        self.sizes[c] += 1.0
        self.values[c] += value
        step = max(1.0 / self.counts[c], 1.0 / self.halflife)
        self.centres[c] += step * (point - self.centres[c])
        return c

    def describe(self, top: int = 5) -> list[dict[str, Any]]:
        """Per cluster: its size (decayed count of points, and share), mean monetary value, strongest affinity
        values (with their mean share) and its activity profile (the centre's fixed dimensions)."""
        total = float(self.sizes.sum()) or 1.0
        out = []
        for c in range(len(self.centres)):
            centre = self.centres[c]
            values = sorted(((d.split(":", 1)[1], float(centre[i])) for i, d in enumerate(self.dims)
                             if i >= len(FIXED) and centre[i] > 0.01), key=lambda kv: -kv[1])[:top]
            out.append({"cluster": c, "segment": f"cluster:{c}", "size": round(float(self.sizes[c]), 3),
                        "share": round(float(self.sizes[c]) / total, 4),
                        "mean_value": float(self.values[c] / self.sizes[c]) if self.sizes[c] else 0.0,
                        "top_values": [[v, round(s, 4)] for v, s in values],
                        "activity": {d: round(float(centre[i]), 4) for i, d in enumerate(FIXED)},
                        "points": int(self.counts[c])})
        return out

    def to_state(self) -> ModelState:
        return ModelState(
            {"k": self.k, "halflife": self.halflife, "min_distance": self.min_distance, "max_dims": self.max_dims,
             "dims": self.dims, "n_updates": self.n_updates},
            {"centres": self.centres.astype("<f8"), "counts": self.counts.astype("<f8"),
             "sizes": self.sizes.astype("<f8"), "values": self.values.astype("<f8")})

    @classmethod
    def from_state(cls, state: ModelState) -> Clusters:
        """
        >>> m = Clusters(k=2)
        >>> _ = m.learn_one({"log_click": 1.0, "category:a": 1.0}, 5.0)
        >>> back = Clusters.from_state(m.to_state())
        >>> back.dims[-1], back.assign({"category:a": 1.0}), back.describe()[0]["mean_value"]
        ('category:a', 0, 5.0)
        """
        model = cls(k=state.integer("k"), halflife=state.number("halflife"),
                    min_distance=state.number("min_distance"), max_dims=state.integer("max_dims"))
        model.dims = state.strings("dims")
        model._index = {d: i for i, d in enumerate(model.dims)}
        m = len(model.dims)
        model.centres = state.array("centres", "<f8", (None, m)).copy()  # learned on after a restore
        n = model.centres.shape[0]
        if n > model.k:
            raise ValueError(f"{n} centres, more than k = {model.k}")
        model.counts = state.array("counts", "<f8", (n,)).copy()
        model.sizes = state.array("sizes", "<f8", (n,)).copy()
        model.values = state.array("values", "<f8", (n,)).copy()
        model.n_updates = state.integer("n_updates")
        return model
