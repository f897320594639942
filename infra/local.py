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

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from engine.kafka_client import kafka_client_kwargs
from infra.containers import (
    KAFKA_IMAGE,
    KAFKA_VERSION,
    REDIS_IMAGE,
    Container,
    KafkaDockerContainer,
    RedisDockerContainer,
    docker_available,
    use_docker,
)
from infra.handles import (
    LOOPBACK,
    Handle,
    InfraError,
    KafkaService,
    RedisService,
    free_ports,
    track,
    untrack,
)

__all__ = [
    "KAFKA_IMAGE", "KAFKA_VERSION", "LOOPBACK", "REDIS_IMAGE", "InfraError", "KafkaDockerContainer",
    "KafkaProcess", "KafkaService", "RedisDockerContainer", "RedisProcess", "RedisService", "Container",
    "docker_available", "free_ports", "main", "start_kafka", "start_redis",
]

INFRA_DIR = Path(__file__).resolve().parent
KAFKA_SCRIPT = INFRA_DIR / "kafka.sh"
REDIS_SCRIPT = INFRA_DIR / "redis.sh"


# --------------------------------------------------------------------------------------------------
# local processes (infra/kafka.sh, infra/redis.sh)


class _ScriptProcess(Handle):
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
            track(self)
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
                untrack(self)
                if self._owns_data_dir:
                    shutil.rmtree(self.data_dir, ignore_errors=True)


class KafkaProcess(_ScriptProcess):
    """A single-node KRaft broker started by ``infra/kafka.sh`` with its own data directory.

    ``sasl_users`` (name -> password; the first is the broker's own and a super user): the client listener
    takes SASL/SCRAM (SHA-256 and SHA-512) only; :meth:`client_kwargs` / :meth:`client_env` connect as a user.
    """

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
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        owns = data_dir is None
        self.sasl_users = dict(sasl_users or {})
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
                "KAFKA_SASL_USERS": ",".join(f"{u}:{p}" for u, p in self.sasl_users.items()),
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

    def client_env(self, user: str | None = None, mechanism: str = "SCRAM-SHA-256") -> dict[str, str]:
        """The ``KAFKA_*`` variables of a process that connects as ``user`` (PLAINTEXT without SASL users)."""
        if not self.sasl_users:
            return {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
        name = user or next(iter(self.sasl_users))
        return {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": mechanism,
                "KAFKA_SASL_USERNAME": name, "KAFKA_SASL_PASSWORD": self.sasl_users[name]}

    def client_kwargs(self, user: str | None = None) -> dict[str, Any]:
        """aiokafka keyword arguments of a client connecting as ``user``."""
        return kafka_client_kwargs(self.client_env(user))

    def __repr__(self) -> str:
        return f"KafkaProcess(bootstrap={self.bootstrap!r}, data_dir={str(self.data_dir)!r})"


class RedisProcess(_ScriptProcess):
    """A ``redis-server`` started by ``infra/redis.sh``; ``stop()`` then ``start()`` reuses port and data.

    ``acl_passwords`` (user -> password, for every user of ``infra/redis/users.acl.template``: admin, api,
    worker, learner): the default user is off and each user gets its service's rights; ``url`` is then the
    admin's and :meth:`url_for` a service's."""

    script = REDIS_SCRIPT
    name = "redis"

    def __init__(self, port: int, data_dir: Path | None = None, *, host: str = LOOPBACK,
                 acl_passwords: Mapping[str, str] | None = None) -> None:
        owns = data_dir is None
        data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix=f"pulse-redis-{port}-"))
        self.host = host
        self.port = port
        self.acl_passwords = dict(acl_passwords or {})
        env = {"REDIS_HOST": host, "REDIS_PORT": str(port), "REDIS_DATA_DIR": str(data)}
        if self.acl_passwords:
            env["REDIS_ACL"] = "1"
            env.update({f"REDIS_{user.upper()}_PASSWORD": pw for user, pw in self.acl_passwords.items()})
        super().__init__(env, data, owns)

    @property
    def url(self) -> str:
        return self.url_for("admin") if self.acl_passwords else f"redis://{self.host}:{self.port}/0"

    def url_for(self, user: str) -> str:
        """``redis://<user>:<password>@host:port/0`` of an ACL user."""
        return f"redis://{user}:{quote(self.acl_passwords[user], safe='')}@{self.host}:{self.port}/0"

    def __repr__(self) -> str:
        return f"RedisProcess(url={self.url!r}, data_dir={str(self.data_dir)!r})"


# --------------------------------------------------------------------------------------------------
# entry points


def start_kafka(
    port: int | None = None, *, partitions: int | None = None, backend: str | None = None, attempts: int = 3,
    sasl_users: Mapping[str, str] | None = None,
) -> KafkaService:
    """Start a ready Kafka broker; ``port=None`` picks free ports (retrying if one gets taken); ``sasl_users``:
    a SASL/SCRAM listener with these users (local processes only)."""
    if sasl_users and use_docker(backend):
        raise InfraError("SASL users are supported by the local broker only (backend='local')")
    tries = 1 if port is not None else max(1, attempts)
    last: Exception | None = None
    for _ in range(tries):
        if port is not None:
            broker_port, controller_port = port, free_ports(1)[0]
        else:
            broker_port, controller_port = free_ports(2)
        handle: KafkaService
        if use_docker(backend):
            handle = KafkaDockerContainer(broker_port, partitions=partitions)
        else:
            handle = KafkaProcess(broker_port, controller_port, partitions=partitions, sasl_users=sasl_users)
        try:
            return handle.start()
        except Exception as exc:  # retried with other ports, re-raised below
            last = exc
            with contextlib.suppress(Exception):
                handle.close()
    assert last is not None
    raise last


def start_redis(port: int | None = None, *, backend: str | None = None, attempts: int = 3,
                acl_passwords: Mapping[str, str] | None = None) -> RedisService:
    """Start a ready Redis server; ``port=None`` picks a free port (retrying if it gets taken); ``acl_passwords``:
    the ACL users of infra/redis/users.acl.template (local processes only)."""
    if acl_passwords and use_docker(backend):
        raise InfraError("ACL users are supported by the local Redis only (backend='local')")
    tries = 1 if port is not None else max(1, attempts)
    last: Exception | None = None
    for _ in range(tries):
        chosen = port if port is not None else free_ports(1)[0]
        handle: RedisService
        handle = (RedisDockerContainer(chosen) if use_docker(backend)
                  else RedisProcess(chosen, acl_passwords=acl_passwords))
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
