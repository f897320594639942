"""Start and stop the project's own processes (worker, API) next to the local services.

Used by the demo, the benchmarks and the integration tests, so all three run the pipeline the same way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from engine.kafka_client import kafka_client_kwargs
from engine.settings import REPO_ROOT
from infra.handles import free_port, wait_until
from infra.topics import ensure_topics

__all__ = ["ManagedProcess", "Stack", "api_process", "free_port", "wait_http_ready", "wait_until", "worker_process"]


class Stack:
    """Names and environment of one isolated pipeline on the shared broker and Redis."""

    def __init__(self, bootstrap: str, redis_url: str, partitions: int = 8, *,
                 kafka_env: dict[str, str] | None = None) -> None:
        """``kafka_env``: the ``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*`` of the processes (each may override
        them) and of the topic creation."""
        tag = uuid.uuid4().hex[:8]
        self.bootstrap, self.redis_url, self.partitions = bootstrap, redis_url, partitions
        self.kafka_env = dict(kafka_env or {})
        self.events_topic = f"events-{tag}"
        self.dlq_topic = f"events.dlq-{tag}"
        self.decisions_topic = f"decisions-{tag}"
        self.learning_topic = f"learning-{tag}"
        self.segments_topic = f"segments-{tag}"
        self.erasures_topic = f"erasures-{tag}"
        self.app_id = f"pulse-test-{tag}"
        self.tag = tag

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "KAFKA_BOOTSTRAP": self.bootstrap, "REDIS_URL": self.redis_url,
            "EVENTS_TOPIC": self.events_topic, "DLQ_TOPIC": self.dlq_topic,
            "DECISIONS_TOPIC": self.decisions_topic, "LEARNING_TOPIC": self.learning_topic,
            "SEGMENTS_TOPIC": self.segments_topic,
            "ERASURES_TOPIC": self.erasures_topic,
            "EVENTS_PARTITIONS": str(self.partitions),
            "WORKER_APP_ID": self.app_id, "WORKER_DATA_DIR": f"/tmp/pulse-faust-{self.tag}",
            "PYTHONUNBUFFERED": "1",
            # development defaults allowed (the default signing key; an API without keys is open)
            "PULSE_ENV": "dev",
        })
        env.update(self.kafka_env)
        env.update(extra)
        return env

    def create_topics(self) -> None:
        asyncio.run(ensure_topics(self.bootstrap, self.partitions,
                                  [self.events_topic, self.dlq_topic, self.decisions_topic,
                                   self.learning_topic, self.segments_topic, self.erasures_topic],
                                  kafka_kwargs=kafka_client_kwargs(self.kafka_env)))


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to commit or flush."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def worker_process(stack: Stack, log_dir: Path, name: str = "worker", command: str = "worker",
                   **env: str) -> ManagedProcess:
    """``command``: ``worker`` (every role), ``ingest`` or ``learner`` (see streams/__main__.py). Its metrics
    are served on a free port (``WORKER_METRICS_PORT``, in ``.env``) unless ``env`` names one."""
    env.setdefault("WORKER_METRICS_PORT", str(free_port()))  # parallel workers: one port each
    return ManagedProcess(name, [sys.executable, "-m", "streams", command, "-l", "warn"],
                          stack.env(**env), log_dir)


def api_process(stack: Stack, log_dir: Path, port: int, **env: str) -> ManagedProcess:
    # uvloop + httptools (what "auto" picks when installed, stated so a missing one fails loudly), no access
    # log (a log call with its formatted arguments per request); one numpy/OpenBLAS thread: the policies'
    # products are small, and idle BLAS threads spin on a core the other processes need
    return ManagedProcess(
        "api", [sys.executable, "-m", "uvicorn", "serving.app:app", "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--backlog", "4096"],
        stack.env(**{"OPENBLAS_NUM_THREADS": "1", **env}), log_dir)


def wait_http_ready(base_url: str, proc: ManagedProcess, timeout: float = 30.0) -> None:
    def ready() -> bool:
        if proc.proc and proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    wait_until(ready, timeout, 0.2, f"{proc.name} ready")
