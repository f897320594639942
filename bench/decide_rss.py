"""RSS of the API process under the latency benchmark's load, with what holds the memory.

Starts Kafka and Redis (``infra.local``), writes 3,000 profiles, starts the API with the benchmark's uvicorn
command line but serving ``bench.decide_rss:app`` (the real ``serving.app:app`` plus a SIGUSR1 handler that
appends the process's RSS, glibc heap in use/free, the decision-log backlog and the counters to a JSON-lines
file), then runs load phases and prints the highest RSS seen in each (sampled every 0.25 s).

``python -m bench.decide_rss [4000:15,wrk:10,idle:5]`` - a phase is ``<rate>:<seconds>`` (open loop, as
``bench.latency``), ``wrk:<seconds>`` (``wrk -c32``, saturation) or ``idle:<seconds>``.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STATS_ENV = "PULSE_RSS_STATS"


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _stats(app: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"t": time.time(), "rss_mib": round(_rss_mib(), 1), "gc_objects": len(gc.get_objects())}
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        mi = libc.mallinfo2()
        d["malloc_in_use_mib"] = round(mi.uordblks / 2**20, 1)
        d["malloc_free_mib"] = round(mi.fordblks / 2**20, 1)
    except (OSError, AttributeError):
        pass
    svc = getattr(app.app.state, "services", None)
    if svc is not None and svc.decision_log is not None:
        dl = svc.decision_log
        d["decision_log_buffered"] = len(dl._buf)
        d["decision_log_held_mib"] = round(getattr(dl, "held_bytes", 0) / 2**20, 1)
        d["decision_log_sent"] = dl.sent
        d["errors"] = dict(svc.metrics.errors.values)
        d["decisions"] = dict(svc.metrics.decisions.values)
    return d


def __getattr__(name: str) -> Any:
    """``bench.decide_rss:app``, for uvicorn: the API with the SIGUSR1 stats dump."""
    if name != "app":
        raise AttributeError(name)
    from serving.app import app

    out = os.environ[STATS_ENV]

    def dump(*_: object) -> None:
        with open(out, "a") as f:
            f.write(json.dumps(_stats(app)) + "\n")

    signal.signal(signal.SIGUSR1, dump)
    globals()["app"] = app
    return app


def main(argv: list[str] | None = None) -> int:
    from bench.common import Infra, start_api
    from bench.latency import make_bodies, run_open_loop, run_wrk
    from bench.measure import rss_bytes
    from bench.traffic import EventFactory, populate_profiles

    argv = sys.argv[1:] if argv is None else argv
    phases = (argv[0] if argv else "4000:15,wrk:10,idle:5").split(",")
    stats_file = Path(tempfile.mkstemp(prefix="pulse-rss-", suffix=".jsonl")[1])
    with Infra.started(quick=True) as infra:
        stack = infra.stack()
        f, rng, now_ms = EventFactory(11), random.Random(5), int(time.time() * 1000)
        customers, anons = [f"c-lat-{i}" for i in range(2400)], [f"a-lat-{i}" for i in range(600)]
        hs = [f.history(v, rng.randint(10, 60), customer=True, end_ms=now_ms) for v in customers]
        hs += [f.history(v, rng.randint(10, 60), customer=False, end_ms=now_ms) for v in anons]
        asyncio.run(populate_profiles(stack.redis_url, hs))
        bodies, _ = make_bodies(customers, anons, 4000)
        bodies_file = Path(tempfile.mkstemp(suffix=".jsonl")[1])
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        env: dict[str, Any] = {STATS_ENV: str(stats_file)}
        api, url = start_api(infra, stack, name="api_rss", app="bench.decide_rss:app", **env)
        pid = api.proc.pid
        samples: list[tuple[str, float]] = []
        stop, phase = threading.Event(), ["start"]

        def sampler() -> None:
            while not stop.is_set():
                samples.append((phase[0], rss_bytes(pid) / 2**20))
                stop.wait(0.25)

        threading.Thread(target=sampler, daemon=True).start()
        try:
            run_open_loop(url, bodies, 200, 1.0, 0.0, connections=16)
            os.kill(pid, signal.SIGUSR1)
            for ph in phases:
                kind, secs = ph.split(":")
                phase[0] = ph
                if kind == "wrk":
                    w = run_wrk(url, bodies_file, float(secs))
                    note = f"{w['rate']} req/s, errors {w['errors']}"
                elif kind == "idle":
                    time.sleep(float(secs))
                    note = ""
                else:
                    r = run_open_loop(url, bodies, float(kind), float(secs), 0.5, grace=1.0)
                    note = f"achieved {r['achieved_rate']}/s, timeouts {r['timeouts']}, degraded {r['degraded']}"
                os.kill(pid, signal.SIGUSR1)
                time.sleep(0.3)
                peak = max((v for p, v in samples if p == ph), default=0.0)
                print(f"{ph:>10}: RSS max {peak:6.1f} MiB, after {rss_bytes(pid) / 2**20:6.1f} MiB  {note}", flush=True)
        finally:
            stop.set()
            api.stop()
            bodies_file.unlink(missing_ok=True)
    for line in stats_file.read_text().splitlines():
        print(line)
    stats_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
