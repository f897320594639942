"""What every service handle of ``infra.local`` shares: the error, the protocols the tests and benchmarks
program against, free ports, readiness waits, and the ``atexit`` hook that closes handles still open."""

from __future__ import annotations

import atexit
import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any, Protocol, Self

LOOPBACK = "127.0.0.1"


class InfraError(RuntimeError):
    """A service could not be installed, started or stopped."""


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


def wait_ready(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise InfraError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.1)


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
