"""What every service handle of ``infra.local`` shares: the error, the protocols the tests and benchmarks
program against, free ports, the one polling helper, and the ``atexit`` hook that closes handles still open.

Standard library only: ``infra/probe.py`` runs as a plain script (from the shell scripts) and uses it too.

>>> wait_until(lambda: 3, timeout=1)
3
>>> wait_until(lambda: None, timeout=0.05, interval=0.01, what="nothing")
Traceback (most recent call last):
    ...
infra.handles.WaitTimeout: timed out after 0.05s waiting for nothing; last value: None
>>> len(set(free_ports(3))), 0 < free_port() < 65536
(3, True)
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, TypeVar

LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class InfraError(RuntimeError):
    """A service could not be installed, started or stopped."""


class WaitTimeout(InfraError):
    """:func:`wait_until` ran out of time; the message names what was awaited and the last value seen."""


class KafkaService(Protocol):
    @property
    def bootstrap(self) -> str: ...

    def start(self) -> Self: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def is_running(self) -> bool: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class RedisService(Protocol):
    host: str
    port: int

    @property
    def url(self) -> str: ...

    def start(self) -> Self: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def is_running(self) -> bool: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def free_ports(count: int = 1, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = LOOPBACK) -> int:
    """One TCP port that is free on ``host`` right now (another process may take it before it is bound)."""
    return free_ports(1, host)[0]


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value; at least one call, then
    every ``interval`` s until ``timeout`` s have passed: :class:`WaitTimeout`. An exception from
    ``predicate`` (e.g. "the process exited") propagates at once."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


class _Closable(Protocol):
    def close(self) -> None: ...


_open_lock = threading.Lock()
_open_handles: dict[int, _Closable] = {}


def track(handle: _Closable) -> None:
    with _open_lock:
        _open_handles[id(handle)] = handle


def untrack(handle: _Closable) -> None:
    with _open_lock:
        _open_handles.pop(id(handle), None)


@atexit.register
def _close_all() -> None:
    with _open_lock:
        handles = list(_open_handles.values())
    for handle in handles:
        with contextlib.suppress(Exception):
            handle.close()


class Handle:
    """Context-manager plumbing shared by all handles."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
