"""Rules of the whole test run (unit tests, doctests and integration tests).

* The integration tests are exactly the tests under ``tests/integration/``: marked ``integration`` here, by
  directory, so the marker cannot be forgotten; the marker anywhere else is an error.
* No other test or doctest may start Redis, Kafka or the worker and API processes (but the cluster tests,
  ``tests/cluster/``, marked ``cluster`` and left out of ``make test``): ``make unit`` runs on a machine
  without them. Trying fails the test (``pytest.fail`` is not an ``Exception``, so the
  skip-when-missing helpers cannot turn it into a skip).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent / "tests" / "integration"
CLUSTER_DIR = Path(__file__).resolve().parent / "tests" / "cluster"


def is_integration(path: Path) -> bool:
    return INTEGRATION_DIR in Path(path).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = []
    for item in items:
        if is_integration(item.path):
            item.add_marker(pytest.mark.integration)
        elif item.get_closest_marker("integration"):
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "marked integration outside tests/integration/ (move them there): " + ", ".join(misplaced))


@pytest.fixture(autouse=True)
def _no_services_outside_integration(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if is_integration(request.node.path) or CLUSTER_DIR in Path(request.node.path).resolve().parents:
        yield
        return
    from infra import containers, local, processes

    def refuse(what: str) -> Any:
        def start(*args: Any, **kwargs: Any) -> Any:
            pytest.fail(f"{request.node.nodeid} tried to start {what}: tests that need Redis, Kafka or the "
                        "worker and API processes live under tests/integration/", pytrace=False)
        return start

    monkeypatch.setattr(local, "start_kafka", refuse("Kafka"))
    monkeypatch.setattr(local, "start_redis", refuse("Redis"))
    # below the start functions too: handles built directly, or start functions imported by name
    monkeypatch.setattr(local._ScriptProcess, "_run", refuse("a local service script (infra/*.sh)"))
    monkeypatch.setattr(containers.KafkaDockerContainer, "__init__", refuse("a Kafka container"))
    monkeypatch.setattr(containers.RedisDockerContainer, "__init__", refuse("a Redis container"))
    monkeypatch.setattr(processes.ManagedProcess, "start", refuse("a worker or API process"))
    yield
