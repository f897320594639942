"""Per-customer features: what the stream writes (``ops_for``) and what serving reads (``decode``).

Both sides import this module, so the meaning of every stored field is defined exactly once.
``ops_for`` turns one event into a short list of primitive operations that ``lua/apply_ops.lua``
applies atomically; it is pure, so the feature logic is unit-tested without Redis.

>>> from engine.config import parse_config
>>> cfg = parse_config({"feature": [{"name": "category", "kind": "affinity", "field": "category",
...                                  "weights": {"page_view": 1.0}}]})
>>> fx = FeatureExtractor(cfg)
>>> ops = fx.ops_for("page_view", 1_000.0, {"category": "shoes"}, {})
>>> [op[0] for op in ops]
['i', 'min', 'max', 'sess', 'i', 'z']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.config import WINDOWS, EngineConfig
from engine.layout import OwnerKeys, customer_keys, popularity_keys

Op = list[Any]
#: Global popularity keeps more values than a single profile does.
POPULARITY_TOP_K = 2000


def _values(field_name: str, properties: Mapping[str, Any]) -> list[str]:
    """The values of a property on an event, including those of a purchase's line items."""
    out: list[str] = []
    v = properties.get(field_name)
    if v is not None and v != "":
        out.append(str(v))
    for item in properties.get("items") or ():
        if isinstance(item, Mapping):
            iv = item.get(field_name)
            if iv is not None and iv != "":
                out.append(str(iv))
    return out


