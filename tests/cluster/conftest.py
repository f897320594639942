"""Tests against a Redis Cluster (three masters, three replicas) and a 3-broker Kafka on loopback
(``infra/cluster.py``): ``make test-cluster``. Marked ``cluster``, which ``make test`` leaves out: starting
nine servers and killing some of them is a campaign of its own."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.kafka_client import kafka_client_kwargs
from infra.cluster import KafkaCluster, RedisCluster, start_kafka_cluster, start_redis_cluster
from infra.topics import ensure_topics
from tests.support import (
    ManagedProcess,
    Stack,
    api_process,
    free_port,
    keys_env,
    start_or_fail,
    wait_http_ready,
    with_key,
    worker_process,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    svc = start_or_fail("Redis Cluster", start_redis_cluster)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[KafkaCluster]:
    svc = start_or_fail("Kafka cluster", start_kafka_cluster)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def cluster_env(redis_cluster: RedisCluster) -> Iterator[str]:
    """``REDIS_CLUSTER=1`` in this process too (the tests' own clients, ``tests.support.with_store``); the
    cluster's seed nodes URL."""
    before = os.environ.get("REDIS_CLUSTER")
    os.environ["REDIS_CLUSTER"] = "1"
    yield redis_cluster.seeds_url
    if before is None:
        del os.environ["REDIS_CLUSTER"]
    else:
        os.environ["REDIS_CLUSTER"] = before


@pytest.fixture(scope="module")
def cstack(kafka_cluster: KafkaCluster, cluster_env: str) -> Stack:
    """One pipeline's topics on the 3-broker Kafka, replicated 3 times (``min.insync.replicas`` 2)."""
    s = Stack(kafka_cluster.bootstrap, cluster_env)
    asyncio.run(ensure_topics(s.bootstrap, s.partitions, [s.events_topic, s.dlq_topic, s.decisions_topic,
                                                          s.learning_topic, s.segments_topic, s.erasures_topic],
                              replication_factor=3, kafka_kwargs=kafka_client_kwargs({})))
    return s


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster-logs")


@pytest.fixture(scope="module")
def cworker(cstack: Stack, log_dir: Path) -> Iterator[ManagedProcess]:
    proc = worker_process(cstack, log_dir, name=f"worker-{cstack.tag}", REDIS_CLUSTER="1").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def capi(cstack: Stack, log_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = api_process(cstack, log_dir, port, REDIS_CLUSTER="1", **keys_env()).start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base, proc, timeout=60)
    yield with_key(base)
    proc.stop()
