"""Kafka and Redis in Docker (testcontainers), used by ``infra.local`` when a Docker engine answers: the same
pinned images as ``infra/docker-compose.yml``."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Any, Self

from infra.handles import Handle, InfraError, track, untrack, wait_until
from infra.probe import kafka_ready, redis_ping

#: Pinned Apache Kafka version (also in infra/pom.xml, infra/kafka.sh and infra/docker-compose.yml).
KAFKA_VERSION = "4.0.2"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
REDIS_IMAGE = "redis:7"


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



def use_docker(backend: str | None) -> bool:
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




class Container(Handle):
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
                track(self)
            else:
                self._container.get_wrapped_container().start()
            wait_until(self._ready, self.ready_timeout_s, what=f"{type(self).__name__} on port {self.port} to answer")
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
            untrack(self)


class KafkaDockerContainer(Container):
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


class RedisDockerContainer(Container):
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
