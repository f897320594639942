"""Every command the README gives works in a fresh copy of the repository, as a new user would run it.

The README's ``bash`` blocks are read here, so a command added there is run here or the test fails: each
command is run (long-running ones until they are ready, then stopped), or listed in ``NOT_RUN_HERE`` with
the reason it cannot run inside a test. The copy holds the tracked files only (no ``.cache/``, no
``.venv``), which is what a clone has; the interpreter is this one, whose packages come from the
project's own ``pyproject.toml``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.settings import REPO_ROOT
from tests.support import Stack, free_port, wait_until

#: Commands the README gives that a test cannot run, each with the reason; matched by prefix.
NOT_RUN_HERE = {
    "make test": "this suite is what it runs (CI runs it through .ci/run)",
    "make bench": "its own target: minutes of load on every core (its smoke run: test_bench_smoke.py)",
    "make demo": "its make part only installs; the demo itself runs in test_resilience.py (infra.demo --exit)",
    "make fuzz": "its own long campaign with fresh seeds; the fixed-seed fuzz runs in make test",
    "make chaos": "its own target: restarts shared services for minutes",
    "make unit": "a subset of this suite",
    "make lint": "run by make test before the tests",
    "docker compose": "needs a Docker engine (CI has none); `make compose-config` validates the file",
    "pre-commit": "a developer's hook; its commands are make lint's",
}

#: Long-running commands: how to tell that each is ready.
SERVERS = ("python -m streams", "uvicorn ")


def readme_commands(text: str) -> list[str]:
    """The shell commands of a Markdown text's ``bash`` blocks, comments dropped, continuations joined.

    >>> readme_commands("x\\n```bash\\nmake demo   # try it\\ncurl -s a \\\\\\n  -d '{\\n}'\\n```\\n")
    ['make demo', "curl -s a -d '{\\n}'"]
    """
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending = ""
        for raw in block.splitlines():
            line = raw if pending else raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if not pending:
                line = re.split(r"\s{2,}#\s", line, maxsplit=1)[0].rstrip()
            joined = f"{pending}\n{line}" if pending and _open_quote(pending) else f"{pending} {line.strip()}".strip()
            if joined.endswith("\\"):
                pending = joined[:-1].rstrip()
                continue
            if _open_quote(joined):
                pending = joined
                continue
            commands.append(joined)
            pending = ""
    return commands


def _open_quote(command: str) -> bool:
    try:
        shlex.split(command)
    except ValueError:
        return True
    return False


def _not_run_reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN_HERE.items() if command.startswith(prefix)), None)


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files of the work tree (what a clone has, uncommitted edits included)."""
    dest = tmp_path_factory.mktemp("fresh-clone")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    assert not (dest / ".cache").exists()
    return dest


class Started:
    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def _argv(command: str, port: int | None) -> list[str]:
    """The README's command with this interpreter for ``python`` and a free port for the API's."""
    argv = shlex.split(command)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    elif argv[0] == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", *argv[1:]]
    if port is not None and "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    return argv


@pytest.fixture(scope="module")
def readme_env(kafka: Any, redis_server: Any, fresh_copy: Path) -> Iterator[dict[str, str]]:
    stack = Stack(kafka.bootstrap, redis_server.url)
    stack.create_topics()
    env = stack.env(PULSE_ENV="dev", OPENBLAS_NUM_THREADS="1")
    env.pop("WORKER_DATA_DIR")  # the default, under the fresh copy's .cache/, is what the README runs with
    env.pop("PYTHONPATH", None)
    yield env


def test_readme_commands_work_in_a_fresh_clone(fresh_copy: Path, readme_env: dict[str, str],
                                               tmp_path: Path) -> None:
    commands = readme_commands((fresh_copy / "README.md").read_text())
    assert commands, "the README gives no command"
    port = free_port()
    servers: list[tuple[str, Started]] = []
    ran: list[str] = []
    try:
        # the servers first: the README shows requests before it shows how to run the API
        for i, command in enumerate(commands):
            if command.startswith(SERVERS) and not _not_run_reason(command):
                proc = Started(_argv(command, port), fresh_copy, readme_env, tmp_path / f"cmd{i}.log")
                _wait_ready(command, proc, port)
                servers.append((command, proc))
                ran.append(command)
        for command in commands:
            if not command.startswith(SERVERS) and not _not_run_reason(command):
                _run_once(command, fresh_copy, readme_env, port)
                ran.append(command)
    finally:
        codes = [(command, proc.stop(), proc) for command, proc in servers]
    for command, code, proc in codes:
        assert code in (0, -signal.SIGTERM), f"{command!r} exited {code} when stopped:\n{proc.text()[-3000:]}"
        assert "Traceback" not in proc.text(), f"{command!r} logged a traceback:\n{proc.text()[-3000:]}"
    assert any(c.startswith("python -m streams") for c in ran), ran
    assert any(c.startswith("uvicorn") for c in ran), ran


def _wait_ready(command: str, proc: Started, port: int) -> None:
    def ready() -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"{command!r} exited {proc.proc.returncode}:\n{proc.text()[-3000:]}")
        if command.startswith("uvicorn"):
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        return "[^Worker]: Ready" in proc.text()

    wait_until(ready, 90, 0.25, f"{command!r} ready")


def _run_once(command: str, cwd: Path, env: dict[str, str], port: int) -> None:
    command = command.replace("localhost:8000", f"127.0.0.1:{port}")
    if command.startswith("curl "):
        command = command.replace("curl ", "curl --fail-with-body --max-time 10 ", 1)
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env={**env, "PATH": _path(env)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{command!r} exited {done.returncode} after {time.monotonic() - started:.1f}s\n"
        f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
    )


def _path(env: dict[str, str]) -> str:
    """``python`` in a README command is the project's interpreter (a user's activated venv)."""
    return f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"


def test_every_readme_command_is_run_or_excused() -> None:
    """Nothing in the README escapes the test above without a stated reason."""
    commands = readme_commands((REPO_ROOT / "README.md").read_text())
    unknown = [c for c in commands if not _not_run_reason(c) and not c.startswith(SERVERS)
               and not c.startswith(("curl ", "python -m ", "python3 -m ", "bash ", "infra/", ".venv/bin/"))]
    assert not unknown, f"README commands this test does not know how to run: {unknown}"
