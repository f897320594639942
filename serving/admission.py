"""Admission control for ``/v1/decide``: how many decisions one API process runs at once.

Requests queue inside the event loop, where no queue is visible: every decision in progress waits for the
CPU of all the others, so past the process's capacity the latency of *all* of them grows without bound
(measured: 4,000 req/s offered, just past one process's capacity, p99 0.2-1.2 s). A decision refused
admission is *shed*: answered at once from the non-personalised ranking, without a Redis read
(``"degraded": true``), which costs a fraction of a full decision.

A fixed number of decisions in progress is right for one machine and one configuration only: the same
number is too many where a decision costs more CPU (more candidates, a slower core, a busy neighbour) and
too few where it costs less. :class:`LatencyLimit` adapts the number instead, from the latency of the
decisions it lets in, the way TCP adapts its congestion window (additive increase, multiplicative
decrease):

* a full decision that ended within the target latency raises the limit by ``1 / limit`` (about +1 per
  round of ``limit`` decisions) - but only while the limit is in use (at least half of it was taken when
  that decision started): a limit that nothing tests would grow without bound during calm hours and let a
  burst queue far past the target before the first late answer;
* one that ended late lowers it by ``decrease`` (x0.9), at most once per round: the decisions in progress
  when the process fell behind all end late together, and are one signal, not ``limit`` of them;
* the limit stays within ``[minimum, maximum]``: the minimum so that a short stall (a GC pause, a noisy
  neighbour) at ordinary load does not shed, the maximum as a backstop.

>>> limit = LatencyLimit(target_s=0.005, minimum=4, maximum=64, initial=16)
>>> limit.admit(in_flight=15), limit.admit(in_flight=16)
(True, False)
>>> for _ in range(40):             # an overloaded round after another: each cuts the limit once
...     for _ in range(int(limit.limit)):
...         _ = limit.update(latency_s=0.020, in_flight_at_start=int(limit.limit))
>>> limit.limit
4.0
>>> for _ in range(200):            # decisions in time, at a concurrency that uses the limit: it grows
...     _ = limit.update(latency_s=0.002, in_flight_at_start=int(limit.limit))
>>> round(limit.limit, 1)
20.4
>>> for _ in range(10_000):         # in time, but the limit unused (light load): it stays
...     _ = limit.update(latency_s=0.002, in_flight_at_start=1)
>>> round(limit.limit, 1)
20.4
"""

from __future__ import annotations


class LatencyLimit:
    """The number of decisions in progress one API process admits, adapted to a latency target (AIMD)."""

    def __init__(self, target_s: float, minimum: int = 16, maximum: int = 256, initial: int = 48,
                 decrease: float = 0.9) -> None:
        if target_s <= 0:
            raise ValueError(f"target_s must be > 0, got {target_s}")
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError(f"need 1 <= minimum <= initial <= maximum, got {minimum}, {initial}, {maximum}")
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), got {decrease}")
        self.target_s = target_s
        self.minimum = float(minimum)
        self.maximum = float(maximum)
        self.decrease = decrease
        #: decisions in progress admitted at most; fractional, so that the additive increase accumulates
        self.limit = float(initial)
        self._since_cut = 0  # decisions ended since the limit was last lowered

    def admit(self, in_flight: int) -> bool:
        """May a new decision run in full, with ``in_flight`` decisions already in progress?"""
        return in_flight < self.limit

    def update(self, latency_s: float, in_flight_at_start: int) -> bool:
        """Learn from one full decision: how long it took, and how many were in progress when it started
        (itself excluded). Returns whether the limit was lowered."""
        self._since_cut += 1
        if latency_s > self.target_s:
            if self._since_cut >= self.limit:
                self.limit = max(self.minimum, self.limit * self.decrease)
                self._since_cut = 0
                return True
        elif 2 * (in_flight_at_start + 1) >= self.limit:
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)
        return False
