"""infra/: version pins agree, probes parse addresses, handles keep their life cycle (the real services:
``tests/integration/test_local_services.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra import handles, local
from infra.probe import kafka_ready, redis_ping, split_hostport
from infra.topics import default_topic_names

INFRA = Path(local.__file__).resolve().parent


def test_kafka_version_is_pinned_once_everywhere() -> None:
    pom = re.search(r"<kafka.version>([^<]+)</kafka.version>", (INFRA / "pom.xml").read_text())
    script = re.search(r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([^}]+)\}"', (INFRA / "kafka.sh").read_text())
    compose = re.search(r"image: apache/kafka:(\S+)", (INFRA / "docker-compose.yml").read_text())
    assert pom and script and compose
    assert pom.group(1) == script.group(1) == compose.group(1) == local.KAFKA_VERSION


def test_env_example_documents_every_compose_variable() -> None:
    compose_vars = set(re.findall(r"\$\{([A-Z_]+)", (INFRA / "docker-compose.yml").read_text()))
    example_vars = set(re.findall(r"^([A-Z_]+)=", (INFRA / ".env.example").read_text(), re.M))
    assert compose_vars <= example_vars, compose_vars - example_vars


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9092", ("127.0.0.1", 9092)),
        ("kafka://broker:19092,other:1", ("broker", 19092)),
        ("[::1]:6380", ("::1", 6380)),
        ("localhost", ("localhost", 7)),
    ],
)
def test_split_hostport(address: str, expected: tuple[str, int]) -> None:
    assert split_hostport(address, 7) == expected


def test_default_topic_names_follow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLQ_TOPIC", "dead")
    assert default_topic_names() == ["events", "dead", "decisions", "learning"]


def test_free_ports_are_distinct() -> None:
    ports = local.free_ports(3)
    assert len(set(ports)) == 3


class _FakeWrapped:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def start(self) -> None:
        self.log.append("resume")

    def stop(self, timeout: int) -> None:
        self.log.append(f"pause {timeout}")


class _FakeContainer:
    """What ``Container`` uses of a testcontainers ``DockerContainer``."""

    def __init__(self, log: list[str]) -> None:
        self.log, self.wrapped = log, _FakeWrapped(log)

    def start(self) -> None:
        self.log.append("create")

    def stop(self) -> None:
        self.log.append("remove")

    def get_wrapped_container(self) -> _FakeWrapped:
        return self.wrapped


class _FakeService(local.Container):
    ready_timeout_s, stop_timeout_s = 1.0, 7

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.port, self.answering = 1234, True
        self._container = _FakeContainer(log)

    def _ready(self) -> bool:
        return self.answering


def test_docker_handle_creates_once_pauses_resumes_and_removes() -> None:
    # the container code paths run only where Docker exists: their life cycle is checked on a fake container
    log: list[str] = []
    svc = _FakeService(log)
    assert not svc.is_running()
    with svc:
        assert svc.is_running() and id(svc) in handles._open_handles
        svc.stop()
        svc.answering = False
        assert not svc.is_running()
        svc.answering = True
        svc.start()
    assert log == ["create", "pause 7", "resume", "remove"]
    assert id(svc) not in handles._open_handles and not svc.is_running()


def test_docker_handle_start_fails_when_the_service_never_answers() -> None:
    svc = _FakeService([])
    svc.answering, svc.ready_timeout_s = False, 0.3
    with pytest.raises(local.InfraError, match="_FakeService on port 1234 not ready"):
        svc.start()
    svc.close()


def test_probes_say_no_when_nothing_listens() -> None:
    port = local.free_ports(1)[0]
    assert not kafka_ready(f"127.0.0.1:{port}", timeout=0.5)
    assert not redis_ping(f"redis://127.0.0.1:{port}/0", timeout=0.5)
