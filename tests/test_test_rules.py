"""The suite's own rules (conftest.py): unit tests cannot start services, integration tests are marked by
their directory."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.settings import REPO_ROOT
from infra import local, processes


@pytest.mark.parametrize("start", [
    lambda _: local.start_redis(),
    lambda _: local.start_kafka(),
    lambda tmp: local.RedisProcess(local.free_ports(1)[0], tmp).start(),
    lambda _: local.RedisDockerContainer(local.free_ports(1)[0]),
    lambda tmp: processes.ManagedProcess("api", [sys.executable, "-c", "pass"], {}, tmp).start(),
], ids=["start_redis", "start_kafka", "redis.sh", "redis container", "api process"])
def test_a_unit_test_that_starts_a_service_fails(start: Callable[[Path], Any], tmp_path: Path) -> None:
    # pytest.fail raises an OutcomeException (a BaseException): start_or_fail cannot turn it into a skip
    with pytest.raises(pytest.fail.Exception, match="live under tests/integration/"):
        start(tmp_path)


def test_every_test_under_tests_integration_is_marked_integration() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/integration"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    collected = [line for line in out.stdout.splitlines() if "::" in line]
    out_unmarked = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "not integration",
         "tests/integration"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(collected) > 50  # the integration tests were found ...
    assert not [line for line in out_unmarked.stdout.splitlines() if "::" in line]  # ... and all are marked
