"""When to reach a customer: contact hours per channel in their time zone, and their best hour, learned.

Contact hours are local (``[contact] hours``: ``email = "09:00-20:00"``), evaluated in the customer's time
zone: the decide request's ``context.timezone``, else the profile's (identify ``traits.timezone``), else
``[contact] default_timezone``. A B2B placement (``business_hours = true``) reaches people on weekdays only,
within ``[contact] business_hours`` as well.

The **best contact hour** is learned in the stream from the customer's own activity: every active event
(page view, click, cart, purchase, search) adds 1 to two forward-decayed histograms on the profile, the UTC
hour of the day (24 bins) and the UTC weekday (7 bins), with the affinity operation of the Lua applier
(``a_h:<hour>``, ``a_d:<day>``: ``engine.layout``). Why hour-of-day x weekday and not the 168 bins of an
hour-of-week: a person's hours recur across days far more than they differ between them, 31 bins learn from
7x more events per bin, and they cost 31 listpack entries at most against up to 168 on profiles of ~1.8 KB
(``bench/nba_cost.py`` measures both; figures in docs/performance-history.md). The hour-of-week score is the
product ``P(hour) x P(weekday)``. Both histograms are kept in UTC, so a time-zone change (or a customer
seen from two) never splits one's history; contact hours are converted at decision time instead.

A newcomer has no history: the population's histograms (``pop:{global}:contact``, summed per batch and
partition by the worker, never a key written per event) are mixed in as ``activity_prior_strength``
pseudo-events, so a customer's own hours take over after a few visits.

``send_at`` (non-web channels) is the start of the hour with the best score among the open hours of the next
``send_within_hours``, "now" when the best is the current hour; without an open hour in that horizon, the first
open one within 7 days.

>>> hours = [0.0] * 24; hours[18] = 5.0; hours[2] = 1.0     # active at 18:00 UTC, a little at 02:00
>>> days = [1.0] * 7
>>> tokyo, paris = zone("Asia/Tokyo"), zone("Europe/Paris")
>>> now = 1_764_662_400.0                                     # 2025-12-02 08:00 UTC, a Tuesday
>>> iso(next_send_at(now, paris, (540, 1200), False, hours, days, 24))    # 19:00 in Paris: open
'2025-12-02T18:00:00Z'
>>> iso(next_send_at(now, tokyo, (540, 1200), False, hours, days, 24))    # 03:00 in Tokyo: closed
'2025-12-03T02:00:00Z'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.layout import (
    ACTIVITY_DAY_LANDMARK,
    ACTIVITY_DAY_PREFIX,
    ACTIVITY_HOUR_LANDMARK,
    ACTIVITY_HOUR_PREFIX,
    CONTACT_PRIOR_LANDMARK,
    TIMEZONE_FIELD,
)

Op = list[Any]
HOUR_S, DAY_S = 3600, 86400
#: Longest IANA name accepted (the longest in the database has 32 characters).
MAX_ZONE_CHARS = 64
#: Events that show a customer active at that hour (``impression``, ``identify``, ``consent``, ``feedback`` do not).
ACTIVE_EVENTS = frozenset({"page_view", "click", "add_to_cart", "remove_from_cart", "purchase", "search"})
#: How far ``send_at`` looks for an open hour at all (a B2B placement on Friday night waits for Monday).
SEARCH_DAYS = 7


def parse_hours(span: str) -> tuple[int, int]:
    """``"09:00-20:00"`` -> (540, 1200), local minutes of the day; ``"22:00-06:00"`` wraps over midnight.

    >>> parse_hours("09:00-20:00"), parse_hours("22:00-06:00"), parse_hours("00:00-24:00")
    ((540, 1200), (1320, 360), (0, 1440))
    """
    start, _, end = span.partition("-")
    h0, m0 = start.split(":")
    h1, m1 = end.split(":")
    return int(h0) * 60 + int(m0), int(h1) * 60 + int(m1)


def is_open(minute: int, span: tuple[int, int]) -> bool:
    """Whether a local minute of the day is inside a span (start inclusive, end exclusive).

    >>> is_open(540, (540, 1200)), is_open(1200, (540, 1200)), is_open(1380, (1320, 360)), is_open(400, (1320, 360))
    (True, False, True, False)
    """
    start, end = span
    return start <= minute < end if start < end else minute >= start or minute < end


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name; ``ValueError`` says why a name is not one.

    >>> zone("Europe/Paris").key
    'Europe/Paris'
    >>> zone("Mars/Olympus")
    Traceback (most recent call last):
        ...
    ValueError: 'Mars/Olympus' is not an IANA time zone (e.g. Europe/Paris)
    """
    if not name or len(name) > MAX_ZONE_CHARS or name.startswith("/") or ".." in name or "\x00" in name:
        raise ValueError(f"{name[:MAX_ZONE_CHARS]!r} is not an IANA time zone (e.g. Europe/Paris)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Paris)") from None


