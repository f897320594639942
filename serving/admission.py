"""Admission control for ``/v1/decide``: how many decisions one API process runs at once.

Requests queue inside the event loop, where no queue is visible: every decision in progress waits for the
CPU of all the others, so past the process's capacity the latency of *all* of them grows without bound.
A decision refused
admission is *shed*: answered at once from the non-personalised ranking, without a Redis read
(``"degraded": true``), which costs a fraction of a full decision.

A fixed number of decisions in progress is right for one machine and one configuration only: the same
number is too many where a decision costs more CPU (more candidates, a slower core, a busy neighbour) and
too few where it costs less. :class:`LatencyLimit` lowers the number while the decisions it lets in are
late, the way TCP adapts its congestion window (additive increase, multiplicative decrease), and judges
"late" the way CoDel judges a queue: by the *fastest* decision of a round (``limit`` decisions ended), not
by any one of them.

* A round whose fastest decision still ended past the target latency means a standing queue: the process
  cannot keep up, so the limit is lowered by ``decrease`` (x0.9).
* Any other round raises it by one, up to ``maximum``. A short stall (a GC pause, a noisy neighbour) makes
  some decisions of a round late but not all of them: nothing is cut, and nothing is shed at ordinary load
  that a fixed limit of ``maximum`` would not shed.
* ``minimum`` keeps some full decisions flowing whatever happens.

Requests also wait *before* the process reads them: in a proxy for a free upstream connection, in the
socket, behind the other requests the event loop is parsing. None of that shows in the process. A proxy in
front can stamp when it received the request (``X-Request-Start``: nginx ``"t=${msec}"``, Heroku's router,
HAProxy); :func:`queued_seconds` reads the stamp, and the latency the limit judges is then the whole time
from the proxy to the answer.

Measured side by side with a fixed limit and with no shedding: ``python -m bench.admission``.

>>> limit = LatencyLimit(target_s=0.005, minimum=4, maximum=48)
>>> limit.admit(in_flight=47), limit.admit(in_flight=48)
(True, False)
>>> for _ in range(100):            # every decision late, round after round: a standing queue
...     _ = limit.update(latency_s=0.020)
>>> round(limit.limit, 1)
38.9
>>> for _ in range(40):             # a stall: a few late decisions among prompt ones, nothing is cut
...     _ = limit.update(latency_s=0.030 if _ % 4 == 0 else 0.002)
>>> round(limit.limit, 1)
39.9
"""

from __future__ import annotations

import math


class LatencyLimit:
    """The number of decisions in progress one API process admits, lowered while a round's fastest decision
    is late (AIMD)."""

    def __init__(self, target_s: float, minimum: int = 4, maximum: int = 48, decrease: float = 0.9) -> None:
        if target_s <= 0:
            raise ValueError(f"target_s must be > 0, got {target_s}")
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), got {decrease}")
        self.target_s = target_s
        self.minimum = float(minimum)
        self.maximum = float(maximum)
        self.decrease = decrease
        #: decisions in progress admitted at most (it starts at the maximum: a fixed limit, until overloaded)
        self.limit = float(maximum)
        self._round_n = 0  # decisions ended in this round
        self._round_fastest = math.inf  # the shortest latency among them

    def admit(self, in_flight: int) -> bool:
        """May a new decision run in full, with ``in_flight`` decisions already in progress?"""
        return in_flight < self.limit

    def update(self, latency_s: float) -> bool:
        """Learn from one full decision's latency. Returns whether the limit was lowered."""
        if latency_s < self._round_fastest:
            self._round_fastest = latency_s
        self._round_n += 1
        if self._round_n < self.limit:
            return False
        late = self._round_fastest > self.target_s
        self._round_n, self._round_fastest = 0, math.inf
        if late:
            self.limit = max(self.minimum, self.limit * self.decrease)
            return True
        self.limit = min(self.maximum, self.limit + 1.0)
        return False


#: A stamp further than this from the local clock is another clock's (or garbage), not a wait.
_MAX_SKEW_S = 60.0


def queued_seconds(stamp: bytes, now: float) -> float | None:
    """How long a request waited before this process read it, from the time a proxy received it.

    ``stamp`` is an ``X-Request-Start`` value: ``t=<time since the epoch>`` or the bare number, in seconds
    (nginx ``t=${msec}``: ``t=1700000000.123``), milliseconds (Heroku), microseconds (New Relic's
    ``t=${usec}``) or nanoseconds, told apart by magnitude. A stamp a little ahead of ``now`` (the proxy's
    clock runs ahead) is a wait of 0; an unreadable one, or one more than a minute away, is None.

    >>> queued_seconds(b"t=1700000000.123", now=1700000000.125)
    0.002
    >>> [round(queued_seconds(s, now=1700000000.125) * 1000, 3)
    ...  for s in (b"1700000000123", b"t=1700000000123000", b"1700000000123000000")]
    [2.0, 2.0, 2.0]
    >>> queued_seconds(b"t=1700000000.200", now=1700000000.125), queued_seconds(b"soon", now=1.0)
    (0.0, None)
    >>> queued_seconds(b"t=1600000000.0", now=1700000000.0) is None
    True
    """
    if stamp[:2] == b"t=":
        stamp = stamp[2:]
    try:
        t = float(stamp)
    except ValueError:
        return None
    if t >= 1e17:
        t /= 1e9
    elif t >= 1e14:
        t /= 1e6
    elif t >= 1e11:
        t /= 1e3
    waited = now - t
    if not -_MAX_SKEW_S < waited < _MAX_SKEW_S:
        return None
    return round(waited, 6) if waited > 0 else 0.0  # epoch seconds in a double: ~0.2 us resolution
