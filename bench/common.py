"""Shared plumbing of the benchmarks: services, processes, statistics, results (realistic traffic:
``bench.traffic``; CPU, memory and profiles: ``bench.measure``; a small HTTP client: ``bench.http_client``).

Everything here runs the project's real components (``infra.local`` Kafka and Redis, the worker and the
API as subprocesses through ``infra.processes``), never mocks.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
#: 60 actions over 4 placements; an overlay (``include``) of the shipped config: ``bench_config()``.
CATALOGUE = BENCH_DIR / "catalogue.toml"
SHIPPED_CONFIG = REPO / "config" / "engine.toml"
WRK_DIR = BENCH_DIR / "wrk"



# --------------------------------------------------------------------------------------------------
# statistics


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile of an already sorted sequence (``p`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    k = (len(sorted_values) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo))


def summarise_ms(values_s: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds of durations given in seconds."""
    v = sorted(x * 1000.0 for x in values_s)
    if not v:
        return {"n": 0}
    return {
        "n": len(v), "p50": round(percentile(v, 50), 3), "p90": round(percentile(v, 90), 3),
        "p99": round(percentile(v, 99), 3), "p99_9": round(percentile(v, 99.9), 3),
        "max": round(v[-1], 3), "mean": round(sum(v) / len(v), 3),
    }


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


# --------------------------------------------------------------------------------------------------
# machine, versions, results


def machine_info() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)), "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def _cmd_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unavailable"


def versions() -> dict[str, str]:
    from infra.local import KAFKA_VERSION

    out = {"python": platform.python_version(), "kafka": KAFKA_VERSION,
           "redis_server": _cmd_version(["redis-server", "--version"]), "wrk": _cmd_version(["wrk", "-v"])}
    for dist in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "redis", "hiredis", "aiokafka",
                 "faust-streaming", "orjson", "fastjsonschema", "river", "py-spy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    import hashlib

    diff = git("diff", "HEAD")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else ""}


_META: dict[str, Any] | None = None


def meta(mode: str) -> dict[str, Any]:
    global _META
    if _META is None:
        _META = {"machine": machine_info(), "versions": versions(), "git": git_revision()}
    return {"date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "mode": mode, **_META}


def results_dir() -> Path:
    """Where results go: ``bench/results``, or ``$BENCH_RESULTS_DIR`` (the smoke test writes elsewhere, so that
    a check of the benchmark code never overwrites the committed figures)."""
    return Path(os.environ.get("BENCH_RESULTS_DIR") or RESULTS_DIR)


def result_path(name: str, quick: bool) -> Path:
    return results_dir() / (f"{name}.quick.json" if quick else f"{name}.json")


def write_result(name: str, payload: dict[str, Any], quick: bool) -> Path:
    results_dir().mkdir(parents=True, exist_ok=True)
    path = result_path(name, quick)
    tmp = path.with_suffix(".tmp")
    doc = {"benchmark": name, **meta("quick" if quick else "full"), **payload}
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)
    return path


