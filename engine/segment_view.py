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

from collections.abc import Mapping

from engine.config import EngineConfig
from engine.config.model import WINDOWS
from engine.features import Profile, window_total
from engine.layout import (
    CART_PREFIX,
    FIRST_SEEN,
    LAST_SEEN,
    MONETARY,
    SESSION_LAST,
    SESSION_PAGES,
    consent_field,
    count_field,
    profile_fields,
)


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
