"""Real Kafka and Redis for tests, benchmarks and the demo.

``start_kafka()`` / ``start_redis()`` return a started, ready service handle:

* when a Docker engine answers (``docker info`` succeeds) they use testcontainers with the same pinned
  images as ``infra/docker-compose.yml`` (``apache/kafka:<KAFKA_VERSION>``, ``redis:7``);
* otherwise they run ``infra/kafka.sh`` / ``infra/redis.sh`` on free loopback ports, each instance with
  its own throw-away data directory (removed by ``close()``).

``PULSE_INFRA_BACKEND=local|docker|auto`` (default ``auto``) forces one or the other.

Every handle has ``start()`` (idempotent), ``stop()`` (keeps data, so ``start()`` again resumes on the
same port), ``close()`` (stop and delete its data) and is a context manager. Kafka handles expose
``bootstrap`` (``"host:port"``); Redis handles expose ``url`` (``"redis://host:port/0"``), ``host`` and
``port``. Handles still open at interpreter exit are closed by an ``atexit`` hook.

    with start_kafka() as kafka, start_redis() as redis:
        asyncio.run(ensure_topics(kafka.bootstrap, 8))
        ...

``python -m infra.local up|down|status`` manages the default instances (Kafka on 9092, Redis on 6379)
and creates the topics, for the demo.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from infra.probe import kafka_ready, redis_ping

INFRA_DIR = Path(__file__).resolve().parent
KAFKA_SCRIPT = INFRA_DIR / "kafka.sh"
REDIS_SCRIPT = INFRA_DIR / "redis.sh"

#: Pinned Apache Kafka version (also in infra/pom.xml, infra/kafka.sh and infra/docker-compose.yml).
KAFKA_VERSION = "4.0.2"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
REDIS_IMAGE = "redis:7"
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


class RedisService(Protocol):
    host: str
    port: int

    @property
    def url(self) -> str: ...

    def start(self) -> Self: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def is_running(self) -> bool: ...


# --------------------------------------------------------------------------------------------------
# helpers


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


_docker_lock = threading.Lock()
_docker_state: bool | None = None


def docker_available() -> bool:
    """True when a Docker engine answers ``docker info`` (cached for the process)."""
    global _docker_state
    with _docker_lock:
        if _docker_state is None:
            if shutil.which("docker") is None:
                _docker_state = False
            else:
                try:
                    result = subprocess.run(
                        ["docker", "info"], capture_output=True, timeout=20, check=False, stdin=subprocess.DEVNULL
                    )
                    _docker_state = result.returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    _docker_state = False
        return _docker_state


def _use_docker(backend: str | None) -> bool:
    choice = (backend or os.environ.get("PULSE_INFRA_BACKEND", "auto")).lower()
    if choice == "local":
        return False
    if choice == "docker":
        if not docker_available():
            raise InfraError("PULSE_INFRA_BACKEND=docker but no Docker engine answers `docker info`")
        return True
    if choice != "auto":
        raise InfraError(f"PULSE_INFRA_BACKEND must be auto, local or docker, not {choice!r}")
    return docker_available()


class _Closable(Protocol):
    def close(self) -> None: ...


_open_lock = threading.Lock()
_open_handles: dict[int, _Closable] = {}


def _track(handle: _Closable) -> None:
    with _open_lock:
        _open_handles[id(handle)] = handle


def _untrack(handle: _Closable) -> None:
    with _open_lock:
        _open_handles.pop(id(handle), None)


@atexit.register
def _close_all() -> None:
    with _open_lock:
        handles = list(_open_handles.values())
    for handle in handles:
        with contextlib.suppress(Exception):
            handle.close()


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise InfraError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.1)


class _Handle:
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


# --------------------------------------------------------------------------------------------------
# local processes (infra/kafka.sh, infra/redis.sh)


class _ScriptProcess(_Handle):
    script: Path
    name: str

    def __init__(self, env: dict[str, str], data_dir: Path, owns_data_dir: bool) -> None:
        self.data_dir = data_dir
        self._owns_data_dir = owns_data_dir
        self._env = {**os.environ, "PYTHON": sys.executable, **env}
        self._lock = threading.RLock()
        self._closed = False

    def _run(self, command: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["bash", str(self.script), command],
                env=self._env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise InfraError(f"{self.script.name} {command} timed out after {timeout:.0f}s") from exc

    def _run_checked(self, command: str) -> str:
        result = self._run(command)
        if result.returncode != 0:
            raise InfraError(
                f"{self.script.name} {command} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result.stderr

    def start(self) -> Self:
        with self._lock:
            if self._closed:
                raise InfraError(f"{self.name} handle was closed; start a new one")
            self._run_checked("start")
            _track(self)
            return self

    def stop(self) -> None:
        with self._lock:
            self._run_checked("stop")

    def is_running(self) -> bool:
        return self._run("status", timeout=30).returncode == 0

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self.stop()
            finally:
                self._closed = True
                _untrack(self)
                if self._owns_data_dir:
                    shutil.rmtree(self.data_dir, ignore_errors=True)


class KafkaProcess(_ScriptProcess):
    """A single-node KRaft broker started by ``infra/kafka.sh`` with its own data directory."""

    script = KAFKA_SCRIPT
    name = "kafka"

    def __init__(
        self,
        port: int,
        controller_port: int,
        data_dir: Path | None = None,
        *,
        partitions: int | None = None,
        host: str = LOOPBACK,
    ) -> None:
        owns = data_dir is None
        data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix=f"pulse-kafka-{port}-"))
        self.host = host
        self.port = port
        self.controller_port = controller_port
        super().__init__(
            {
                "KAFKA_HOST": host,
                "KAFKA_PORT": str(port),
                "KAFKA_CONTROLLER_PORT": str(controller_port),
                "KAFKA_DATA_DIR": str(data),
                "KAFKA_LOG_FILE": str(data / "kafka.log"),
                "KAFKA_NUM_PARTITIONS": str(partitions or int(os.environ.get("EVENTS_PARTITIONS", "8"))),
            },
            data,
            owns,
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    def __repr__(self) -> str:
        return f"KafkaProcess(bootstrap={self.bootstrap!r}, data_dir={str(self.data_dir)!r})"


class RedisProcess(_ScriptProcess):
    """A ``redis-server`` started by ``infra/redis.sh``; ``stop()`` then ``start()`` reuses port and data."""

    script = REDIS_SCRIPT
    name = "redis"

    def __init__(self, port: int, data_dir: Path | None = None, *, host: str = LOOPBACK) -> None:
        owns = data_dir is None
        data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix=f"pulse-redis-{port}-"))
        self.host = host
        self.port = port
        super().__init__({"REDIS_HOST": host, "REDIS_PORT": str(port), "REDIS_DATA_DIR": str(data)}, data, owns)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def __repr__(self) -> str:
        return f"RedisProcess(url={self.url!r}, data_dir={str(self.data_dir)!r})"


# --------------------------------------------------------------------------------------------------
# Docker (testcontainers)


class _Container(_Handle):
    """A testcontainers container that ``stop()``/``start()`` pauses and resumes (same ports, same data) and
    ``close()`` removes. Subclasses create ``self._container`` and say when the service answers."""

    _container: Any
    port: int
    ready_timeout_s: float
    stop_timeout_s: int

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._started = False

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        with self._lock:
            if not self._started:
                self._container.start()
                self._started = True
                _track(self)
            else:
                self._container.get_wrapped_container().start()
            _wait(self._ready, self.ready_timeout_s, f"{type(self).__name__} on port {self.port}")
            return self

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._container.get_wrapped_container().stop(timeout=self.stop_timeout_s)

    def is_running(self) -> bool:
        return self._started and self._ready()

    def close(self) -> None:
        with self._lock:
            if self._started:
                self._container.stop()
                self._started = False
            _untrack(self)


class KafkaDockerContainer(_Container):
    """``apache/kafka:<KAFKA_VERSION>`` in KRaft mode, published on a fixed host port."""

    ready_timeout_s, stop_timeout_s = 90.0, 30

    def __init__(self, port: int, *, partitions: int | None = None, image: str = KAFKA_IMAGE) -> None:
        from testcontainers.core.container import DockerContainer

        super().__init__()
        self.port = port
        self._container = DockerContainer(image)
        self.host = self._container.get_docker_client().host()
        n = str(partitions or int(os.environ.get("EVENTS_PARTITIONS", "8")))
        # The container listens on the same port number it is published on, so the advertised
        # address is right both inside and outside the container.
        self._container.with_bind_ports(port, port).with_envs(
            CLUSTER_ID="cHVsc2UtdGVzdC1jbHVzdA",
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS=f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://127.0.0.1:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{self.host}:{port}",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_INTER_BROKER_LISTENER_NAME="PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@127.0.0.1:9093",
            KAFKA_NUM_PARTITIONS=n,
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS="1000",
            KAFKA_HEAP_OPTS="-Xms256m -Xmx512m",
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _ready(self) -> bool:
        return kafka_ready(self.bootstrap)


class RedisDockerContainer(_Container):
    """``redis:7`` with AOF, published on a fixed host port so ``stop()``/``start()`` keeps the URL."""

    ready_timeout_s, stop_timeout_s = 30.0, 10

    def __init__(self, port: int, *, image: str = REDIS_IMAGE) -> None:
        from testcontainers.core.container import DockerContainer

        super().__init__()
        self.port = port
        self._container = DockerContainer(image)
        self.host = self._container.get_docker_client().host()
        self._container.with_bind_ports(6379, port).with_command(
            "redis-server --appendonly yes --appendfsync everysec --maxmemory-policy noeviction"
        )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _ready(self) -> bool:
        return redis_ping(f"{self.host}:{self.port}")


# --------------------------------------------------------------------------------------------------
# entry points


def start_kafka(
    port: int | None = None, *, partitions: int | None = None, backend: str | None = None, attempts: int = 3
) -> KafkaService:
    """Start a ready Kafka broker; ``port=None`` picks free ports (retrying if one gets taken)."""
    tries = 1 if port is not None else max(1, attempts)
    last: Exception | None = None
    for _ in range(tries):
        if port is not None:
            broker_port, controller_port = port, free_ports(1)[0]
        else:
            broker_port, controller_port = free_ports(2)
        handle: KafkaService
        if _use_docker(backend):
            handle = KafkaDockerContainer(broker_port, partitions=partitions)
        else:
            handle = KafkaProcess(broker_port, controller_port, partitions=partitions)
        try:
            return handle.start()
        except Exception as exc:  # retried with other ports, re-raised below
            last = exc
            with contextlib.suppress(Exception):
                handle.close()
    assert last is not None
    raise last


def start_redis(port: int | None = None, *, backend: str | None = None, attempts: int = 3) -> RedisService:
    """Start a ready Redis server; ``port=None`` picks a free port (retrying if it gets taken)."""
    tries = 1 if port is not None else max(1, attempts)
    last: Exception | None = None
    for _ in range(tries):
        chosen = port if port is not None else free_ports(1)[0]
        handle: RedisService
        handle = RedisDockerContainer(chosen) if _use_docker(backend) else RedisProcess(chosen)
        try:
            return handle.start()
        except Exception as exc:  # retried with another port, re-raised below
            last = exc
            with contextlib.suppress(Exception):
                handle.close()
    assert last is not None
    raise last


def _script(script: Path, command: str) -> int:
    return subprocess.run(["bash", str(script), command], check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """``up``: start Kafka (KAFKA_PORT, default 9092) and Redis (REDIS_PORT, default 6379) from the
    scripts and create the topics; ``down``: stop both; ``status``: report both."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "up":
        for script in (KAFKA_SCRIPT, REDIS_SCRIPT):
            if (rc := _script(script, "start")) != 0:
                return rc
        from infra.topics import main as topics_main

        bootstrap = f"{os.environ.get('KAFKA_HOST', LOOPBACK)}:{os.environ.get('KAFKA_PORT', '9092')}"
        return topics_main(["--bootstrap", bootstrap])
    if command == "down":
        return max(_script(KAFKA_SCRIPT, "stop"), _script(REDIS_SCRIPT, "stop"))
    if command == "status":
        return max(_script(KAFKA_SCRIPT, "status"), _script(REDIS_SCRIPT, "status"))
    print("usage: python -m infra.local {up|down|status}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
