"""What segment conditions read of a profile, from a decoded :class:`engine.features.Profile` (serving has one at
every decision) or straight from the stored hash (the stream, after each batch: decoding every field of every
profile a batch wrote costs more than the conditions themselves, so only what they name is read).

Both views answer the same questions the same way (``tests/test_segments.py`` checks them against each other
on random profiles). An affinity's share is a value's score over the feature's strongest: every score of a
feature decays by the same factor, so the stored scores give the share without decaying them.

>>> from engine.config import parse_config
>>> config = parse_config({"feature": [{"name": "views", "kind": "window", "events": ["page_view"],
...                                     "windows": ["1h"]}]})
>>> view = RawView({"cv": "3", "m": "12.5", "C:sku-1": "2", "ls": "1700000000000"}, config)
>>> view.count("page_view"), view.monetary(), view.cart_items(), view.last_seen()
(3, 12.5, 1, 1700000000.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from engine.config import EngineConfig
from engine.config.model import WINDOWS, SegmentCondition
from engine.features import Profile, window_total
from engine.layout import (
    CART_PREFIX,
    FIRST_SEEN,
    LAST_SEEN,
    MONETARY,
    SEGMENTS_FIELD,
    SESSION_LAST,
    SESSION_PAGES,
    consent_field,
    count_field,
    profile_fields,
)


def _named(c: SegmentCondition, config: EngineConfig) -> Iterator[tuple[str, bool]]:
    """The hash fields (field, False) and field prefixes (prefix, True) a condition reads through RawView."""
    fields = profile_fields(config)
    if c.count is not None:
        yield count_field(c.count), False
    elif c.window is not None:
        if (c.window, c.span or "") in fields.window:
            yield fields.window[(c.window, c.span or "")], False
    elif c.affinity is not None:
        if c.affinity in fields.affinity:
            yield fields.affinity[c.affinity], True
    elif c.consent is not None:
        yield consent_field(c.consent), False
    elif c.metric == "monetary":
        yield MONETARY, False
    elif c.metric in ("cart_items", "cart_quantity"):
        yield CART_PREFIX, True
    elif c.metric == "session_pages":
        yield SESSION_LAST, False
        yield SESSION_PAGES, False
    elif c.metric in ("minutes_since_last_seen", "days_since_last_seen"):
        yield LAST_SEEN, False
    elif c.metric == "days_since_first_seen":
        yield FIRST_SEEN, False


def view_fields(config: EngineConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fields, field prefixes) of a profile hash that the configured segments read through :class:`RawView`,
    with what the segment tracker records (``S``) and stamps its messages with (last seen): a hash narrowed
    to these answers every condition as the whole hash does.

    >>> from engine.config import parse_config
    >>> config = parse_config({"segment": [{"id": "big", "all": [{"metric": "monetary", "min": 9}]},
    ...                                    {"id": "cart", "all": [{"metric": "cart_items", "min": 1}]}]})
    >>> view_fields(config)
    (('S', 'ls', 'm'), ('C:',))
    """
    named = {SEGMENTS_FIELD: False, LAST_SEEN: False}
    for s in config.segments:
        for c in (*s.all, *s.any, *s.none):
            named.update(_named(c, config))
    return tuple(f for f, p in named.items() if not p), tuple(f for f, p in named.items() if p)


class DecodedView:
    __slots__ = ("p",)

    def __init__(self, profile: Profile) -> None:
        self.p = profile

    def count(self, event_type: str) -> int:
        return self.p.counts.get(event_type, 0)

    def window(self, feature: str, span: str, now: float) -> int:
        return self.p.windows.get(feature, {}).get(span, 0)

    def monetary(self) -> float:
        return self.p.monetary

    def cart_items(self) -> int:
        return len(self.p.cart)

    def cart_quantity(self) -> int:
        return sum(self.p.cart.values())

    def session_pages(self, now: float) -> int:
        return int(self.p.session.get("pages") or 0) if self.p.session.get("active") else 0

    def last_seen(self) -> float | None:
        return self.p.last_seen

    def first_seen(self) -> float | None:
        return self.p.first_seen

    def affinity_share(self, feature: str, value: str) -> float:
        scores = self.p.affinities.get(feature)
        if not scores:
            return 0.0
        peak = max(scores.values())
        return scores.get(value, 0.0) / peak if peak > 0 else 0.0

    def consent(self, purpose: str) -> bool | None:
        return self.p.consent.get(purpose)


class RawView:
    """A profile hash as ``HGETALL`` returns it (strings), read lazily."""

    __slots__ = ("h", "config", "_cart", "_peaks")

    def __init__(self, h: Mapping[str, str], config: EngineConfig) -> None:
        self.h, self.config = h, config
        self._cart: list[int] | None = None
        self._peaks: dict[str, float] = {}

    def count(self, event_type: str) -> int:
        return int(self.h.get(count_field(event_type), 0))

    def window(self, feature: str, span: str, now: float) -> int:
        field = profile_fields(self.config).window.get((feature, span))
        if field is None:
            return 0
        width, slots = WINDOWS[span]
        return window_total(self.h.get(field), width, slots, now)

    def monetary(self) -> float:
        return float(self.h.get(MONETARY, 0.0))

    def _quantities(self) -> list[int]:
        if self._cart is None:
            n = len(CART_PREFIX)  # slicing beats str.startswith here: one scan per profile over ~100 fields
            self._cart = [int(v) for k, v in self.h.items() if k[:n] == CART_PREFIX]
        return self._cart

    def cart_items(self) -> int:
        return len(self._quantities())

    def cart_quantity(self) -> int:
        return sum(self._quantities())

    def session_pages(self, now: float) -> int:
        last = self.h.get(SESSION_LAST)
        if last is None or now - int(last) / 1000.0 > self.config.profile.session_timeout_minutes * 60.0:
            return 0
        return int(self.h.get(SESSION_PAGES, 0))

    def last_seen(self) -> float | None:
        v = self.h.get(LAST_SEEN)
        return int(v) / 1000.0 if v is not None else None

    def first_seen(self) -> float | None:
        v = self.h.get(FIRST_SEEN)
        return int(v) / 1000.0 if v is not None else None

    def affinity_share(self, feature: str, value: str) -> float:
        prefix = profile_fields(self.config).affinity.get(feature)
        if prefix is None:
            return 0.0
        peak = self._peaks.get(feature)
        if peak is None:
            n = len(prefix)
            peak = self._peaks[feature] = max((float(v) for k, v in self.h.items() if k[:n] == prefix), default=0.0)
        return float(self.h.get(prefix + value, 0.0)) / peak if peak > 0 else 0.0

    def consent(self, purpose: str) -> bool | None:
        v = self.h.get(consent_field(purpose))
        return None if v is None else v == "1"


View = DecodedView | RawView
