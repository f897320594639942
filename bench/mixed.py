"""Decision latency while the stream ingests, side by side with the same API idle.

A site that asks for a decision on every page view also publishes that page view, and the clicks and carts
around it: the API's Redis reads then share Redis (one thread) and the 2 cores with the worker's Lua writes.
``bench.latency`` measures the API alone; this measures it inside the deployment, in the freshness
benchmark's set-up (real ingest and learner processes, background producer), with the open-loop generator
of ``bench.latency``:

1. **under ingest**: the open loop offers ``rate`` decisions/s while the background producer publishes its
   events/s, for visitors of that background stream (the profiles being written are the ones read);
2. **idle**: the same API process, the same visitors and request bodies, once the background load stopped
   and the worker drained it.

The worker's applied rate during (1) says that ingest kept up while decisions were served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.common import log
from bench.latency import make_bodies, run_open_loop

#: decisions/s offered: the target rate of the latency benchmark
RATE = 1000.0


def background_visitors(visitors: int, n: int, anonymous_share: float = 0.4) -> tuple[list[str], list[str]]:
    """The ``n`` most active visitors of ``EventFactory.stream(..., visitors, prefix="bg-")``: its skew draws
    low indices most, spread over ids by the same multiplication. Returns (customers, anonymous ids).

    >>> import itertools
    >>> from bench.traffic import EventFactory
    >>> customers, anons = background_visitors(50_000, 3000)
    >>> wanted = set(customers) | set(anons)
    >>> keys = [k.decode() for k, _ in itertools.islice(EventFactory(1).stream(10**9, 50_000, prefix="bg-"), 20_000)]
    >>> len(wanted), round(sum(k in wanted for k in keys) / len(keys), 1)  # 6% of visitors, ~1/3 of events
    (3000, 0.3)
    """
    customers: list[str] = []
    anons: list[str] = []
    for i in range(n):
        v = (i * 2654435761) % visitors
        customer = (v % 100) >= anonymous_share * 100
        (customers if customer else anons).append(f"bg-{'c' if customer else 'a'}-{v}")
    return customers, anons


def measure(api_url: str, applied: Callable[[], int], *, visitors: int, quick: bool,
            stop_background: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """(1) then (2) above. ``applied()`` reads the worker's applied-events counter; ``stop_background()``
    stops the producer (called between the two runs) and returns its summary."""
    duration, warmup, grace = (1.0, 0.5, 1.0) if quick else (15.0, 3.0, 3.0)
    customers, anons = background_visitors(visitors, 500 if quick else 3000)
    bodies, mix = make_bodies(customers, anons, 4000)
    out: dict[str, Any] = {"rate": RATE, "duration_s": duration, "request_mix": mix}

    log(f"mixed: decide @ {RATE:.0f}/s while the worker ingests the background load")
    a0, t0 = applied(), time.monotonic()
    out["under_ingest"] = run_open_loop(api_url, bodies, RATE, duration, warmup, grace=grace)
    out["worker_applied_rate"] = round((applied() - a0) / (time.monotonic() - t0), 1)
    out["background"] = stop_background()

    drained, last = time.monotonic() + 30, -1
    while time.monotonic() < drained:  # let the worker finish the backlog: "idle" means no ingest at all
        now = applied()
        if now == last:
            break
        last = now
        time.sleep(0.5)
    log(f"mixed: decide @ {RATE:.0f}/s, same API and visitors, no ingest")
    out["idle"] = run_open_loop(api_url, bodies, RATE, duration, warmup, grace=grace)
    for name in ("under_ingest", "idle"):
        r = out[name]
        lat = r["latency_ms"]
        log(f"mixed: {name:12} achieved {r['achieved_rate']}/s  p50 {lat.get('p50')} p99 {lat.get('p99')} "
            f"p99.9 {lat.get('p99_9')} ms  errors {r['errors']} timeouts {r['timeouts']} degraded {r['degraded']}")
    return out