class FeatureExtractor:
    """Compiles the declared features into operations on one customer's keys and on popularity."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        # Key indexes are the same for every customer, so compute them once from a placeholder.
        self._idx: OwnerKeys = customer_keys("_", config)
        self._pop_idx: OwnerKeys = popularity_keys(config)
        self._session_timeout = config.profile.session_timeout_minutes * 60.0

    def ops_for(
        self, event_type: str, ts: float, properties: Mapping[str, Any], context: Mapping[str, Any]
    ) -> list[Op]:
        """Operations for one event on its customer's profile."""
        cfg, idx = self.config, self._idx
        if event_type == "consent":
            allowed = bool(properties.get("personalisation", True))
            ops: list[Op] = [["set", "consent_personalisation", 1 if allowed else 0]]
            for k in ("analytics", "marketing"):
                if k in properties:
                    ops.append(["set", f"consent_{k}", 1 if properties[k] else 0])
            if not allowed:
                ops.append(["wipe"])  # withdrawing consent removes the behavioural profile
            return ops
        ops = [["i", f"c:{event_type}", 1], ["min", "first_seen", ts], ["max", "last_seen", ts]]
        if event_type in ("identify", "feedback"):
            return ops
        ops.append(["sess", ts, str(context.get("session_id") or ""), self._session_timeout])
        if event_type == "page_view":
            ops.append(["i", "sess_pages", 1])
        for f in cfg.affinities:
            w = f.weights.get(event_type)
            if w:
                hl = f.half_life_hours * 3600.0
                for v in _values(f.field, properties):
                    ops.append(["z", idx.aff[f.name], v, w, ts, hl, f.top_k, f"L:{f.name}"])
        for r in cfg.recents:
            if event_type in r.events:
                for v in _values(r.field, properties):
                    ops.append(["r", idx.recent[r.name], v, r.size])
        if event_type in ("add_to_cart", "remove_from_cart") and properties.get("item_id"):
            q = int(properties.get("quantity") or 1)
            ops.append(["cart", idx.cart, str(properties["item_id"]), q if event_type == "add_to_cart" else -q])
        elif event_type == "purchase":
            ops.append(["cartclear", idx.cart])
            ops.append(["f", "monetary", float(properties.get("value") or 0.0)])
        for wf in cfg.windows:
            if event_type in wf.events:
                for w in wf.windows:
                    width, n = WINDOWS[w]
                    ops.append(["w", idx.win, f"{wf.name}:{w}", int(ts // width), n, 1])
        return ops

    def popularity_ops_for(self, event_type: str, ts: float, properties: Mapping[str, Any]) -> list[Op]:
        """Operations for one event on the global popularity owner (forward-decayed counts)."""
        ops: list[Op] = []
        hl = self.config.scoring.popularity_half_life_hours * 3600.0
        for f in self.config.affinities:
            w = f.weights.get(event_type)
            if w:
                for v in _values(f.field, properties):
                    ops.append(["z", self._pop_idx.aff[f.name], v, w, ts, hl, POPULARITY_TOP_K, f"L:{f.name}"])
        return ops

    def merge_ops(self, raw: RawProfile, ts: float) -> list[Op]:
        """Operations that fold an anonymous profile (read raw) into a customer's profile."""
        cfg, idx = self.config, self._idx
        h = raw.hash
        ops: list[Op] = []
        for k, v in h.items():
            if k.startswith("c:") or k == "sess_pages":
                ops.append(["i", k, int(float(v))])
            elif k == "monetary":
                ops.append(["f", k, float(v)])
            elif k in ("first_seen",):
                ops.append(["min", k, float(v)])
            elif k in ("last_seen",):
                ops.append(["max", k, float(v)])
            elif k in ("sess_id", "sess_start", "sess_last") or k.startswith("consent_"):
                ops.append(["setnx", k, v])
        for f in cfg.affinities:
            landmark = float(h.get(f"L:{f.name}", ts))
            hl = f.half_life_hours * 3600.0
            for member, score in raw.affinities.get(f.name, ()):
                # score is relative to the anonymous landmark; re-express it at ts
                at_ts = score * 2.0 ** ((landmark - ts) / hl)
                ops.append(["zm", idx.aff[f.name], member, at_ts, ts, hl, f.top_k, f"L:{f.name}"])
        for r in cfg.recents:
            for v in raw.recent.get(r.name, ()):
                ops.append(["ra", idx.recent[r.name], v, r.size])
        for item, q in raw.cart.items():
            ops.append(["cart", idx.cart, item, int(q)])
        for fld, val in raw.windows.items():
            prefix, _, _slot = fld.rpartition(":")
            bucket, _, count = val.partition(":")
            w = prefix.rpartition(":")[2]
            if w in WINDOWS:
                ops.append(["wm", idx.win, prefix, int(bucket), WINDOWS[w][1], int(count)])
        return ops


@dataclass(slots=True)
class RawProfile:
    """What one Redis pipeline returns for a customer, before decoding."""

    hash: dict[str, str] = field(default_factory=dict)
    cart: dict[str, str] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)
    affinities: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    recent: dict[str, list[str]] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.hash)


@dataclass(slots=True)
class Profile:
    """A customer's features as of ``now`` (affinities decayed, windows summed)."""

    customer_id: str
    exists: bool
    counts: dict[str, int]
    first_seen: float | None
    last_seen: float | None
    session: dict[str, Any]
    affinities: dict[str, dict[str, float]]
    recent: dict[str, list[str]]
    cart: dict[str, int]
    monetary: float
    windows: dict[str, dict[str, int]]
    consent: dict[str, bool]

    @property
    def personalisation_allowed(self) -> bool:
        return self.consent.get("personalisation", True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id, "exists": self.exists, "counts": self.counts,
            "first_seen": self.first_seen, "last_seen": self.last_seen, "session": self.session,
            "affinities": self.affinities, "recent": self.recent, "cart": self.cart,
            "monetary": self.monetary, "windows": self.windows, "consent": self.consent,
        }


def decode(customer_id: str, raw: RawProfile, config: EngineConfig, now: float) -> Profile:
    """Decode a raw profile into features as of ``now``."""
    h = raw.hash
    counts = {k[2:]: int(float(v)) for k, v in h.items() if k.startswith("c:")}
    affinities: dict[str, dict[str, float]] = {}
    for f in config.affinities:
        pairs = raw.affinities.get(f.name) or []
        if not pairs:
            affinities[f.name] = {}
            continue
        landmark = float(h.get(f"L:{f.name}", now))
        factor = 2.0 ** ((landmark - now) / (f.half_life_hours * 3600.0))
        affinities[f.name] = {m: s * factor for m, s in pairs}
    # one pass over the stored slots (not one lookup per possible slot): this runs on every decision
    totals: dict[str, int] = {}
    for fld, val in raw.windows.items():
        prefix = fld.rpartition(":")[0]
        w = prefix.rpartition(":")[2]
        spec = WINDOWS.get(w)
        if spec is None:
            continue
        bucket, _, count = val.partition(":")
        current = int(now // spec[0])
        if current - spec[1] < int(bucket) <= current:
            totals[prefix] = totals.get(prefix, 0) + int(count)
    windows = {wf.name: {w: totals.get(f"{wf.name}:{w}", 0) for w in wf.windows} for wf in config.windows}
    sess_start = _float(h.get("sess_start"))
    sess_last = _float(h.get("sess_last"))
    session = {
        "id": h.get("sess_id"),
        "pages": int(h.get("sess_pages", 0)),
        "start": sess_start,
        "length_s": (sess_last - sess_start) if sess_start is not None and sess_last is not None else 0.0,
        "active": sess_last is not None and now - sess_last <= config.profile.session_timeout_minutes * 60,
    }
    consent = {k[8:]: v == "1" for k, v in h.items() if k.startswith("consent_")}
    return Profile(
        customer_id=customer_id, exists=raw.exists, counts=counts,
        first_seen=_float(h.get("first_seen")), last_seen=_float(h.get("last_seen")),
        session=session, affinities=affinities, recent=dict(raw.recent),
        cart={k: int(v) for k, v in raw.cart.items()}, monetary=float(h.get("monetary", 0.0)),
        windows=windows, consent=consent,
    )


def _float(v: str | None) -> float | None:
    return float(v) if v is not None else None


def context_features(profile: Profile, now: float) -> dict[str, float]:
    """A flat numeric context for policies and decision logs (affinities normalised to sum 1)."""
    x: dict[str, float] = {"bias": 1.0}
    for name, scores in profile.affinities.items():
        total = sum(scores.values())
        if total > 0:
            for m, s in sorted(scores.items(), key=lambda kv: -kv[1])[:10]:
                x[f"aff_{name}:{m}"] = s / total  # pairs with action feature "<name>:<value>"
    for ev, n in profile.counts.items():
        x[f"log_count:{ev}"] = math.log1p(n)
    if profile.last_seen is not None:
        x["hours_since_last_seen"] = max(0.0, (now - profile.last_seen) / 3600.0)
    x["session_pages"] = float(profile.session["pages"])
    x["cart_items"] = float(sum(profile.cart.values()))
    x["log_monetary"] = math.log1p(max(0.0, profile.monetary))
    for name, wins in profile.windows.items():
        for w, n in wins.items():
            x[f"win:{name}:{w}"] = float(n)
    return x


def top(scores: Mapping[str, float], n: int) -> Sequence[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: -kv[1])[:n]
