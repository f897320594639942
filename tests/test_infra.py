"""infra/: version pins agree, probes parse addresses, handles keep their life cycle (the real services:
``tests/integration/test_local_services.py``)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

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
    assert default_topic_names() == ["events", "dead", "decisions", "learning", "segments", "erasures"]


def test_the_erasures_topic_is_compacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.topics import topic_configs

    assert topic_configs("erasures") == {"cleanup.policy": "compact"}
    assert topic_configs("erasures-1a2b") == {"cleanup.policy": "compact"}  # the tests' per-run names
    monkeypatch.setenv("ERASURES_TOPIC", "forgotten")
    assert topic_configs("forgotten") == {"cleanup.policy": "compact"}
    assert topic_configs("events") == {} and topic_configs("learning") == {}


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
    with pytest.raises(local.InfraError, match="waiting for _FakeService on port 1234 to answer"):
        svc.start()
    svc.close()


def test_probes_say_no_when_nothing_listens() -> None:
    port = local.free_ports(1)[0]
    assert not kafka_ready(f"127.0.0.1:{port}", timeout=0.5)
    assert not redis_ping(f"redis://127.0.0.1:{port}/0", timeout=0.5)


# --------------------------------------------------------------------------------------------------
# infra/lib.sh: the life cycle kafka.sh and redis.sh share, driven through a fake service

_FAKE_SERVICE = r"""
set -euo pipefail
source "$LIB"
SERVICE=fake
SVC_HOST=127.0.0.1
SVC_PORTS="$FAKE_PORT"
SVC_DATA_DIR="$FAKE_DIR"
PID_FILE="$FAKE_DIR/fake.pid"
SVC_LOG_FILE="$FAKE_DIR/fake.log"
SVC_START_TIMEOUT=3
SVC_STOP_TIMEOUT=1
SVC_CMDLINE="pulse-fake-service $FAKE_DIR"
svc_installed() { true; }
svc_install() { :; }
svc_ready() { [[ -f "$FAKE_DIR/ready" ]]; }
svc_after_stop() { echo stopped >>"$FAKE_DIR/hooks"; }
svc_launch() {
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$0"; exec python3 -c "$1" pulse-fake-service "$2"' "$PID_FILE" "$FAKE_PROGRAM" "$FAKE_DIR" \
    >>"$SVC_LOG_FILE" 2>&1 </dev/null &
  while [[ ! -s "$PID_FILE" ]]; do sleep 0.02; done
}
lib_main "$@"
"""

_PROGRAMS = {
    "good": "import pathlib, sys, time; pathlib.Path(sys.argv[2], 'ready').touch(); time.sleep(60)",
    "exits": "import sys; print('cannot start'); sys.exit(3)",
    "never_ready": "import time; time.sleep(60)",
    "stubborn": ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 "pathlib.Path(sys.argv[2], 'ready').touch(); time.sleep(60)"),
}


def _fake(tmp_path: Path, program: str, port: int | None = None) -> Any:
    script = tmp_path / "fake.sh"
    script.write_text(_FAKE_SERVICE)
    data = tmp_path / "data"
    env = {**os.environ, "LIB": str(INFRA / "lib.sh"), "FAKE_DIR": str(data), "FAKE_PROGRAM": _PROGRAMS[program],
           "FAKE_PORT": str(port or handles.free_port())}

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), command], env=env, capture_output=True, text=True, timeout=30,
                              check=False)
    return run, data


def test_lib_start_status_stop_reset(tmp_path: Path) -> None:
    run, data = _fake(tmp_path, "good")
    assert run("status").returncode == 3
    started = run("start")
    assert started.returncode == 0, started.stderr
    assert "[fake.sh] fake ready on 127.0.0.1" in started.stderr
    pid = int((data / "fake.pid").read_text())
    assert run("status").returncode == 0
    assert "already running" in run("start").stderr  # idempotent
    (data / "ready").unlink()
    assert run("status").returncode == 1  # running, not answering
    assert run("stop").returncode == 0
    assert not (data / "fake.pid").exists() and (data / "hooks").read_text() == "stopped\n"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert run("stop").returncode == 0  # stopping a stopped service is fine
    assert run("reset").returncode == 0 and not data.exists()
    assert run("bogus").returncode == 2


def test_lib_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    run, data = _fake(tmp_path, "good")
    data.mkdir()
    (data / "fake.pid").write_text(f"{os.getpid()}\n")  # alive, but not the service
    assert run("status").returncode == 3


@pytest.mark.parametrize(("program", "expected"), [
    ("exits", "fake exited during startup"),
    ("never_ready", "fake not ready on 127.0.0.1"),
])
def test_lib_start_fails_and_cleans_up(tmp_path: Path, program: str, expected: str) -> None:
    run, data = _fake(tmp_path, program)
    result = run("start")
    assert result.returncode == 1 and expected in result.stderr, result.stderr
    assert not (data / "fake.pid").exists()
    assert run("status").returncode == 3


def test_lib_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    run, _ = _fake(tmp_path, "stubborn")
    assert run("start").returncode == 0
    stopped = run("stop")
    assert stopped.returncode == 0 and "sending SIGKILL" in stopped.stderr
    assert run("status").returncode == 3


def test_lib_start_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        run, _ = _fake(tmp_path, "good", port=busy.getsockname()[1])
        result = run("start")
    assert result.returncode == 1 and "already in use" in result.stderr


def test_both_service_scripts_use_the_shared_life_cycle() -> None:
    for name in ("kafka.sh", "redis.sh"):
        text = (INFRA / name).read_text()
        assert 'source "$INFRA_DIR/lib.sh"' in text and text.rstrip().endswith('lib_main "$@"'), name
        for own in ("cmd_start()", "cmd_stop()", "running_pid()", "cmd_status()"):
            assert own not in text, f"{name} defines {own} again: it belongs in infra/lib.sh"


def test_wait_until_returns_the_value_and_names_what_timed_out() -> None:
    calls = iter([0, None, "ok"])
    assert handles.wait_until(lambda: next(calls), timeout=5, interval=0.01) == "ok"
    with pytest.raises(handles.WaitTimeout, match="waiting for the moon; last value: 0"):
        handles.wait_until(lambda: 0, timeout=0.05, interval=0.01, what="the moon")
    with pytest.raises(ZeroDivisionError):  # a failing check fails at once
        handles.wait_until(lambda: 1 / 0, timeout=5)


def test_one_free_port_and_one_polling_helper() -> None:
    from infra import processes
    from tests import support

    assert processes.free_port is support.free_port is handles.free_port
    assert processes.wait_until is support.wait_until is handles.wait_until