def exit_cleanly_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so ``finally`` blocks stop the worker/API/Kafka/Redis we started
    (Python's default for SIGTERM is to die without running them, leaving orphans behind)."""
    import signal

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# services and processes


@dataclass
class Infra:
    """The real Kafka broker and Redis server shared by every benchmark of one run."""

    kafka: Any
    redis: Any
    log_dir: Path
    quick: bool
    profile: bool = False
    _next_db: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def started(cls, quick: bool, profile: bool = False) -> Iterator[Infra]:
        from infra.local import start_kafka, start_redis

        log_dir = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
        log("starting Kafka and Redis (infra.local)")
        kafka = start_kafka()
        try:
            redis = start_redis()
            try:
                log(f"kafka {kafka.bootstrap}, redis {redis.url}, logs {log_dir}")
                yield cls(kafka, redis, log_dir, quick, profile)
            finally:
                redis.close()
        finally:
            kafka.close()

    repo: Path = REPO

    def results_file(self, name: str, ext: str) -> Path:
        results_dir().mkdir(parents=True, exist_ok=True)
        return results_dir() / (f"{name}.quick.{ext}" if self.quick else f"{name}.{ext}")

    def redis_url(self, db: int | None = None) -> str:
        """A Redis URL on a database of its own, so benchmarks never see each other's keys/counters."""
        if db is None:
            db = self._next_db
            self._next_db += 1
            if self._next_db > 15:
                self._next_db = 1
        base = self.redis.url.rsplit("/", 1)[0]
        return f"{base}/{db}"

    def stack(self, partitions: int = 8, db: int | None = None) -> Any:
        from infra.processes import Stack

        s = Stack(self.kafka.bootstrap, self.redis_url(db), partitions)
        s.create_topics()
        return s

    def redis_pid(self) -> int | None:
        import redis as sync_redis

        c = sync_redis.Redis.from_url(self.redis.url)
        try:
            return int(c.info("server")["process_id"])
        finally:
            c.close()

    def kafka_pid(self) -> int | None:
        """The broker JVM: the process listening on the bootstrap port."""
        port = int(self.kafka.bootstrap.rsplit(":", 1)[1])
        return _pid_listening_on(port)


def _pid_listening_on(port: int) -> int | None:
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                    inode = parts[9]
                    break
        if inode:
            break
    if not inode:
        return None
    target = f"socket:[{inode}]"
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return int(pid_dir.name)
    return None


_BENCH_CONFIG: Path | None = None


def bench_config() -> Path:
    """bench/catalogue.toml: an overlay of the shipped config/engine.toml (``include``), checked once."""
    global _BENCH_CONFIG
    if _BENCH_CONFIG is None:
        from engine.config import load_config

        load_config(CATALOGUE)  # fail here, clearly, if the composition does not validate
        _BENCH_CONFIG = CATALOGUE
    return _BENCH_CONFIG


def config_summary() -> dict[str, Any]:
    from engine.config import load_config

    cfg = load_config(bench_config())
    out: dict[str, Any] = {"actions": len(cfg.actions), "placements": {}}
    for pid, p in cfg.placements.items():
        learning = getattr(p, "learning", None)
        out["placements"][pid] = {
            "eligible_actions": len(cfg.actions_for(pid)), "max_items": p.max_items,
            "policy": getattr(learning, "policy", "affinity_popularity"),
            "holdout_share": getattr(learning, "holdout_share", 0.0),
        }
    return out


def bench_env(**extra: str) -> dict[str, str]:
    """Environment for the worker/API under benchmark: the bench configuration."""
    return {"ENGINE_CONFIG": str(bench_config()), **extra}


def start_api(infra: Infra, stack: Any, name: str = "api", app: str = "serving.app:app", workers: int = 1,
              **env: str) -> tuple[Any, str]:
    """The real API (or another ASGI app with exactly the same uvicorn command line) on a free port;
    ``workers`` > 1 adds ``--workers N`` (uvicorn's supervisor and N server processes)."""
    from infra.processes import ManagedProcess, api_process, free_port, wait_http_ready

    port = free_port()
    proc = api_process(stack, infra.log_dir, port, **bench_env(**env))
    if app != "serving.app:app" or name != "api" or workers > 1:
        argv = [app if a == "serving.app:app" else a for a in proc.argv]
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = ManagedProcess(name, argv, proc.env, infra.log_dir)
    proc.start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base, proc, timeout=60)
    return proc, base


def start_worker(infra: Infra, stack: Any, name: str = "worker", command: str = "worker", **env: str) -> Any:
    """``command``: ``worker`` (every role), ``ingest`` or ``learner`` (streams/__main__.py)."""
    from infra.processes import worker_process

    return worker_process(stack, infra.log_dir, name=name, command=command, **bench_env(**env)).start()


def which(tool: str) -> str | None:
    return shutil.which(tool)
