"""Per-customer features: what the stream writes (``ops_for``) and what serving reads (``decode``).

Both sides import this module, so the meaning of every stored field (see ``engine.layout``) is defined
exactly once. ``ops_for`` turns one event into a short list of primitive operations that
``lua/apply_ops.lua`` applies atomically to the customer's one hash; it is pure, so the feature logic is
unit-tested without Redis.

>>> from engine.config import parse_config
>>> cfg = parse_config({"feature": [{"name": "category", "kind": "affinity", "field": "category",
...                                  "weights": {"page_view": 1.0}}]})
>>> fx = FeatureExtractor(cfg)
>>> ops = fx.ops_for("page_view", 1_000.0, {"category": "shoes"}, {})
>>> [op[0] for op in ops]
['i', 'min', 'max', 'sess', 'i', 'a']
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import channels, timing
from engine.config import WINDOWS, EngineConfig
from engine.consent import consent_choices
from engine.exposure import Exposure
from engine.layout import (
    ACTIVITY_DAY_LANDMARK,
    ACTIVITY_DAY_PREFIX,
    ACTIVITY_HOUR_LANDMARK,
    ACTIVITY_HOUR_PREFIX,
    CONSENT_CODES,
    CONSENT_PREFIX,
    CONSENT_TIME,
    CONTACT_PRIOR_LANDMARK,
    COUNT_CODES,
    FIRST_SEEN,
    LAST_SEEN,
    MONETARY,
    RECENT_SEP,
    SESSION_ID,
    SESSION_LAST,
    SESSION_PAGES,
    SESSION_START,
    TIMEZONE_FIELD,
    OwnerKeys,
    cart_field,
    consent_field,
    count_field,
    popularity_keys,
    popularity_landmark_field,
    profile_fields,
)

Op = list[Any]
#: Global popularity keeps more values than a single profile does.
POPULARITY_TOP_K = 2000
#: The largest cart quantity one event may add or remove (a larger one is refused: dead-lettered).
MAX_QUANTITY = 1_000_000
_COUNT_NAMES = {code: name for name, code in COUNT_CODES.items()}
#: Events the contact policy's exposure records count (engine.exposure).
_EXPOSURE_EVENTS = frozenset({"impression", "click", "feedback", "purchase"})
_CONSENT_NAMES = {code: name for name, code in CONSENT_CODES.items()}


def _values(field_name: str, properties: Mapping[str, Any]) -> list[str]:
    """The values of a property on an event, including those of a purchase's line items."""
    out: list[str] = []
    v = properties.get(field_name)
    if v is not None and v != "":
        out.append(str(v))
    items = properties.get("items")
    if items:
        for item in items:
            if isinstance(item, Mapping):
                iv = item.get(field_name)
                if iv is not None and iv != "":
                    out.append(str(iv))
    return out


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one event type feeds, compiled once per type."""

    count: str
    #: (property, prefix, weight, half-life s, top_k, landmark field)
    affinities: tuple[tuple[str, str, float, float, int, str], ...]
    #: (property, prefix, size)
    recents: tuple[tuple[str, str, int], ...]
    #: (field, bucket width s, slots)
    windows: tuple[tuple[str, int, int], ...]


class FeatureExtractor:
    """Compiles the declared features into operations on one customer's hash and on popularity."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.fields = profile_fields(config)
        self._pop_idx: OwnerKeys = popularity_keys(config)
        self._session_timeout_ms = int(config.profile.session_timeout_minutes * 60_000)
        self._plans: dict[str, _Plan] = {}
        self._pop_hl = config.scoring.popularity_half_life_hours * 3600.0
        self._pop_plans: dict[str, tuple[tuple[str, int, float, str], ...]] = {}
        # next-best action (engine.timing, engine.channels): activity hours, time zone and channel counts are
        # kept only when a placement answers channels
        self.contact = any(p.channels for p in config.placements.values())
        self._activity_hl = config.contact.activity_half_life_days * 86400.0
        # the contact policy's exposure records (engine.exposure): only when the policy is enabled
        policy = config.contact_policy
        self.exposure = Exposure(policy, tuple(n for a in config.actions.values() if a.caps is not None
                                               for n in (a.caps.hour, a.caps.day, a.caps.week))
                                 ) if policy.enabled else None

    def _plan(self, event_type: str) -> _Plan:
        cfg, fl = self.config, self.fields
        plan = _Plan(
            count_field(event_type),
            tuple((f.field, fl.affinity[f.name], f.weights[event_type], f.half_life_hours * 3600.0, f.top_k,
                   fl.landmark[f.name]) for f in cfg.affinities if f.weights.get(event_type)),
            tuple((r.field, fl.recent[r.name], r.size) for r in cfg.recents if event_type in r.events),
            tuple((fl.window[wf.name, w], *WINDOWS[w]) for wf in cfg.windows if event_type in wf.events
                  for w in wf.windows),
        )
        self._plans[event_type] = plan
        return plan

    def ops_for(
        self, event_type: str, ts: float, properties: Mapping[str, Any], context: Mapping[str, Any]
    ) -> list[Op]:
        """Operations for one event on its customer's profile (times as integer milliseconds)."""
        if event_type == "consent":
            choices = consent_choices(properties)
            ops: list[Op] = [["set", consent_field(p), 1 if granted else 0] for p, granted in choices]
            ops.append(["max", CONSENT_TIME, round(ts * 1000)])
            if ("personalisation", False) in choices:
                ops.append(["wipe"])  # withdrawing consent removes the behavioural profile
            return ops
        ops = self._ops_for(event_type, ts, properties, context)
        if self.exposure is not None and event_type in _EXPOSURE_EVENTS:
            ops += self.exposure.ops(event_type, ts, properties, context)
        return ops

    def _ops_for(self, event_type: str, ts: float, properties: Mapping[str, Any],
                 context: Mapping[str, Any]) -> list[Op]:
        ms = round(ts * 1000)
        plan = self._plans.get(event_type) or self._plan(event_type)
        ops: list[Op] = [["i", plan.count, 1], ["min", FIRST_SEEN, ms], ["max", LAST_SEEN, ms]]
        if event_type == "identify" or event_type == "feedback":
            return ops + self._contact_ops(event_type, ts, properties, context) if self.contact else ops
        if event_type == "impression":  # shown, not done: the visitor was not necessarily active
            return ops[:1] + channels.channel_ops(event_type, properties, context) if self.contact else ops[:1]
        ops.append(["sess", ms, str(context.get("session_id") or ""), self._session_timeout_ms])
        if event_type == "page_view":
            ops.append(["i", SESSION_PAGES, 1])
        for prop, prefix, w, hl, top_k, lfield in plan.affinities:
            for v in _values(prop, properties):
                ops.append(["a", prefix, v, w, ts, hl, top_k, lfield])
        for prop, prefix, size in plan.recents:
            for v in _values(prop, properties):
                if RECENT_SEP in v:
                    v = v.replace(RECENT_SEP, " ")
                ops.append(["r", prefix, v, size])
        if event_type == "add_to_cart" or event_type == "remove_from_cart":
            item = properties.get("item_id")
            if item:
                q = int(properties.get("quantity") or 1)
                if not 0 < q <= MAX_QUANTITY:
                    raise ValueError(f"quantity {q} is not within 1..{MAX_QUANTITY}")
                ops.append(["cart", cart_field(item), q if event_type == "add_to_cart" else -q])
        elif event_type == "purchase":
            ops.append(["cartclear"])
            value = float(properties.get("value") or 0.0)
            if not math.isfinite(value):  # never stored (and JSON would carry it as null)
                raise ValueError(f"purchase value {value} is not finite")
            ops.append(["f", MONETARY, value])
        for fld, width, n in plan.windows:
            ops.append(["w", fld, int(ts // width), n, 1])
        if self.contact:
            ops += self._contact_ops(event_type, ts, properties, context)
        return ops

    def _contact_ops(self, event_type: str, ts: float, properties: Mapping[str, Any],
                     context: Mapping[str, Any]) -> list[Op]:
        """Next-best action: activity hours, an identify's time zone, the channel an engagement came from."""
        if event_type == "identify":
            return timing.timezone_ops(properties)
        return timing.activity_ops(event_type, ts, self._activity_hl) + channels.channel_ops(
            event_type, properties, context)

    def popularity_ops_for(self, event_type: str, ts: float, properties: Mapping[str, Any],
                           context: Mapping[str, Any] | None = None) -> list[Op]:
        """Operations for one event on the global popularity owner (forward-decayed counts)."""
        plan = self._pop_plans.get(event_type)
        if plan is None:
            plan = self._pop_plans[event_type] = tuple(
                (f.field, self._pop_idx.aff[f.name], f.weights[event_type], popularity_landmark_field(f.name))
                for f in self.config.affinities if f.weights.get(event_type))
        ops: list[Op] = []
        hl = self._pop_hl
        for prop, idx, w, lfield in plan:
            for v in _values(prop, properties):
                ops.append(["z", idx, v, w, ts, hl, POPULARITY_TOP_K, lfield])
        if self.contact:  # the population's hours and channel rates: summed per batch by the script
            ci, ahl = self._pop_idx.contact, self._activity_hl
            ops += timing.prior_ops(event_type, ts, ahl, ci)
            ops += channels.prior_ops(event_type, properties, context or {}, ts, ahl, ci, CONTACT_PRIOR_LANDMARK)
        return ops

    def merge_ops(self, raw: RawProfile, ts: float) -> list[Op]:
        """Operations that fold an anonymous profile (read raw) into a customer's profile.

        The anonymous side's consent choices come first (``kset``: the newer choice wins, a winning
        withdrawal wipes), then ``kgate``: the behavioural part applies only if the merged consent allows
        it (``merge_has_consent``: such a merge must be applied even to a profile that withdrew)."""
        cfg, fl = self.config, self.fields
        h = raw.hash
        consent: list[Op] = []
        ops: list[Op] = []
        affs = {fl.affinity[f.name]: f for f in cfg.affinities}
        # next-best action: the activity histograms merge like affinities (prefix -> half-life, bins, landmark)
        hist = {ACTIVITY_HOUR_PREFIX: (self._activity_hl, 24, ACTIVITY_HOUR_LANDMARK),
                ACTIVITY_DAY_PREFIX: (self._activity_hl, 7, ACTIVITY_DAY_LANDMARK)}
        for k, v in h.items():
            c = k[0]
            if c == "c" or k == SESSION_PAGES:
                ops.append(["i", k, int(v)])
            elif k == MONETARY:
                ops.append(["f", k, float(v)])
            elif k == FIRST_SEEN:
                ops.append(["min", k, int(v)])
            elif k == LAST_SEEN:
                ops.append(["max", k, int(v)])
            elif k in (SESSION_ID, SESSION_START, SESSION_LAST):
                ops.append(["setnx", k, v])
            elif c == CONSENT_PREFIX and k != CONSENT_TIME:
                # the newer choice wins: the anonymous side's, made at kt, over the customer's older one
                consent.append(["kset", k, v, int(h.get(CONSENT_TIME, 0))])
            elif c == "C":
                ops.append(["cart", k, int(v)])
            elif c in "XYP" and k[1:2] == ":":  # exposure records (engine.exposure)
                op = self.exposure.merge_op(k, v) if self.exposure is not None else None
                if op is not None:
                    ops.append(op)
            elif c in "EI" and k[1:2] == ":" or k == TIMEZONE_FIELD:  # channel counts, time zone
                ops.append(["setnx", k, v] if k == TIMEZONE_FIELD else ["i", k, int(v)])
            elif c == "a":
                prefix = k[: k.find(":") + 1]
                f = affs.get(prefix)
                spec = hist.get(prefix) if f is None else (f.half_life_hours * 3600.0, f.top_k, fl.landmark[f.name])
                if spec is None:
                    continue
                hl, top_k, lfield = spec
                landmark = float(h.get(lfield, ts))
                # the score is relative to the anonymous landmark; re-express it at ts (the exponent clamped: a
                # landmark stored far from ts must neither overflow nor bring a non-finite score)
                at_ts = float(v) * 2.0 ** max(-1000.0, min(60.0, (landmark - ts) / hl))
                if not math.isfinite(at_ts):
                    continue
                ops.append(["a", prefix, k[len(prefix):], at_ts, ts, hl, top_k, lfield])
        for r in cfg.recents:
            for v in _recent(h, fl.recent[r.name]):
                ops.append(["ra", fl.recent[r.name], v, r.size])
        for (_, w), fld in fl.window.items():
            val = h.get(fld)
            if val:
                newest, counts = _ring(val)
                n = WINDOWS[w][1]
                for i, cnt in enumerate(counts[:n]):
                    if cnt:
                        ops.append(["w", fld, newest - i, n, int(cnt)])
        if consent:
            if CONSENT_TIME in h:
                consent.append(["max", CONSENT_TIME, int(h[CONSENT_TIME])])
            return [*consent, ["kgate"], *ops]
        return ops


def merge_has_consent(ops: Sequence[Op]) -> bool:
    """Whether merge operations carry consent choices (the merge row is then applied as a consent event)."""
    return bool(ops) and ops[0][0] == "kset"


def _recent(h: Mapping[str, str], prefix: str) -> list[str]:
    """The recent values stored in the chunks ``<prefix>0``, ``<prefix>1``, ...: most recent first."""
    first = h.get(prefix + "0")
    if first is None:
        return []
    chunks = [first]
    i = 1
    while (c := h.get(f"{prefix}{i}")) is not None:
        chunks.append(c)
        i += 1
    return RECENT_SEP.join(chunks).split(RECENT_SEP)


def _ring(value: str) -> tuple[int, list[str]]:
    """A window ring ``<newest bucket>:<n0>,<n1>,...`` -> (newest bucket, counts newest first; '' = 0)."""
    newest, _, counts = value.partition(":")
    return int(newest), counts.split(",")


def window_total(value: str | None, width: int, slots: int, now: float) -> int:
    """Events in the buckets of a ring that fall in the window ending at ``now``.

    >>> window_total("100:1,,2", 3600, 24, 100 * 3600 + 5)  # buckets 100 and 98: both in the last 24 h
    3
    >>> window_total("100:1,,2", 3600, 24, 123 * 3600)  # 23 h later: bucket 98 has left the window
    1
    >>> window_total("100:1,,,,,,,,,,,,,,,,,,,,,,,,,1", 3600, 24, 128 * 3600)  # 28 h later: nothing
    0
    """
    if not value:
        return 0
    newest, counts = _ring(value)
    current = int(now // width)
    # position i holds bucket newest - i; it is in the window if current - slots < newest - i <= current
    lo = max(0, newest - current)
    hi = min(len(counts), newest - current + slots)
    if hi <= lo:  # the newest bucket is older than the window (a negative end would count from the end)
        return 0
    return sum(int(c) for c in counts[lo:hi] if c)


@dataclass(slots=True)
class RawProfile:
    """A customer's hash as Redis returns it (``HGETALL``), before decoding."""

    hash: dict[str, str] = field(default_factory=dict)

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
    #: the stored hash as read (next-best action decodes its fields only for placements that use them)
    raw: Mapping[str, str] = field(default_factory=dict)

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


@dataclass(frozen=True, slots=True)
class _DecodePlan:
    #: affinity field code -> feature name
    affinity_names: dict[str, str]
    #: affinity feature name -> (landmark field, half-life s)
    affinities: dict[str, tuple[str, float]]
    #: (feature name, recent prefix)
    recents: tuple[tuple[str, str], ...]
    #: (feature name, window, field, width, slots)
    windows: tuple[tuple[str, str, str, int, int], ...]
    session_timeout_s: float


_DECODE_PLANS: dict[int, tuple[EngineConfig, _DecodePlan]] = {}


def _decode_plan(config: EngineConfig) -> _DecodePlan:
    hit = _DECODE_PLANS.get(id(config))
    if hit is not None and hit[0] is config:
        return hit[1]
    fl = profile_fields(config)
    plan = _DecodePlan(
        dict(fl.affinity_by_code),
        {f.name: (fl.landmark[f.name], f.half_life_hours * 3600.0) for f in config.affinities},
        tuple((r.name, fl.recent[r.name]) for r in config.recents),
        tuple((wf.name, w, fl.window[wf.name, w], *WINDOWS[w]) for wf in config.windows for w in wf.windows),
        config.profile.session_timeout_minutes * 60.0,
    )
    _DECODE_PLANS[id(config)] = (config, plan)
    return plan


def decode(customer_id: str, raw: RawProfile, config: EngineConfig, now: float) -> Profile:
    """Decode a raw profile into features as of ``now``."""
    plan = _decode_plan(config)
    h = raw.hash
    counts: dict[str, int] = {}
    affinities: dict[str, dict[str, float]] = {}
    # per affinity code: (its decoded scores, the factor that decays a stored score to now)
    by_code: dict[str, tuple[dict[str, float], float]] = {}
    for code, name in plan.affinity_names.items():
        lfield, hl = plan.affinities[name]
        landmark = h.get(lfield)
        d: dict[str, float] = {}
        affinities[name] = d
        by_code[code] = (d, 2.0 ** ((float(landmark) - now) / hl) if landmark is not None else 1.0)
    cart: dict[str, int] = {}
    consent: dict[str, bool] = {}
    # one pass over the fields, dispatching on the first character (see engine.layout)
    for k, v in h.items():
        c = k[0]
        if c == "a":
            code, _, member = k[1:].partition(":")
            hit = by_code.get(code)
            if hit is not None:  # else a feature no longer declared
                hit[0][member] = float(v) * hit[1]
        elif c == "c":
            code = k[1:]
            counts[_COUNT_NAMES.get(code) or code[1:]] = int(v)
        elif c == "C":
            cart[k[2:]] = int(v)
        elif c == "k" and k != CONSENT_TIME:
            code = k[1:]
            consent[_CONSENT_NAMES.get(code) or code[1:]] = v == "1"
    windows: dict[str, dict[str, int]] = {}
    for name, w, fld, width, slots in plan.windows:
        windows.setdefault(name, {})[w] = window_total(h.get(fld), width, slots, now)
    sess_start = _ms(h.get(SESSION_START))
    sess_last = _ms(h.get(SESSION_LAST))
    session = {
        "id": h.get(SESSION_ID),
        "pages": int(h.get(SESSION_PAGES, 0)),
        "start": sess_start,
        "length_s": (sess_last - sess_start) if sess_start is not None and sess_last is not None else 0.0,
        "active": sess_last is not None and now - sess_last <= plan.session_timeout_s,
    }
    return Profile(
        customer_id=customer_id, exists=bool(h), counts=counts,
        first_seen=_ms(h.get(FIRST_SEEN)), last_seen=_ms(h.get(LAST_SEEN)),
        session=session, affinities=affinities, recent={name: _recent(h, p) for name, p in plan.recents},
        cart=cart, monetary=float(h.get(MONETARY, 0.0)), windows=windows, consent=consent, raw=h,
    )


def _ms(v: str | None) -> float | None:
    return int(v) / 1000.0 if v is not None else None


_BY_VALUE = operator.itemgetter(1)
#: feature-name strings of the context, built once per (kind, name): not formatted per request
_CONTEXT_NAMES: dict[tuple[str, str, str], str] = {}


def _context_name(kind: str, a: str, b: str = "") -> str:
    key = (kind, a, b)
    name = _CONTEXT_NAMES.get(key)
    if name is None:
        if len(_CONTEXT_NAMES) >= 4096:
            _CONTEXT_NAMES.clear()
        name = _CONTEXT_NAMES[key] = f"{kind}{a}:{b}" if b else f"{kind}{a}:"
    return name


def context_features(profile: Profile, now: float) -> dict[str, float]:
    """A flat numeric context for policies and decision logs (affinities normalised to sum 1)."""
    x: dict[str, float] = {"bias": 1.0}
    for name, scores in profile.affinities.items():
        if not scores:
            continue
        total = sum(scores.values())
        if total > 0:
            prefix = _context_name("aff_", name)
            # the 10 strongest, ties in stored order (a stable sort, as sorted(key=-score) was)
            for m, s in sorted(scores.items(), key=_BY_VALUE, reverse=True)[:10]:
                x[prefix + m] = s / total  # pairs with action feature "<name>:<value>"
    for ev, n in profile.counts.items():
        x[_context_name("log_count", "", ev)] = math.log1p(n)
    if profile.last_seen is not None:
        x["hours_since_last_seen"] = max(0.0, (now - profile.last_seen) / 3600.0)
    x["session_pages"] = float(profile.session["pages"])
    x["cart_items"] = float(sum(profile.cart.values()))
    x["log_monetary"] = math.log1p(max(0.0, profile.monetary))
    for name, wins in profile.windows.items():
        for w, n in wins.items():
            x[_context_name("win:", name, w)] = float(n)
    return x


def top(scores: Mapping[str, float], n: int) -> Sequence[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: -kv[1])[:n]
