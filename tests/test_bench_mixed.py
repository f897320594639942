"""The mixed-load benchmark asks decisions for the visitors its background stream writes (bench/mixed.py)."""

from __future__ import annotations

import itertools
from collections import Counter

from bench.mixed import background_visitors
from bench.traffic import EventFactory


def test_the_visitors_asked_for_are_the_background_streams_most_active() -> None:
    visitors = 50_000
    customers, anons = background_visitors(visitors, 3000)
    keys = Counter(k.decode() for k, _ in itertools.islice(
        EventFactory(3).stream(10**9, visitors, prefix="bg-"), 30_000))
    top = {k for k, _ in keys.most_common(200)}
    chosen = set(customers) | set(anons)
    assert len(chosen) == 3000
    assert top <= chosen  # the busiest visitors of the stream are all asked for
    # customers and anonymous visitors as the stream keys them (customer_id vs anonymous_id)
    assert all(c.startswith("bg-c-") for c in customers) and all(a.startswith("bg-a-") for a in anons)
    assert 0.5 < len(customers) / 3000 < 0.7  # the stream's 40% anonymous share
