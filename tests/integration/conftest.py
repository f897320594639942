"""Real Kafka and Redis for integration tests.

testcontainers when a Docker engine answers; otherwise the local processes that ``infra/`` installs
(Kafka jars from Maven Central, Debian's redis-server). With ``CI=true`` a broker that cannot be
started fails the run: these tests never skip for missing infrastructure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import local

# headless Chromium (one per module) and a fresh context per test (a new visitor): browser_support.py
from tests.integration.browser_support import browser, browser_context  # noqa: F401
from tests.support import (
    Stack,
    api_process,
    free_port,
    keys_env,
    start_or_fail,
    wait_http_ready,
    with_key,
    worker_process,
)


@pytest.fixture(scope="session")
def kafka() -> Iterator[local.KafkaService]:
    svc = start_or_fail("Kafka", local.start_kafka)
    yield svc
    svc.close()


class _ClusterService:
    """A Redis Cluster where the suite takes a Redis (``REDIS_CLUSTER=1``: ``make test-cluster``): ``url`` is
    its seed nodes, as the processes and ``tests.support.with_store`` take them with ``REDIS_CLUSTER``."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.url = cluster.seeds_url
        self.host, self.port = cluster.host, cluster.ports[0]

    def close(self) -> None:
        self.cluster.close()


def _start_redis() -> Any:
    if os.environ.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes", "on"):
        from infra.cluster import start_redis_cluster

        return _ClusterService(start_redis_cluster())
    return local.start_redis()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[local.RedisService]:
    """Redis; with ``REDIS_CLUSTER=1`` in the environment, a 3-master Redis Cluster (``infra/cluster.py``) that
    the worker and API processes reach as one (they inherit the variable)."""
    svc = start_or_fail("Redis", _start_redis)
    yield svc
    svc.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: local.RedisService) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def stack(kafka: local.KafkaService, redis_server: local.RedisService) -> Stack:
    s = Stack(kafka.bootstrap, redis_server.url)
    s.create_topics()
    return s


@pytest.fixture(scope="module")
def worker(stack: Stack, log_dir: Path) -> Iterator[object]:
    proc = worker_process(stack, log_dir, name=f"worker-{stack.tag}").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(stack: Stack, log_dir: Path) -> Iterator[str]:
    """The API's URL with the admin test key as HTTP Basic user name (``http://<key>:@127.0.0.1:<port>``),
    which httpx sends on every call (overwriting an ``Authorization`` header given with the call: for other
    callers use ``tests.support.without_key(api)`` with ``headers=``, or ``with_key(api, PUBLIC)``)."""
    port = free_port()
    proc = api_process(stack, log_dir, port, **keys_env()).start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base, proc)
    yield with_key(base)
    proc.stop()
