"""Shared plumbing of the benchmarks: services, processes, realistic events, statistics, results.

Everything here runs the project's real components (``infra.local`` Kafka and Redis, the worker and the
API as subprocesses through ``infra.processes``), never mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import importlib.metadata
import math
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
#: 60 actions over 4 placements; merged into the shipped config by ``bench_config()``.
CATALOGUE = BENCH_DIR / "catalogue.toml"
SHIPPED_CONFIG = REPO / "config" / "engine.toml"
WRK_DIR = BENCH_DIR / "wrk"

CATEGORIES = ("shoes", "jackets", "books", "electronics", "hats", "bags", "toys", "beauty", "garden",
              "kitchen", "sports", "music")
ITEMS_PER_CATEGORY = 150
CURRENCIES = ("EUR", "GBP", "USD")
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
)
SEARCHES = ("running shoes", "winter jacket", "bestseller novel", "noise cancelling", "sun hat", "backpack",
            "lego", "lipstick", "garden hose", "espresso machine", "yoga mat", "vinyl")


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


def result_path(name: str, quick: bool) -> Path:
    return RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")


def write_result(name: str, payload: dict[str, Any], quick: bool) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
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
# /proc: memory and CPU of processes


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
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        return RESULTS_DIR / (f"{name}.quick.{ext}" if self.quick else f"{name}.{ext}")

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


def _toml_blocks(text: str) -> list[tuple[str, str]]:
    """Split TOML text into (table name, text) blocks at top-level table headers; the preamble has name ''."""
    blocks: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("[") and not line[:1].isspace():
            name = stripped.strip("[]").split("]")[0].strip()
            blocks.append((name, [line]))
        else:
            blocks[-1][1].append(line)
    return [(n, "".join(lines)) for n, lines in blocks]


def _groups(blocks: list[tuple[str, str]], table: str) -> list[str]:
    """The elements of an array of tables ``[[table]]``, each with its ``[table.sub]`` tables."""
    out: list[str] = []
    for name, text in blocks:
        root = name.split(".", 1)[0]
        if root != table:
            continue
        if name == table:
            out.append(text)
        elif out:
            out[-1] += text
    return out


_BENCH_CONFIG: Path | None = None


def bench_config() -> Path:
    """The shipped config/engine.toml with its catalogue replaced by bench/catalogue.toml (see there)."""
    global _BENCH_CONFIG
    if _BENCH_CONFIG is not None and _BENCH_CONFIG.exists():
        return _BENCH_CONFIG
    import tomllib

    from engine.config import load_config

    shipped = _toml_blocks(SHIPPED_CONFIG.read_text())
    ours = _toml_blocks(CATALOGUE.read_text())
    shipped_placements = {tomllib.loads(g)["placement"][0]["id"]: g for g in _groups(shipped, "placement")}
    kept = "".join(text for name, text in shipped if name.split(".", 1)[0] not in ("placement", "action"))
    placements = []
    for g in _groups(ours, "placement"):
        pid = tomllib.loads(g)["placement"][0]["id"]
        placements.append(shipped_placements.get(pid, g))
    actions = _groups(ours, "action")
    text = (f"# GENERATED by bench.common.bench_config() from {SHIPPED_CONFIG.relative_to(REPO)} and "
            f"{CATALOGUE.relative_to(REPO)}\n" + kept.rstrip() + "\n\n"
            + "\n".join(p.rstrip() + "\n" for p in placements) + "\n" + "\n".join(a.rstrip() + "\n" for a in actions))
    path = Path(tempfile.mkdtemp(prefix="pulse-bench-config-")) / "engine.toml"
    path.write_text(text)
    load_config(path)  # fail here, clearly, if the merge does not validate
    _BENCH_CONFIG = path
    return path


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


# --------------------------------------------------------------------------------------------------
# realistic events


class EventFactory:
    """Clickstream events that look like a shop's: page views dominate, then clicks, searches, carts and a
    few purchases, identifies and consents; items follow a Zipf-like popularity inside 12 categories;
    each visitor has one or two favourite categories. Deterministic for a seed."""

    MIX = (("page_view", 0.56), ("click", 0.16), ("search", 0.08), ("add_to_cart", 0.09),
           ("remove_from_cart", 0.03), ("purchase", 0.025), ("identify", 0.004), ("consent", 0.004),
           ("feedback", 0.01))

    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        self._types = [t for t, _ in self.MIX]
        self._cum = []
        acc = 0.0
        for _, w in self.MIX:
            acc += w
            self._cum.append(acc)
        self._favourites: dict[str, tuple[str, ...]] = {}

    def _type(self) -> str:
        x = self.rng.random() * self._cum[-1]
        for t, c in zip(self._types, self._cum, strict=True):
            if x <= c:
                return t
        return self._types[-1]

    def _item(self, visitor: str) -> tuple[str, str]:
        fav = self._favourites.get(visitor)
        if fav is None:
            fav = self._favourites[visitor] = tuple(self.rng.sample(CATEGORIES, self.rng.choice((1, 2, 2, 3))))
        cat = self.rng.choice(fav) if self.rng.random() < 0.8 else self.rng.choice(CATEGORIES)
        k = min(int(self.rng.paretovariate(1.1)) - 1, ITEMS_PER_CATEGORY - 1)
        return cat, f"sku-{cat}-{k}"

    def event(self, visitor: str, *, customer: bool, ts_ms: int, session: str, etype: str | None = None,
              customer_id: str | None = None) -> dict[str, Any]:
        etype = etype or self._type()
        rng = self.rng
        cat, item = self._item(visitor)
        url = f"https://shop.example/{cat}/{item}"
        ctx: dict[str, Any] = {"channel": "web", "locale": "en-GB", "session_id": session, "url": url,
                               "user_agent": rng.choice(USER_AGENTS)}
        props: dict[str, Any]
        if etype == "page_view":
            props = {"url": url, "item_id": item, "category": cat, "title": f"{cat} {item}"}
        elif etype == "click":
            props = {"item_id": item, "category": cat}
            if rng.random() < 0.5:  # a click on a recommendation names its decision
                props.update(placement="product_recs", action_id=f"act-{cat}-{rng.randrange(5)}",
                             decision_id=uuid.UUID(int=rng.getrandbits(128)).hex)
        elif etype == "search":
            props = {"query": rng.choice(SEARCHES)}
        elif etype in ("add_to_cart", "remove_from_cart"):
            props = {"item_id": item, "category": cat, "price": round(rng.uniform(5, 250), 2),
                     "currency": rng.choice(CURRENCIES), "quantity": rng.choice((1, 1, 1, 2))}
        elif etype == "purchase":
            items = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                c2, i2 = self._item(visitor)
                items.append({"item_id": i2, "category": c2, "price": round(rng.uniform(5, 250), 2), "quantity": 1})
            props = {"order_id": f"ord-{rng.getrandbits(40):x}", "value": round(sum(i["price"] for i in items), 2),
                     "currency": "EUR", "items": items}
        elif etype == "identify":
            props = {"traits": {"loyalty_tier": rng.choice(("bronze", "silver", "gold")), "country": "IE"}}
        elif etype == "consent":
            props = {"personalisation": True, "analytics": True, "marketing": rng.random() < 0.5}
        else:  # feedback on a decision
            props = {"decision_id": uuid.UUID(int=rng.getrandbits(128)).hex, "action_id": f"act-{cat}-0",
                     "kind": rng.choice(("click", "dismiss"))}
        e: dict[str, Any] = {"event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "type": etype,
                             "schema_version": 1, "timestamp": ts_ms, "context": ctx, "properties": props}
        if customer:
            e["customer_id"] = visitor
            if etype == "identify":  # a login from a device seen before under an anonymous id
                e["anonymous_id"] = f"anon-{rng.getrandbits(40):x}"
        else:
            e["anonymous_id"] = visitor
            if etype == "identify":
                e["customer_id"] = customer_id or f"c-{visitor}"
        return e

    def history(self, visitor: str, n: int, *, customer: bool, end_ms: int, span_s: float = 3 * 86400) -> list[dict]:
        """``n`` events of one visitor over the last ``span_s`` seconds, in time order, in sessions."""
        rng = self.rng
        times = sorted(end_ms - int(rng.random() * span_s * 1000) for _ in range(n))
        out, session, last = [], "", -10**15
        for t in times:
            if t - last > 30 * 60 * 1000:
                session = f"s-{rng.getrandbits(32):x}"
            last = t
            etype = self._type()
            if etype == "identify" or (etype == "consent" and rng.random() < 0.5):
                etype = "page_view"  # profiles for populating: no identity merges
            out.append(self.event(visitor, customer=customer, ts_ms=t, session=session, etype=etype))
        return out

    def stream(self, n: int, visitors: int, *, anonymous_share: float = 0.4, end_ms: int | None = None,
               span_s: float = 3600.0, prefix: str = "") -> Iterator[tuple[bytes, bytes]]:
        """``n`` (key, value) records from ``visitors`` visitors with a skewed activity, timestamps spread
        over the last ``span_s`` seconds in order, as a shop's topic would hold them."""
        rng = self.rng
        end_ms = end_ms or int(time.time() * 1000)
        start = end_ms - int(span_s * 1000)
        sessions: dict[str, str] = {}
        for i in range(n):
            v = int(visitors * rng.random() ** 2.5)  # skewed: the top 1% of visitors make ~16% of events
            v = (v * 2654435761) % visitors  # spread hot visitors over ids and partitions
            customer = (v % 100) >= anonymous_share * 100
            vid = f"{prefix}{'c' if customer else 'a'}-{v}"
            if vid not in sessions or rng.random() < 0.02:
                sessions[vid] = f"s-{rng.getrandbits(32):x}"
            e = self.event(vid, customer=customer, ts_ms=start + (end_ms - start) * i // max(n, 1),
                           session=sessions[vid])
            key = e.get("customer_id") if customer else e.get("anonymous_id")
            yield key.encode(), orjson.dumps(e)


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), as producers use it."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def populate_profiles(redis_url: str, histories: Sequence[Sequence[dict[str, Any]]], *,
                            topic: str = "bench-populate", partitions: int = 8, batch_size: int = 500) -> float:
    """Apply visitors' histories through the worker's own ``BatchProcessor`` (same code path as the
    stream, minus Kafka). Events are interleaved in time order; returns the events/s achieved."""
    import redis.asyncio as aioredis

    from engine.config import load_config
    from engine.profile_store import ProfileStore
    from streams.pipeline import BatchProcessor, Record

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"benchmark event rejected: {headers} {value[:200]!r}")

    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        proc = BatchProcessor(ProfileStore(client, load_config(bench_config())), no_dlq)
        merged = sorted((e for h in histories for e in h), key=lambda e: e["timestamp"])
        offsets = [0] * partitions
        records = []
        for e in merged:
            key = (e.get("customer_id") or e.get("anonymous_id")).encode()
            p = partition_for(key, partitions)
            records.append(Record(topic, p, offsets[p], key, orjson.dumps(e)))
            offsets[p] += 1
        t0 = time.perf_counter()
        for i in range(0, len(records), batch_size):
            await proc.process(records[i:i + batch_size])
        return len(records) / max(time.perf_counter() - t0, 1e-9)
    finally:
        await client.aclose()