def customer_zone(context: Mapping[str, Any], stored: str | None, default: str) -> ZoneInfo:
    """The request's ``timezone`` (checked at the door), else the profile's, else the default. A stored
    name the database no longer knows falls back to the default (it was valid when it was written).

    >>> customer_zone({"timezone": "Asia/Tokyo"}, "Europe/Paris", "UTC").key
    'Asia/Tokyo'
    >>> customer_zone({}, "Europe/Paris", "UTC").key, customer_zone({}, None, "UTC").key
    ('Europe/Paris', 'UTC')
    """
    name = context.get("timezone")
    if isinstance(name, str):
        return zone(name)
    if stored:
        try:
            return zone(stored)
        except ValueError:
            pass
    return zone(default)


def utc_hour(ts: float) -> int:
    return int(ts // HOUR_S) % 24


def utc_weekday(ts: float) -> int:
    """0 = Monday (1970-01-01 was a Thursday).

    >>> utc_weekday(0.0), utc_weekday(4 * 86400.0)
    (3, 0)
    """
    return (int(ts // DAY_S) + 3) % 7


def activity_ops(event_type: str, ts: float, half_life_s: float) -> list[Op]:
    """The profile operations of one event on the customer's activity histograms (affinity operations).

    >>> [op[:3] for op in activity_ops("click", 4 * 86400.0 + 13 * 3600, 86400.0)]
    [['a', 'a_h:', '13'], ['a', 'a_d:', '0']]
    >>> activity_ops("impression", 0.0, 86400.0)
    []
    """
    if event_type not in ACTIVE_EVENTS:
        return []
    return [["a", ACTIVITY_HOUR_PREFIX, _NUM[utc_hour(ts)], 1.0, ts, half_life_s, 24, ACTIVITY_HOUR_LANDMARK],
            ["a", ACTIVITY_DAY_PREFIX, _NUM[utc_weekday(ts)], 1.0, ts, half_life_s, 7, ACTIVITY_DAY_LANDMARK]]


def prior_ops(event_type: str, ts: float, half_life_s: float, key_index: int) -> list[Op]:
    """The same on the population's histograms (``z`` operations: summed per batch in the script)."""
    if event_type not in ACTIVE_EVENTS:
        return []
    return [["z", key_index, "h" + _NUM[utc_hour(ts)], 1.0, ts, half_life_s, 256, CONTACT_PRIOR_LANDMARK],
            ["z", key_index, "d" + _NUM[utc_weekday(ts)], 1.0, ts, half_life_s, 256, CONTACT_PRIOR_LANDMARK]]


def timezone_ops(properties: Mapping[str, Any]) -> list[Op]:
    """An identify's ``traits.timezone``, stored when the database knows it. An unknown name is left out
    rather than refusing the event: dead-lettering an identify would lose the identity it links.

    >>> timezone_ops({"traits": {"timezone": "Europe/Paris"}}), timezone_ops({"traits": {"timezone": "Nowhere"}})
    ([['set', 'tz', 'Europe/Paris']], [])
    """
    traits = properties.get("traits")
    name = traits.get("timezone") if isinstance(traits, Mapping) else None
    if not isinstance(name, str):
        return []
    try:
        zone(name)
    except ValueError:
        return []
    return [["set", TIMEZONE_FIELD, name]]


_NUM = [str(i) for i in range(24)]


def decayed_histogram(h: Mapping[str, str], prefix: str, landmark: str, bins: int, half_life_s: float,
                      now: float) -> list[float]:
    """A profile histogram (``prefix<bin>`` fields, forward-decayed from ``landmark``) as of ``now``.

    >>> decayed_histogram({"a_d:0": "4", "L_d": "0"}, "a_d:", "L_d", 7, 86400.0, 86400.0)
    [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    out = [0.0] * bins
    lm = h.get(landmark)
    if lm is None:
        return out
    factor = 2.0 ** max(-1000.0, min(60.0, (float(lm) - now) / half_life_s))
    for i in range(bins):
        v = h.get(prefix + _NUM[i])
        if v is not None:
            out[i] = float(v) * factor
    return out


def customer_activity(h: Mapping[str, str], half_life_s: float, now: float) -> tuple[list[float], list[float]]:
    """(hours, weekdays) of a raw profile hash, decayed to ``now``."""
    return (decayed_histogram(h, ACTIVITY_HOUR_PREFIX, ACTIVITY_HOUR_LANDMARK, 24, half_life_s, now),
            decayed_histogram(h, ACTIVITY_DAY_PREFIX, ACTIVITY_DAY_LANDMARK, 7, half_life_s, now))


def mix(own: Sequence[float], prior: Sequence[float], strength: float) -> list[float]:
    """A customer's distribution over bins: own events plus ``strength`` pseudo-events spread as the
    population's (uniform without one).

    >>> mix([0.0, 0.0], [3.0, 1.0], 4.0), mix([2.0, 0.0], [0.0, 0.0], 2.0)
    ([0.75, 0.25], [0.75, 0.25])
    """
    total_prior = sum(prior)
    k = len(own)
    shares = [p / total_prior for p in prior] if total_prior > 0 else [1.0 / k] * k
    n = sum(own)
    if n + strength <= 0:
        return shares
    return [(o + strength * s) / (n + strength) for o, s in zip(own, shares, strict=True)]


def next_send_at(now: float, tz: ZoneInfo, span: tuple[int, int] | None, weekdays_only: bool,
                 hours: Sequence[float], days: Sequence[float], horizon_hours: int,
                 business: tuple[int, int] | None = None) -> float | None:
    """The best time to send within ``horizon_hours`` (see the module docstring): the start of the open
    UTC hour with the best ``hours[h] x days[d]`` (the earliest of equals; the current hour counts from
    ``now``), else the first open hour within 7 days, else None. ``span`` None: any hour; ``business``:
    the B2B span, on weekdays (with ``weekdays_only``) as well.

    >>> flat = [1.0] * 24
    >>> now = 1_764_662_400.0 + 3 * 86400 + 14 * 3600             # Friday 2025-12-05 22:00 UTC
    >>> iso(next_send_at(now, zone("UTC"), (540, 1200), True, flat, [1.0] * 7, 24))   # weekend: Monday 09:00
    '2025-12-08T09:00:00Z'
    >>> next_send_at(now, zone("UTC"), None, False, flat, [1.0] * 7, 24) == now        # any hour: now
    True
    """
    first_slot = int(now // HOUR_S)
    best_t: float | None = None
    best_score = -1.0
    # the zone's UTC offset, when it is the same over the whole search (no DST change this week): local times by
    # arithmetic instead of a datetime per hour (most of send_at's cost otherwise)
    offset = _offset(tz, now)
    fixed = offset if offset == _offset(tz, now + SEARCH_DAYS * DAY_S) else None
    for k in range(SEARCH_DAYS * 24):
        if k >= horizon_hours and best_t is not None:
            return best_t
        slot = first_slot + k
        t = now if k == 0 else float(slot * HOUR_S)
        if not _open_at(t, tz, span, weekdays_only, business, fixed):
            continue
        if k >= horizon_hours:  # nothing open in the horizon: the first open hour
            return t
        score = hours[slot % 24] * days[(slot // 24 + 3) % 7]
        if score > best_score:
            best_t, best_score = t, score
    return best_t


def _offset(tz: ZoneInfo, t: float) -> float:
    off = datetime.fromtimestamp(t, tz).utcoffset()
    return off.total_seconds() if off is not None else 0.0


def _open_at(t: float, tz: ZoneInfo, span: tuple[int, int] | None, weekdays_only: bool,
             business: tuple[int, int] | None, fixed_offset: float | None = None) -> bool:
    if span is None and not weekdays_only and business is None:
        return True
    if fixed_offset is not None:
        lt = int(t + fixed_offset)
        minute, weekday = (lt % DAY_S) // 60, (lt // DAY_S + 3) % 7
    else:
        local = datetime.fromtimestamp(t, tz)
        minute, weekday = local.hour * 60 + local.minute, local.weekday()
    if weekdays_only and weekday >= 5:
        return False
    if business is not None and not is_open(minute, business):
        return False
    return span is None or is_open(minute, span)


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, to the second.

    >>> iso(0.0), iso(None)
    ('1970-01-01T00:00:00Z', None)
    """
    if ts is None:
        return None
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
