"""Segments: named conditions over a profile's features, evaluated as of a moment.

A segment is declared in the configuration (``[[segment]]``) as lists of conditions: every condition of
``all`` holds, at least one of ``any`` (when given), and none of ``none``. A condition reads one thing of
the profile and compares it with ``min`` / ``max`` (inclusive):

- ``count``: all-time events of a type; ``window`` + ``span``: events of a window feature in one of its
  windows; ``metric``: one of :data:`METRICS`; ``affinity`` + ``value``: that value's share of the
  feature's strongest score (0 to 1, the scorer's normalisation);
- ``consent``: the purpose is granted (``granted = false``: it is not);
- ``segment``: membership of a segment declared earlier (so there are no cycles).

A metric that does not exist yet (days since the last visit of a visitor never seen) makes its condition
false, whatever the bounds. Evaluation needs no I/O: it reads a decoded :class:`engine.features.Profile`
as of ``now``, so a time-based segment (lapsed: no visit in 30 days) holds the moment its time comes.

>>> from engine.config.model import Segment, SegmentCondition
>>> cart_abandoners = Segment(id="cart_abandoners", all=(
...     SegmentCondition(metric="cart_items", min=1),
...     SegmentCondition(metric="minutes_since_last_seen", min=30)))
>>> lapsed = Segment(id="lapsed", all=(SegmentCondition(metric="days_since_last_seen", min=30),))
>>> segments = Segments([cart_abandoners, lapsed])
>>> now = 1_700_000_000.0
>>> p = Profile("c1", True, {"add_to_cart": 1}, now - 86400, now - 3600, {}, {}, {}, {"sku-1": 1}, 0.0, {}, {})
>>> segments.members(p, now)
['cart_abandoners']
>>> segments.members(p, now + 31 * 86400)
['cart_abandoners', 'lapsed']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from engine.config.model import WINDOWS, Segment, SegmentCondition
from engine.features import Profile
from engine.segment_view import DecodedView, View

#: The profile metrics a condition may name.
METRICS = ("monetary", "cart_items", "cart_quantity", "session_pages", "minutes_since_last_seen",
           "days_since_last_seen", "days_since_first_seen")

Test = Callable[[View, float, set[str]], bool]
Reader = Callable[[View, float], float | None]


def _metric(name: str) -> Reader:
    if name == "monetary":
        return lambda v, now: v.monetary()
    if name == "cart_items":
        return lambda v, now: float(v.cart_items())
    if name == "cart_quantity":
        return lambda v, now: float(v.cart_quantity())
    if name == "session_pages":  # the session under way; none once it timed out
        return lambda v, now: float(v.session_pages(now))
    if name in ("minutes_since_last_seen", "days_since_last_seen"):
        unit = 60.0 if name.startswith("minutes") else 86400.0
        return lambda v, now: None if (t := v.last_seen()) is None else max(0.0, now - t) / unit
    if name == "days_since_first_seen":
        return lambda v, now: None if (t := v.first_seen()) is None else max(0.0, now - t) / 86400.0
    raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")


def _reader(c: SegmentCondition) -> Reader:
    if c.count is not None:
        etype = c.count
        return lambda v, now: float(v.count(etype))
    if c.window is not None:
        feature, span = c.window, c.span or ""
        return lambda v, now: float(v.window(feature, span, now))
    if c.metric is not None:
        return _metric(c.metric)
    if c.affinity is not None:
        feature, value = c.affinity, c.value or ""
        return lambda v, now: v.affinity_share(feature, value)
    raise ValueError("a numeric condition names count, window, metric or affinity")


def compile_condition(c: SegmentCondition) -> Test:
    """One condition as a function of (a view of the profile, now, the segments already found to hold).

    >>> big = compile_condition(SegmentCondition(metric="monetary", min=100))
    >>> p = DecodedView(Profile("c", True, {}, None, None, {}, {}, {}, {}, 250.0, {}, {}))
    >>> big(p, 0.0, set()), compile_condition(SegmentCondition(metric="days_since_last_seen", max=7))(p, 0.0, set())
    (True, False)
    """
    if c.segment is not None:
        name = c.segment
        return lambda v, now, held: name in held
    if c.consent is not None:
        purpose, wanted = c.consent, c.granted
        return lambda v, now, held: (v.consent(purpose) is True) == wanted
    read, lo, hi = _reader(c), c.min, c.max

    def test(v: View, now: float, held: set[str]) -> bool:
        x = read(v, now)
        return x is not None and (lo is None or x >= lo) and (hi is None or x <= hi)
    return test


_SINCE = {"minutes_since_last_seen": (True, 60.0), "days_since_last_seen": (True, 86400.0),
          "days_since_first_seen": (False, 86400.0)}


def next_change(c: SegmentCondition, v: View, now: float) -> float | None:
    """The earliest time after ``now`` at which time alone (no event) could change this condition's truth,
    or None if it cannot. Conservative: a window condition is looked at again when its oldest bucket may
    drop out, and only if its count could cross a bound by falling.

    >>> p = DecodedView(Profile("c", True, {}, None, 1000.0, {}, {}, {}, {}, 0.0, {"views": {"1h": 12}}, {}))
    >>> next_change(SegmentCondition(metric="minutes_since_last_seen", min=30), p, 1100.0)
    2800.0
    >>> next_change(SegmentCondition(window="views", span="1h", min=10), p, 1100.0)  # next 5-minute bucket
    1200.0
    >>> next_change(SegmentCondition(window="views", span="1h", max=20), p, 1100.0) is None  # can only fall
    True
    """
    if c.metric in _SINCE:
        last, unit = _SINCE[c.metric]
        ref = v.last_seen() if last else v.first_seen()
        if ref is None:
            return None
        times = [ref + b * unit for b in (c.min, c.max) if b is not None]
        # past a max bound the condition turns false just after ref + max * unit
        later = [t if t > now else math.nextafter(t, math.inf) for t in times if t >= now]
        return min(later) if later else None
    if c.window is not None and c.span is not None:
        count = v.window(c.window, c.span, now)
        can_fall_across = (c.min is not None and count >= c.min) or (c.max is not None and count > c.max)
        if count <= 0 or not can_fall_across:
            return None
        width = WINDOWS[c.span][0]
        return float((math.floor(now / width) + 1) * width)
    return None


class Segments:
    """The configured segments, compiled once; ``members`` gives a profile's memberships as of ``now``,
    in configuration order, and ``next_change`` when time alone could change them."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self._conditions = [c for s in segments for c in (*s.all, *s.any, *s.none)]
        self._timed = [c for c in self._conditions
                       if c.metric in _SINCE or c.window is not None]
        self._compiled: list[tuple[str, list[Test], list[Test], list[Test]]] = [
            (s.id, [compile_condition(c) for c in s.all], [compile_condition(c) for c in s.any],
             [compile_condition(c) for c in s.none])
            for s in segments
        ]
        self.ids = tuple(s.id for s in segments)

    def __len__(self) -> int:
        return len(self._compiled)

    def members(self, profile: Profile | None, now: float) -> list[str]:
        """An unknown visitor (no profile) belongs to no segment."""
        if profile is None or not profile.exists or not self._compiled:
            return []
        return self.members_of(DecodedView(profile), now)

    def members_of(self, view: View, now: float) -> list[str]:
        """The memberships read from a view of an existing profile (``engine.segment_view``)."""
        held: set[str] = set()
        out: list[str] = []
        for sid, every, some, no in self._compiled:
            if (all(t(view, now, held) for t in every)
                    and (not some or any(t(view, now, held) for t in some))
                    and not any(t(view, now, held) for t in no)):
                held.add(sid)
                out.append(sid)
        return out

    def next_change(self, profile: Profile | View | None, now: float) -> float | None:
        """When the memberships should be evaluated again though no event came (None: never)."""
        if profile is None or not self._timed:
            return None
        if isinstance(profile, Profile):
            if not profile.exists:
                return None
            profile = DecodedView(profile)
        times = [t for t in (next_change(c, profile, now) for c in self._timed) if t is not None]
        return min(times) if times else None


def transitions(before: Sequence[str], after: Sequence[str]) -> tuple[list[str], list[str]]:
    """(entered, left), each in the order given.

    >>> transitions(["a", "b"], ["b", "c"])
    (['c'], ['a'])
    """
    was, now = set(before), set(after)
    return [s for s in after if s not in was], [s for s in before if s not in now]