async def produce_records(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> tuple[int, float]:
    """Publish (key, value) records with acks=all, batched; returns (count, seconds)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    n = 0
    t0 = time.perf_counter()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value=value, key=key))
            n += 1
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# a minimal HTTP/1.1 keep-alive client (for freshness polling and small checks)


class HttpClient:
    """One keep-alive connection; ``post()`` returns (status, body). No pipelining, no chunked bodies
    (uvicorn answers ``Response`` objects with Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    def for_url(cls, base_url: str) -> HttpClient:
        hostport = base_url.split("://", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        return cls(host, int(port))

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.writer is None:
                await self._connect()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(http_request(method, path, body, f"{self.host}:{self.port}"))
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = content_length(head)
                data = await self.reader.readexactly(length) if length else b""
                return status, data
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        status, body = await self.request("POST", path, orjson.dumps(payload))
        return status, orjson.loads(body) if body else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def http_request(method: str, path: str, body: bytes, host: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def content_length(head: bytes) -> int:
    i = head.lower().find(b"content-length:")
    if i < 0:
        return 0
    j = head.find(b"\r\n", i)
    return int(head[i + 15:j])


def which(tool: str) -> str | None:
    return shutil.which(tool)


# --------------------------------------------------------------------------------------------------
# profiling with py-spy (sampling, from outside the process: nothing changes in the code under test)


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
