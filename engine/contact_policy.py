"""Eligibility and suppression before scoring: who may be shown what, how often, on which channel.

``[contact_policy]`` (docs/contact-policy.md) declares the rules; the stream keeps the exposure records they
read on the profile (``engine.exposure``), so decide evaluates them on the profile it already read. An action
is out when

- its item was bought (``suppressed: purchased``) or is in the cart (``suppressed: in the cart``);
- it was shown ``max_shown_without_click`` times since its last click (``suppressed: shown 5 times without a
  click``);
- it was dismissed within ``dismiss_cooldown_hours`` (``cooldown: dismissed 2h ago``);
- one of its caps is reached (``cap: 3/day reached``): ``[contact_policy] action_caps``, the action's own
  ``caps`` on top, per calendar hour, day or week of the customer's time zone (weeks start on Monday).

A channel is out (``serving/nba.py``: not a candidate) when its cap is reached (``cap: email 1/day reached``)
or, for every channel but web, when the customer's contact pressure is (``contact pressure: 5/week reached``:
impressions on every channel but web together).

When nothing passes, decide answers "nothing now" with the reason (:func:`nothing_now`): ``capped``,
``contact_pressure``, ``all_suppressed``, else ``no_eligible_action``.

>>> from engine.config import parse_config
>>> cfg = parse_config({"contact_policy": {"enabled": True, "action_caps": {"day": 2},
...     "channel_caps": {"email": {"day": 1}}, "contact_pressure": {"week": 3}, "dismiss_cooldown_hours": 24,
...     "max_shown_without_click": 4}})
>>> from engine.timing import zone
>>> now = 1_764_662_400.0                       # 2025-12-02 08:00 UTC, a Tuesday
>>> m = int(now // 60)
>>> raw = {"X:a": f"1,,{b36(m - 60)},{b36(m - 30)}", "X:b": f"0,{b36(m - 120)}", "Y:email": f"0,,{b36(m - 600)}"}
>>> view = PolicyView(cfg.contact_policy, raw, {}, now, zone("UTC"))
>>> view.action("a", None, None), view.action("b", None, None), view.action("c", None, None)
(('capped', 'cap: 2/day reached'), ('suppressed', 'cooldown: dismissed 2h ago'), None)
>>> view.channel("email"), view.channel("push")     # the email 10 hours ago was yesterday in UTC...
(None, None)
>>> PolicyView(cfg.contact_policy, raw, {}, now, zone("Asia/Tokyo")).channel("email")   # ...not in Tokyo
('capped', 'cap: email 1/day reached')
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from engine.config.model import PERIODS, Action, Caps, ContactPolicySettings
from engine.exposure import ACTION_PREFIX, CHANNEL_PREFIX, CHANNELS, PURCHASE_PREFIX

_PRESSURE_FIELDS = tuple(CHANNEL_PREFIX + c for c in CHANNELS if c != "web")

#: "Nothing now" reasons (the answer's ``reason``); ``below_threshold`` is value arbitration's.
CAPPED, CONTACT_PRESSURE, ALL_SUPPRESSED, NO_ELIGIBLE_ACTION = (
    "capped", "contact_pressure", "all_suppressed", "no_eligible_action")
#: Exclusion categories -> the reason when every candidate fell to them (ties: this order).
_REASONS = {"capped": CAPPED, "contact_pressure": CONTACT_PRESSURE, "suppressed": ALL_SUPPRESSED}
Exclusion = tuple[str, str]


def b36(n: int) -> str:
    """An epoch minute as the exposure records store it.

    >>> b36(0), b36(29_411_040)
    ('0', 'hidpc')
    """
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while n > 0:
        n, r = divmod(n, 36)
        s = digits[r] + s
    return s or "0"


#: (zone, period, quarter hour) -> the period's start: every local hour starts on a UTC quarter hour (offsets and
#: DST changes are whole quarter hours), so within one quarter hour the start is the same
_STARTS: dict[tuple[str, str, int], float] = {}


def cached_period_start(now: float, tz: ZoneInfo, period: str) -> float:
    """:func:`period_start`, computed once per zone, period and quarter hour (decide asks it per decision).

    >>> from engine.timing import zone
    >>> cached_period_start(1_764_662_400.0 + 899, zone("Asia/Kolkata"), "hour") == period_start(
    ...     1_764_662_400.0 + 899, zone("Asia/Kolkata"), "hour")
    True
    """
    key = (tz.key, period, int(now // 900))
    s = _STARTS.get(key)
    if s is None:
        if len(_STARTS) >= 4096:
            _STARTS.clear()
        s = _STARTS[key] = period_start(now, tz, period)
    return s


def period_start(now: float, tz: ZoneInfo, period: str) -> float:
    """The start (epoch s) of the calendar hour, day or week (from Monday 00:00) that ``now`` is in, in ``tz``.

    >>> from engine.timing import zone
    >>> now = 1_764_662_400.0 + 15 * 3600 + 10 * 60      # 2025-12-02 23:10 UTC, a Tuesday
    >>> [period_start(now, zone("UTC"), p) - now for p in ("hour", "day", "week")]
    [-600.0, -83400.0, -169800.0]
    >>> period_start(now, zone("Europe/Paris"), "day") - now   # 00:10 on Wednesday in Paris: 10 minutes ago
    -600.0
    >>> period_start(now, zone("Asia/Kolkata"), "hour") - now  # 04:40 in Kolkata (UTC+5:30)
    -2400.0
    """
    local = datetime.fromtimestamp(now, tz)
    if period == "hour":
        return local.replace(minute=0, second=0, microsecond=0).timestamp()
    day = datetime(local.year, local.month, local.day, tzinfo=tz)
    if period == "week":
        day = datetime.combine((day - timedelta(days=local.weekday())).date(), day.time(), tzinfo=tz)
    return day.timestamp()


def count_since(times: Iterable[int], start_s: float) -> int:
    """Times (epoch minutes) at or after ``start_s`` (a period starts on a whole minute in every time zone).

    >>> count_since([10, 11, 12], 11 * 60.0)
    2
    """
    first = start_s / 60.0
    return sum(1 for t in times if t >= first)


def count_since_b36(times: Sequence[str], start_s: float) -> int:
    """The same on times as stored (base 36): strings of one length compare as their numbers do, so no time
    is converted unless its length differs from the start's.

    >>> count_since_b36(["a", "b", "c"], 11 * 60.0), count_since_b36(["hidpc", "zz"], 29_411_040 * 60.0)
    (2, 1)
    """
    first = _b36_cached(int(start_s // 60))
    n = len(first)
    return sum(1 for t in times if (t >= first if len(t) == n else int(t, 36) >= int(first, 36)))


@lru_cache(maxsize=1024)
def _b36_cached(minute: int) -> str:
    return b36(minute)


#: (id(defaults), id(own)) -> (defaults, own, their limits): an action's effective caps, built once per
#: configuration (keyed by identity: hashing the frozen dataclasses per candidate cost more than the checks)
_LIMITS: dict[tuple[int, int], tuple[Caps, Caps | None, tuple[tuple[str, int], ...]]] = {}


def _limits(defaults: Caps, own: Caps | None) -> tuple[tuple[str, int], ...]:
    hit = _LIMITS.get((id(defaults), id(own)))
    if hit is not None and hit[0] is defaults and hit[1] is own:
        return hit[2]
    if len(_LIMITS) >= 65536:
        _LIMITS.clear()
    limits = defaults.over(own).limits()
    _LIMITS[id(defaults), id(own)] = (defaults, own, limits)
    return limits


def ago(seconds: float) -> str:
    """
    >>> ago(90.0), ago(7300.0), ago(3 * 86400.0)
    ('1 min', '2h', '3 days')
    """
    if seconds < 3600:
        return f"{max(0, int(seconds // 60))} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)} days"


class PolicyView:
    """The contact policy for one customer as of one decision: their exposure records, cart, time zone."""

    __slots__ = ("policy", "raw", "cart", "now", "tz", "_starts", "_pressure")

    def __init__(self, policy: ContactPolicySettings, raw: Mapping[str, str], cart: Mapping[str, int], now: float,
                 tz: ZoneInfo) -> None:
        self.policy, self.raw, self.cart, self.now, self.tz = policy, raw, cart, now, tz
        self._starts: dict[str, float] = {}
        self._pressure: Exclusion | None | bool = False  # False: not computed yet

    def start(self, period: str) -> float:
        s = self._starts.get(period)
        if s is None:
            s = self._starts[period] = cached_period_start(self.now, self.tz, period)
        return s

    def _cap_hit(self, times: Sequence[str], limits: tuple[tuple[str, int], ...]) -> tuple[str, int] | None:
        for period, limit in limits:
            if len(times) >= limit and count_since_b36(times, self.start(period)) >= limit:
                return period, limit
        return None

    def action(self, action_id: str, item_id: str | None, caps: Caps | None) -> Exclusion | None:
        """Why this action is out for the customer now (category, rule), or None."""
        p, raw = self.policy, self.raw
        if item_id is not None:
            if p.suppress_purchased and PURCHASE_PREFIX + item_id in raw:
                return "suppressed", "suppressed: purchased"
            if p.suppress_in_cart and item_id in self.cart:
                return "suppressed", "suppressed: in the cart"
        value = raw.get(ACTION_PREFIX + action_id)
        if value is None:
            return None
        # the record as stored (engine.exposure): only what a rule needs is converted
        parts = value.split(",")
        n = p.max_shown_without_click
        if n is not None and parts[0] and (unclicked := int(parts[0])) >= n:
            return "suppressed", f"suppressed: shown {unclicked} times without a click"
        hours = p.dismiss_cooldown_hours
        if hours is not None and len(parts) > 1 and parts[1]:
            since = self.now - int(parts[1], 36) * 60
            if since < hours * 3600:
                return "suppressed", f"cooldown: dismissed {ago(since)} ago"
        if len(parts) > 2:
            hit = self._cap_hit(parts[2:], _limits(p.action_caps, caps))
            if hit is not None:
                return "capped", f"cap: {hit[1]}/{hit[0]} reached"
        return None

    def channel(self, channel: str) -> Exclusion | None:
        """Why a channel may not contact the customer now (its cap, the contact pressure), or None."""
        caps = self.policy.channel_caps.get(channel)
        if caps is not None:
            value = self.raw.get(CHANNEL_PREFIX + channel)
            hit = self._cap_hit(value.split(",")[2:], caps.limits()) if value else None
            if hit is not None:
                return "capped", f"cap: {channel} {hit[1]}/{hit[0]} reached"
        if channel == "web":
            return None
        if self._pressure is False:
            self._pressure = self._contact_pressure()
        return self._pressure  # type: ignore[return-value]

    def _contact_pressure(self) -> Exclusion | None:
        limits = self.policy.contact_pressure.limits()
        if not limits:
            return None
        raw = self.raw
        times = [t for f in _PRESSURE_FIELDS if (v := raw.get(f)) for t in v.split(",")[2:]]
        for period, limit in limits:
            if count_since_b36(times, self.start(period)) >= limit:
                return "contact_pressure", f"contact pressure: {limit}/{period} reached (every channel but web)"
        return None


def eligible(view: PolicyView, actions: Sequence[Action], channel: str | None = None
             ) -> tuple[list[Action], dict[str, Exclusion]]:
    """The actions the policy lets through, and why each other one is out. ``channel``: the one every action
    of the placement goes out on (``web`` for a placement without channels): its cap leaves them all out.

    >>> from engine.config import parse_config
    >>> from engine.timing import zone
    >>> cfg = parse_config({"contact_policy": {"enabled": True}, "placement": [{"id": "p"}], "action": [
    ...     {"id": "a", "placements": ["p"], "item_id": "i1"}, {"id": "b", "placements": ["p"]}]})
    >>> kept, out = eligible(PolicyView(cfg.contact_policy, {"P:i1": "0,hidpc"}, {}, 0.0, zone("UTC")),
    ...                      list(cfg.actions.values()))
    >>> [a.id for a in kept], out
    (['b'], {'a': ('suppressed', 'suppressed: purchased')})
    """
    if channel is not None and (hit := view.channel(channel)) is not None:
        return [], {a.id: hit for a in actions}
    kept: list[Action] = []
    out: dict[str, Exclusion] = {}
    raw, cart, p = view.raw, view.cart, view.policy
    purchased, in_cart = p.suppress_purchased, p.suppress_in_cart
    for a in actions:
        # the usual case, inline: no exposure record, its item neither bought nor in the cart
        item = a.item_id
        if ACTION_PREFIX + a.id not in raw and (item is None or (
                not (purchased and PURCHASE_PREFIX + item in raw) and not (in_cart and item in cart))):
            kept.append(a)
            continue
        why = view.action(a.id, item, a.caps)
        if why is None:
            kept.append(a)
        else:
            out[a.id] = why
    return kept, out


def nothing_now(categories: Iterable[str]) -> str:
    """The reason of an empty answer from the categories of its candidates' exclusions (``other``: validity,
    audience, consent, contact hours): the policy's most common one when the policy alone emptied it.

    >>> nothing_now(["capped", "capped", "suppressed"]), nothing_now(["suppressed"]), nothing_now([])
    ('capped', 'all_suppressed', 'no_eligible_action')
    >>> nothing_now(["capped", "other"]), nothing_now(["contact_pressure"]), nothing_now(["capped", "consent"])
    ('no_eligible_action', 'contact_pressure', 'capped')
    """
    counts = Counter(c for c in categories if c != "consent")  # never theirs: it does not say why now
    if not counts or any(c not in _REASONS for c in counts):
        return NO_ELIGIBLE_ACTION
    best = max(_REASONS, key=lambda c: counts.get(c, 0))
    return _REASONS[best]


__all__ = ["ALL_SUPPRESSED", "CAPPED", "CONTACT_PRESSURE", "NO_ELIGIBLE_ACTION", "PERIODS", "Exclusion", "PolicyView",
           "eligible", "nothing_now", "period_start"]
