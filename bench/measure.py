"""Measuring the processes under test from outside: CPU and memory from /proc, profiles with py-spy.

Nothing here changes the code under test: CPU seconds and RSS are read from ``/proc/<pid>``, and py-spy
samples a running process without pausing it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import REPO, log, median


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its own threads, not its children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (e.g. uvicorn's worker processes under ``--workers N``)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(out)


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / _TICK, total / _TICK


class CpuMeter:
    """CPU seconds used by named processes between ``start()`` and ``stop()``, and by the machine: on a
    shared machine ``other_cpu_s`` (busy time not used by the named processes, nor this one) says how much
    noise a figure was measured under."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self._t0: dict[str, float] = {}
        self._wall0 = 0.0
        self.result: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._wall0 = time.monotonic()
        self._t0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._self0 = time.process_time()
        self._sys0 = system_cpu_seconds()[0]
        return self

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall0
        self.result = {f"{k}_cpu_s": round(cpu_seconds(p) - self._t0[k], 3) for k, p in self.pids.items()}
        self.result["bench_cpu_s"] = round(time.process_time() - self._self0, 3)
        busy = system_cpu_seconds()[0] - self._sys0
        ours = sum(v for k, v in self.result.items() if k.endswith("_cpu_s"))
        self.result["machine_busy_cpu_s"] = round(busy, 3)
        self.result["other_cpu_s"] = round(max(0.0, busy - ours), 3)
        self.result["wall_s"] = round(wall, 3)
        return self.result


class RssSampler:
    """Samples the RSS of processes every ``interval`` seconds on a background thread."""

    def __init__(self, pids: dict[str, int | None], interval: float = 0.25) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.interval = interval
        self.samples: dict[str, list[int]] = {k: [] for k in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, p in self.pids.items():
                v = rss_bytes(p)
                if v:
                    self.samples[k].append(v)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for k, v in self.samples.items():
            if v:
                out[k] = {"rss_mib_median": round(median(v) / 2**20, 1), "rss_mib_max": round(max(v) / 2**20, 1)}
        return out



def pyspy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class _PySpy:
    def __init__(self, path: Path, rate: int) -> None:
        self.path, self.rate = path, rate
        self.proc: subprocess.Popen[bytes] | None = None


@contextlib.contextmanager
def pyspy_record(pid: int, seconds: float, out: Path, rate: int = 200) -> Iterator[_PySpy]:
    """Sample ``pid`` into ``out`` (py-spy "raw" collapsed stacks) while the block runs, at most ``seconds``.

    ``--nonblocking``: py-spy reads the target's memory without pausing it, so the process under test is
    not slowed down (a few samples may be torn; irrelevant at these sample counts)."""
    import signal

    binary = pyspy_binary()
    rec = _PySpy(out, rate)
    if binary is None:
        log("py-spy is not installed (pip install py-spy): no profile")
        yield rec
        return
    out.unlink(missing_ok=True)
    rec.proc = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(max(1, round(seconds))),
         "--nonblocking", "--format", "raw", "--output", str(out),
         *(["--gil"] if os.environ.get("BENCH_PYSPY_GIL") else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield rec
    finally:
        if rec.proc.poll() is None:
            rec.proc.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        try:
            _, err = rec.proc.communicate(timeout=60)
            if not out.exists():
                log(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")
        except subprocess.TimeoutExpired:
            rec.proc.kill()


_CATEGORIES = (
    ("serving/", "serving (our handlers)"), ("engine/features", "engine.features (decode/ops)"),
    ("engine/scoring", "engine.scoring"), ("engine/policies", "engine.policies (learned models)"),
    ("engine/profile_store", "engine.profile_store"), ("engine/recommend", "engine.recommend (co-visitation)"),
    ("engine/snapshots", "engine.snapshots (model snapshots)"), ("engine/layout", "engine.layout (key names)"),
    ("engine/", "engine (other)"),
    ("streams/", "streams (worker logic)"), ("schemas/", "schemas (event validation)"),
    ("<string>", "schemas (event validation)"), ("fastjsonschema", "schemas (event validation)"),
    ("redis/", "redis-py client"), ("hiredis", "redis-py client"), ("starlette/", "starlette"),
    ("fastapi/", "fastapi"), ("uvicorn/", "uvicorn (HTTP protocol)"), ("httptools", "uvicorn (HTTP protocol)"),
    ("aiokafka/", "aiokafka"), ("kafka/", "aiokafka"), ("faust/", "faust"), ("mode/", "faust (mode)"),
    ("click/", "faust (cli)"), ("river/", "river"), ("numpy/", "numpy"), ("scipy/", "scipy"),
    ("asyncio/", "asyncio / event loop"), ("uvloop", "asyncio / event loop"), ("selectors.py", "asyncio / event loop"),
    ("contextlib.py", "asyncio / event loop"), ("<frozen importlib", "imports (start-up)"),
    ("logging/", "logging"), ("bench/", "bench"), ("json/", "json (stdlib)"),
)


def _category(path: str) -> str:
    """Package of a frame's file; py-spy shortens paths relative to sys.path ("fastapi/routing.py")."""
    short = path.split("site-packages/", 1)[-1].replace(str(REPO) + "/", "")
    for needle, name in _CATEGORIES:
        if short.startswith(needle) or needle in short and not needle.endswith("/"):
            return name
    if "site-packages/" in path:
        return short.split("/", 1)[0]
    return "python stdlib / other"


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")


def summarise_profile(path: Path, rate: int, top: int = 25) -> dict[str, Any]:
    """Self time by package and the top functions (self and inclusive) of a py-spy raw profile."""
    if not path.exists():
        return {"error": "no profile recorded"}
    total = 0
    self_by_cat: dict[str, int] = {}
    self_by_fn: dict[str, int] = {}
    incl_by_fn: dict[str, int] = {}
    incl_ours: dict[str, int] = {}
    ours = tuple(f"{REPO}/{d}/" for d in ("serving", "engine", "streams", "schemas")) + (
        "serving/", "engine/", "streams/", "schemas/")
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = []
        for fr in stack.split(";"):
            m = _FRAME.match(fr)
            if not m:
                continue
            p = m.group("path")
            short = p.split("site-packages/", 1)[-1].replace(str(REPO) + "/", "")
            frames.append((f"{m.group('func')} ({short})", p))
        if not frames:
            continue
        leaf, leaf_path = frames[-1]
        self_by_fn[leaf] = self_by_fn.get(leaf, 0) + count
        cat = _category(leaf_path)
        self_by_cat[cat] = self_by_cat.get(cat, 0) + count
        for name in {f for f, _ in frames}:
            incl_by_fn[name] = incl_by_fn.get(name, 0) + count
        for name in {f for f, p in frames if p.startswith(ours) and "site-packages" not in p
                     and "/bench/" not in p and "__main__" not in f}:
            incl_ours[name] = incl_ours.get(name, 0) + count

    def share(d: dict[str, int], n: int) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    return {
        "samples": total, "sample_rate_hz": rate, "busy_seconds": round(total / rate, 2),
        "self_time_by_package_pct": dict(share(self_by_cat, 30)),
        "top_self_pct": share(self_by_fn, top),
        "top_inclusive_pct": share(incl_by_fn, top),
        "project_functions_inclusive_pct": share(incl_ours, top),
    }
