"""Tests against a Redis Cluster (three masters, three replicas) and a 3-broker Kafka on loopback
(``infra/cluster.py``): ``make test-cluster``. Marked ``cluster``, which ``make test`` leaves out: starting
nine servers and killing some of them is a campaign of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.cluster import KafkaCluster, RedisCluster, start_kafka_cluster, start_redis_cluster
from tests.support import start_or_fail


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
