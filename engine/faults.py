"""Which Redis errors are the infrastructure's (wait and retry) and which are one event's (dead-letter it).

The stream pauses on the first kind and isolates the second: a batch must never stop for good on one bad
value, and an event must never be dead-lettered because Redis was away for a moment.

>>> from redis.exceptions import ConnectionError, OutOfMemoryError, ResponseError
>>> is_infrastructure(ConnectionError("Connection refused")), is_infrastructure(OutOfMemoryError("OOM ..."))
(True, True)
>>> is_infrastructure(ResponseError("ERR user_script:12: attempt to perform arithmetic on a nil value"))
False
>>> is_infrastructure(ResponseError("BUSY Redis is busy running a script"))
True
"""

from __future__ import annotations

import asyncio

from redis.exceptions import (
    AskError,
    ClusterError,
    ConnectionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

#: Error-reply prefixes that say the server cannot take writes now (not that the command was wrong).
INFRA_REPLY_PREFIXES = ("OOM", "BUSY", "LOADING", "MISCONF", "READONLY", "NOSCRIPT", "MASTERDOWN",
                        "CLUSTERDOWN", "TRYAGAIN", "NOREPLICAS")


def is_infrastructure(exc: BaseException) -> bool:
    """True for an error that waiting can cure: Redis unreachable, out of memory, loading, scripts flushed."""
    if isinstance(exc, ConnectionError | TimeoutError | OSError | asyncio.TimeoutError | NoScriptError
                  | OutOfMemoryError | ReadOnlyError):
        return True
    # a Redis Cluster mid-failover: a slot moved (MOVED/ASK), the cluster is down, slots uncovered, TRYAGAIN (not
    # CROSSSLOT: a command's keys in several slots is the caller's bug)
    if isinstance(exc, AskError | TryAgainError | ClusterError | SlotNotCoveredError):
        return True
    if isinstance(exc, ResponseError):
        msg = str(exc).lstrip()
        # an error raised by redis.call inside a script keeps its code after "ERR Error running script"
        return msg.startswith(INFRA_REPLY_PREFIXES) or any(f" {p} " in msg[:120] for p in ("OOM", "BUSY"))
    return False
