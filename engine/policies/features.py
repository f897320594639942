"""Turning open-ended feature dicts into fixed-size numeric vectors, identically in every process.

Context and action features are free-form dicts whose keys are not known in advance (new categories,
new tags, new actions appear all the time). The linear policies therefore *hash* feature names into a
fixed number of dimensions (signed hashing: a second hash bit picks +1/-1 so collisions cancel on
average instead of piling up). The hash is BLAKE2b, not Python's ``hash()``, so a model learned by a
stream worker scores identically in a serving process with a different ``PYTHONHASHSEED``.

Three kinds of features are produced for a (context, candidate) pair:

* **context** features, as given (``aff_cat:shoes``, ``recency_h`` ...);
* **action** features, as given (``cat:shoes``, ``tag:sale``), optionally plus the action id;
* **crosses** ``context x action`` (``aff_cat:shoes`` x ``cat:shoes``), which let one shared model
  learn "visitors who like shoes click shoe offers" and so score a brand-new shoe offer sensibly;
* **match** features: a context key ``aff_<field>:<value>`` and an action key ``<field>:<value>``
  yield ``match:<field>`` = their product, i.e. "this visitor's affinity to *this* action's
  category", one weight shared by every category.

Values are squashed so counts do not dominate: ``v`` if ``|v| <= 1`` else ``sign(v) * (1 + ln|v|)``.

>>> h = FeatureHasher(dims=16)
>>> x = h.vector({"aff_cat:shoes": 0.7, "cnt:page_view": 12})
>>> x.shape, float(x[0])  # slot 0 is the bias
((16,), 1.0)
>>> from engine.policies.base import Candidate
>>> Z = h.cross_matrix({"aff_cat:shoes": 0.7}, [Candidate("a", {"cat:shoes": 1}), Candidate("b", {"cat:books": 1})])
>>> Z.shape
(2, 16)
>>> match_features({"aff_cat:shoes": 0.7}, {"cat:shoes": 1.0})
{'match:cat': 0.7}
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.policies.base import Candidate

__all__ = ["FeatureHasher", "squash", "match_features", "stable_hash"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ID_PREFIX = "__id__:"


def stable_hash(name: str, seed: int = 0) -> int:
    """A 64-bit hash of ``name`` that is the same in every process and Python version.

    >>> stable_hash("cat:shoes") == stable_hash("cat:shoes")
    True
    """
    digest = hashlib.blake2b(name.encode(), digest_size=8, salt=seed.to_bytes(16, "little")).digest()
    return int.from_bytes(digest, "little")


def squash(v: float) -> float:
    """Compress large magnitudes logarithmically, keep ``[-1, 1]`` as is (continuous, monotone).

    >>> squash(0.5), squash(1.0), round(squash(12.0), 3), round(squash(-12.0), 3)
    (0.5, 1.0, 3.485, -3.485)
    """
    if -1.0 <= v <= 1.0:
        return float(v)
    return math.copysign(1.0 + math.log(abs(v)), v)


def match_features(context: Mapping[str, float], action: Mapping[str, float]) -> dict[str, float]:
    """``match:<field>`` for every action key ``<field>:<value>`` whose ``aff_<field>:<value>`` is in
    the context (the visitor's affinity to this action's value of that field).

    >>> match_features({"aff_tag:sale": 0.5, "aff_cat:toys": 1.0}, {"tag:sale": 1.0, "cat:shoes": 1.0})
    {'match:tag': 0.5}
    """
    out: dict[str, float] = {}
    for key, av in action.items():
        cv = context.get("aff_" + key)
        if cv:
            fld = key.partition(":")[0]
            out["match:" + fld] = out.get("match:" + fld, 0.0) + float(cv) * float(av)
    return out


def _squash_array(v: np.ndarray) -> np.ndarray:
    a = np.abs(v)
    return np.where(a <= 1.0, v, np.copysign(1.0 + np.log(np.maximum(a, 1.0)), v))


_MASK64 = (1 << 64) - 1
_GOLDEN_INT = 0x9E3779B97F4A7C15


def _mix_int(h: int) -> int:
    """:func:`_mix` for one Python int (same result as the vectorised version)."""
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised (uint64 arithmetic wraps around on purpose)."""
    h = (h ^ (h >> np.uint64(30))) * _M1
    h = (h ^ (h >> np.uint64(27))) * _M2
    out: np.ndarray = h ^ (h >> np.uint64(31))
    return out


class FeatureHasher:
    """Signed feature hashing into ``dims`` slots; slot 0 is reserved for a constant bias of 1.

    Hashes of names, and the encoded features of each action (keyed by action id, checked by
    equality so a changed action is re-encoded), are cached; both caches are bounded (cleared when
    they exceed ``max_cache``) and are not part of the pickled state.

    >>> h = FeatureHasher(dims=64, seed=1)
    >>> np.allclose(h.vector({"a": 1.0}), FeatureHasher(dims=64, seed=1).vector({"a": 1.0}))
    True
    >>> sx = h.sparse({"a": 2.0})  # bias + one signed, squashed value
    >>> sx[0], sorted(round(abs(v), 3) for v in sx.values())
    (1.0, [1.0, 1.693])
    """

    __slots__ = ("dims", "seed", "max_cache", "_cache", "_slot_cache", "_actions")

    def __init__(self, dims: int, seed: int = 0, max_cache: int = 1 << 17) -> None:
        if dims < 2:
            raise ValueError("dims must be >= 2 (slot 0 is the bias)")
        self.dims = dims
        self.seed = seed
        self.max_cache = max_cache
        self._cache: dict[str, int] = {}
        self._slot_cache: dict[str | tuple[str, str], tuple[int, float]] = {}
        self._actions: dict[str, tuple[Any, ...]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # caches are derived data: don't ship them in snapshots
        return {"dims": self.dims, "seed": self.seed, "max_cache": self.max_cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dims, self.seed, self.max_cache = state["dims"], state["seed"], state["max_cache"]
        self._cache = {}
        self._slot_cache = {}
        self._actions = {}

    def raw(self, name: str) -> int:
        """The cached 64-bit hash of a feature name."""
        h = self._cache.get(name)
        if h is None:
            if len(self._cache) >= self.max_cache:
                self._cache.clear()
            h = self._cache[name] = stable_hash(name, self.seed)
        return h

    def _slots(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = (hashes % np.uint64(self.dims - 1)).astype(np.int64) + 1
        sign = np.where((hashes >> np.uint64(63)) == 1, -1.0, 1.0)
        return idx, sign

    def _encode(self, features: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        raw = self.raw
        names = [k for k, v in features.items() if v]
        hashes = np.array([raw(k) for k in names], dtype=np.uint64)
        values = _squash_array(np.array([features[k] for k in names], dtype=np.float64))
        return hashes, values

    def _action(self, cand: Candidate) -> tuple[Any, ...]:
        """(features copy, hashes, squashed values, names, id hash) of an action, cached by id."""
        hit = self._actions.get(cand.action_id)
        if hit is not None and hit[0] == cand.features:
            return hit
        hashes, values = self._encode(cand.features)
        names = tuple(k for k, v in cand.features.items() if v)
        entry = (dict(cand.features), hashes, values, names, self.raw(_ID_PREFIX + cand.action_id))
        if len(self._actions) >= self.max_cache:
            self._actions.clear()
        self._actions[cand.action_id] = entry
        return entry

    def slot(self, name: str) -> tuple[int, float]:
        """(slot, sign) of a feature name, cached (slot 0, the bias, is never returned)."""
        hit = self._slot_cache.get(name)
        if hit is None:
            h = _mix_int(self.raw(name))
            hit = (h % (self.dims - 1) + 1, -1.0 if h >> 63 else 1.0)
            if len(self._slot_cache) >= self.max_cache:
                self._slot_cache.clear()
            self._slot_cache[name] = hit
        return hit

    def vector(self, features: Mapping[str, float]) -> np.ndarray:
        """Dense ``(dims,)`` vector: bias + hashed features."""
        out = [0.0] * self.dims
        out[0] = 1.0
        cached = self._slot_cache.get
        for k, v in features.items():
            if v:
                hit = cached(k)
                i, sign = hit if hit is not None else self.slot(k)
                out[i] += sign * (v if -1.0 <= v <= 1.0 else squash(v))
        return np.array(out)

    def sparse(self, features: Mapping[str, float]) -> dict[int, float]:
        """Sparse ``{slot: value}`` version of :meth:`vector`."""
        out = {0: 1.0}
        slot = self.slot
        for k, v in features.items():
            if v:
                i, sign = slot(k)
                out[i] = out.get(i, 0.0) + sign * squash(v)
        return out

    def _pair_arrays(
        self, context: Mapping[str, float], candidates: Sequence[Candidate], with_ids: bool, with_context: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, 64-bit hash, value) triples for all features of all (context, candidate) pairs."""
        ch, cv = self._encode(context)
        aff = {k[4:]: float(v) for k, v in context.items() if v and k.startswith("aff_")}
        k = len(candidates)
        entries = [self._action(c) for c in candidates]
        counts = np.array([e[1].shape[0] for e in entries], dtype=np.int64)
        ah_parts = [e[1] for e in entries]
        av_parts = [e[2] for e in entries]
        rows_parts = [np.repeat(np.arange(k, dtype=np.int64), counts)]
        if with_ids:
            ah_parts.append(np.array([e[4] for e in entries], dtype=np.uint64))
            av_parts.append(np.ones(k))
            rows_parts.append(np.arange(k, dtype=np.int64))
        if aff:  # match features: the visitor's affinity to this action's value of a field
            m_rows: list[int] = []
            m_hash: list[int] = []
            m_val: list[float] = []
            for j, e in enumerate(entries):
                feats = e[0]
                for key in e[3]:
                    a = aff.get(key)
                    if a:
                        m_rows.append(j)
                        m_hash.append(self.raw("match:" + key.partition(":")[0]))
                        m_val.append(a * float(feats[key]))
            if m_rows:
                ah_parts.append(np.array(m_hash, dtype=np.uint64))
                av_parts.append(_squash_array(np.array(m_val)))
                rows_parts.append(np.array(m_rows, dtype=np.int64))
        ar = np.concatenate(rows_parts)
        ah = np.concatenate(ah_parts)
        av = np.concatenate(av_parts)
        m = ch.shape[0]
        # action main effects, and crosses context x action (hash of the ordered pair)
        parts_r = [ar, np.repeat(ar, m)]
        parts_h = [ah, (ah[:, None] + ch[None, :] * _GOLDEN).ravel()]
        parts_v = [av, (av[:, None] * cv[None, :]).ravel()]
        if with_context and m:
            parts_r.append(np.repeat(np.arange(k, dtype=np.int64), m))
            parts_h.append(np.tile(ch, k))
            parts_v.append(np.tile(cv, k))
        return np.concatenate(parts_r), _mix(np.concatenate(parts_h)), np.concatenate(parts_v)

    def _pair_slot(self, ctx_name: str, action_name: str) -> tuple[int, float]:
        key = (ctx_name, action_name)
        hit = self._slot_cache.get(key)
        if hit is None:
            h = _mix_int((self.raw(action_name) + self.raw(ctx_name) * _GOLDEN_INT) & _MASK64)
            hit = (h % (self.dims - 1) + 1, -1.0 if h >> 63 else 1.0)
            if len(self._slot_cache) >= self.max_cache:
                self._slot_cache.clear()
            self._slot_cache[key] = hit
        return hit

    def _cross_items(
        self, context: Mapping[str, float], candidate: Candidate, with_ids: bool, with_context: bool
    ) -> list[tuple[int, float]]:
        """(slot, signed value) pairs of one (context, candidate), in plain Python with cached slots."""
        ctx = [(k, float(v) if -1.0 <= v <= 1.0 else squash(v)) for k, v in context.items() if v]
        feats = candidate.features
        acts = [(k, float(v) if -1.0 <= v <= 1.0 else squash(v)) for k, v in feats.items() if v]
        acts += [(k, squash(v)) for k, v in match_features(context, feats).items()]
        if with_ids:
            acts.append((_ID_PREFIX + candidate.action_id, 1.0))
        slot, pair = self.slot, self._pair_slot
        out: list[tuple[int, float]] = []
        for an, av in acts:
            i, sg = slot(an)
            out.append((i, sg * av))
            for cn, cv in ctx:
                i, sg = pair(cn, an)
                out.append((i, sg * av * cv))
        if with_context:
            for cn, cv in ctx:
                i, sg = slot(cn)
                out.append((i, sg * cv))
        return out

    def cross_vector(
        self, context: Mapping[str, float], candidate: Candidate, with_ids: bool = False, with_context: bool = False
    ) -> np.ndarray:
        """One row of :meth:`cross_matrix`, computed in plain Python with cached slots (faster for a
        single candidate, e.g. in ``learn_one``)."""
        out = [0.0] * self.dims
        out[0] = 1.0
        for i, v in self._cross_items(context, candidate, with_ids, with_context):
            out[i] += v
        return np.array(out)

    def cross_sparse_one(
        self, context: Mapping[str, float], candidate: Candidate, with_ids: bool = True, with_context: bool = True
    ) -> dict[int, float]:
        """One dict of :meth:`cross_sparse`, by the single-candidate fast path."""
        out = {0: 1.0}
        for i, v in self._cross_items(context, candidate, with_ids, with_context):
            out[i] = out.get(i, 0.0) + v
        return out

    def cross_matrix(
        self,
        context: Mapping[str, float],
        candidates: Sequence[Candidate],
        with_ids: bool = False,
        with_context: bool = False,
    ) -> np.ndarray:
        """``(len(candidates), dims)`` matrix: per candidate its features, match features and crosses
        with the context (plus its id if ``with_ids``, plus context main effects if ``with_context``).
        Column 0 is the bias."""
        out = np.zeros((len(candidates), self.dims))
        if not candidates:
            return out
        out[:, 0] = 1.0
        rows, hashes, values = self._pair_arrays(context, candidates, with_ids, with_context)
        if rows.size:
            idx, sign = self._slots(hashes)
            flat = rows * self.dims + idx
            out += np.bincount(flat, weights=sign * values, minlength=out.size).reshape(out.shape)
        return out

    def cross_sparse(
        self,
        context: Mapping[str, float],
        candidates: Sequence[Candidate],
        with_ids: bool = True,
        with_context: bool = True,
    ) -> list[dict[int, float]]:
        """Like :meth:`cross_matrix`, as one sparse ``{slot: value}`` dict per candidate (for River)."""
        out: list[dict[int, float]] = [{0: 1.0} for _ in candidates]
        if not candidates:
            return out
        rows, hashes, values = self._pair_arrays(context, candidates, with_ids, with_context)
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        idx, sign = self._slots(hashes[order])
        vals = sign * values[order]
        bounds = np.searchsorted(rows, np.arange(len(candidates) + 1)).tolist()
        idx_l, val_l = idx.tolist(), vals.tolist()
        for j in range(len(candidates)):
            d = out[j]
            for i, v in zip(idx_l[bounds[j]:bounds[j + 1]], val_l[bounds[j]:bounds[j + 1]], strict=True):
                d[i] = d.get(i, 0.0) + v
        return out
