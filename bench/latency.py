"""Decision latency under open-loop load, side by side with the bare endpoint and the Redis floor.

* **Open loop, coordinated-omission safe.** Debian's ``wrk`` has no constant-rate mode (that is wrk2), so the
  load generator is :class:`OpenLoop`: asyncio (uvloop) protocols on raw HTTP/1.1 keep-alive connections.
  Request ``i`` is *scheduled* at ``t0 + i / rate``; it is sent on a free connection at that time, or waits
  for one, and its latency is measured **from the scheduled time**, so a slow server cannot slow the
  generator down and hide its own queueing (coordinated omission). The generator's own lag (dispatch time
  minus scheduled time) and its achieved rate against the bare endpoint are reported, to show it is not
  the bottleneck.
* **Realistic mix.** A few thousand profiles are written first through the worker's own ``BatchProcessor``
  (same code path as the stream); requests are ~70% known visitors (customer ids, plus returning anonymous
  ids) and ~30% new anonymous visitors, over 4 placements, each with 20-50 candidate actions out of the 60 of
  ``bench/catalogue.toml``.
* **Side by side, same run.** For each rate: the bare endpoint (``bench/bare_app.py``, same FastAPI +
  uvicorn command line, constant JSON, served by the same kind of ASGI fast path as ``/v1/decide``) and ours.
  Then throughput at saturation with ``wrk -c 32`` (closed loop) for both, plus the constant answer through
  FastAPI's routing (``bare_route``, the floor before the fast path), and the physical floor: one Redis
  ``HGETALL`` round trip from Python (redis-py + hiredis,
  as the API uses it), plus the full profile read (the API's one-pipeline read).

``python -m bench.latency [--quick]`` runs this benchmark alone (``python -m bench.run`` runs them all).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import contextlib
import gc
import random
import re
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    WRK_DIR,
    Infra,
    bench_config,
    config_summary,
    exit_cleanly_on_signals,
    log,
    start_api,
    summarise_ms,
    write_result,
)
from bench.http_client import content_length, http_request
from bench.measure import CpuMeter, RssSampler, child_pids, pyspy_record, summarise_profile
from bench.traffic import EventFactory, populate_profiles

#: 6,000 is past one API process's capacity on the reference machine (~4,000-5,000 decisions/s): it shows
#: the overload behaviour (load shedding), and the generator's check against the bare endpoint still holds it.
RATES = (500, 1000, 2000, 4000, 6000)
P99_TARGET_MS = 10.0
#: the API's settings for the saturation runs (wrk): full decisions only
NO_SHEDDING: dict[str, Any] = {"DECIDE_SHED_TARGET_MS": "0"}  # start_api env
TARGET_RATE = 1000
#: keys on vs keys off at TARGET_RATE: the same API settings, one with API keys (a public key with an allowed
#: origin, as a browser page sends it), alternated this many times in the same run
KEY_ROUNDS = 3
KEY_ORIGIN = "https://shop.example"


# --------------------------------------------------------------------------------------------------
# the open-loop generator


class _Conn(asyncio.Protocol):
    __slots__ = ("gen", "transport", "buf", "need", "body_at", "status", "idx")

    def __init__(self, gen: OpenLoop) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.body_at = 0
        self.status = 0
        self.idx = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection: a Transport
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(Exception):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                length = content_length(bytes(buf[:end + 2]))
                self.status = int(buf[9:12])
                self.body_at = end + 4
                self.need = end + 4 + length
            if len(buf) < self.need:
                return
            degraded = buf.find(b'"degraded":true', self.body_at, self.need) >= 0
            del buf[:self.need]
            self.need = -1
            self.gen.completed(self, self.status, degraded)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class OpenLoop:
    """Constant-rate load on ``connections`` keep-alive connections; latencies from the scheduled time.

    Like a proxy in front of the API, it stamps each request with the time it had the request to send
    (``X-Request-Start: t=<epoch us>``): a request waiting for a free connection waits in the proxy, and an
    API told to read the stamp (``DECIDE_QUEUE_HEADER``, ``bench.admission``) counts that wait."""

    def __init__(self, host: str, port: int, requests: Sequence[bytes], rate: float, duration: float,
                 warmup: float, connections: int = 64, grace: float = 3.0) -> None:
        self.host, self.port, self.requests = host, port, requests
        # each request split after its last header line, for the stamp to go in between
        self._split = [(r[:r.index(b"\r\n\r\n") + 2], r[r.index(b"\r\n\r\n") + 2:]) for r in requests]
        self._wall_offset = time.time() - time.monotonic()
        self.rate, self.duration, self.warmup = rate, duration, warmup
        self.n = int(rate * (warmup + duration))
        self.n_warm = int(rate * warmup)
        self.connections, self.grace = connections, grace
        self.sent = array.array("d", bytes(8 * self.n))
        self.dispatched = array.array("d", bytes(8 * self.n))
        self.done = array.array("d", bytes(8 * self.n))
        self.status = array.array("h", [-1]) * self.n
        self.degraded = bytearray(self.n)
        # FIFO: every connection is used in turn, so none sits idle long enough for the server to close it
        self.free: collections.deque[_Conn] = collections.deque()
        self.backlog: list[int] = []  # indexes waiting for a connection (FIFO via head pointer)
        self._bhead = 0
        self.n_done = 0
        self.t0 = 0.0
        self.conns: list[_Conn] = []
        self.reconnects = 0

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        self.conns.append(conn)
        return conn

    def _send(self, conn: _Conn, i: int) -> None:
        conn.idx = i
        assert conn.transport is not None
        head, rest = self._split[i % len(self._split)]
        stamp = b"x-request-start: t=%d\r\n" % ((self.dispatched[i] + self._wall_offset) * 1e6)
        conn.transport.write(head + stamp + rest)
        self.sent[i] = time.monotonic()

    def completed(self, conn: _Conn, status: int, degraded: bool) -> None:
        i = conn.idx
        if i < 0:
            return
        self.done[i] = time.monotonic()
        self.status[i] = status
        self.degraded[i] = degraded
        self.n_done += 1
        conn.idx = -1
        self._give(conn)

    def lost(self, conn: _Conn) -> None:
        if conn in self.free:
            self.free.remove(conn)
        if conn.idx >= 0:
            self.done[conn.idx] = time.monotonic()
            self.status[conn.idx] = 0
            self.n_done += 1
            conn.idx = -1
        if not self._closing:
            self.reconnects += 1
            asyncio.get_running_loop().create_task(self._replace())

    async def _replace(self) -> None:
        with contextlib.suppress(OSError):
            self._give(await self._open())

    def _give(self, conn: _Conn) -> None:
        """A free connection takes the oldest waiting request, or joins the free pool."""
        if self._bhead < len(self.backlog):
            j = self.backlog[self._bhead]
            self._bhead += 1
            self._send(conn, j)
        else:
            self.free.append(conn)

    _closing = False

    async def run(self) -> dict[str, Any]:
        for _ in range(self.connections):
            self.free.append(await self._open())
        gc.collect()
        gc.disable()
        cpu0 = time.process_time()
        rate, n = self.rate, self.n
        self.t0 = t0 = time.monotonic() + 0.05
        i = 0
        try:
            while i < n:
                now = time.monotonic()
                due = min(n, int((now - t0) * rate) + 1)
                while i < due:
                    self.dispatched[i] = now
                    if self.free:
                        self._send(self.free.popleft(), i)
                    else:
                        self.backlog.append(i)
                    i += 1
                # libuv/epoll timers have 1 ms resolution: wake at most every ms and send what is due
                await asyncio.sleep(max(0.001, t0 + i / rate - time.monotonic()))
            deadline = time.monotonic() + self.grace
            while self.n_done < n and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            cpu = time.process_time() - cpu0
            self._closing = True
            for c in self.conns:
                if c.transport is not None:
                    c.transport.close()
            gc.enable()
        return self.summary(cpu)

    def summary(self, cpu_s: float) -> dict[str, Any]:
        t0, rate = self.t0, self.rate
        lat_sched, lat_sent, lag = [], [], []
        errors = timeouts = degraded = 0
        first, last = self.n_warm, self.n
        for i in range(first, last):
            st = self.status[i]
            sched = t0 + i / rate
            lag.append(self.dispatched[i] - sched)
            if st == 200:
                lat_sched.append(self.done[i] - sched)
                lat_sent.append(self.done[i] - self.sent[i])
                degraded += self.degraded[i]
            elif st == -1:
                timeouts += 1
            else:
                errors += 1
        ok = len(lat_sched)
        ends = [self.done[i] for i in range(first, last) if self.status[i] >= 0]
        span = (max(ends) - (t0 + first / rate)) if ends else float("nan")
        sends = [self.sent[i] for i in range(first, last) if self.sent[i] > 0]
        send_span = (max(sends) - min(sends)) if len(sends) > 1 else float("nan")
        return {
            "target_rate": rate, "duration_s": self.duration, "requests": last - first,
            "ok": ok, "errors": errors, "timeouts": timeouts, "degraded": degraded,
            "achieved_rate": round(ok / span, 1) if span == span and span > 0 else 0.0,
            "send_rate": round((len(sends) - 1) / send_span, 1) if send_span == send_span and send_span > 0 else 0.0,
            "latency_ms": summarise_ms(lat_sched),
            "service_time_ms": summarise_ms(lat_sent),
            "generator_lag_ms": summarise_ms(lag),
            "generator_cpu_share": round(cpu_s / max(self.duration + self.warmup, 1e-9), 3),
            "connections": self.connections, "reconnects": self.reconnects,
            "answered_incl_warmup": sum(1 for i in range(self.n) if self.status[i] > 0),
        }


def run_open_loop(base_url: str, bodies: Sequence[bytes], rate: float, duration: float, warmup: float,
                  connections: int = 64, grace: float = 3.0, headers: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    import uvloop

    host, port = base_url.split("://", 1)[1].rsplit(":", 1)
    reqs = [http_request("POST", "/v1/decide", b, f"{host}:{port}", headers) for b in bodies]
    gen = OpenLoop(host, int(port), reqs, rate, duration, warmup, connections, grace)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(gen.run())


# --------------------------------------------------------------------------------------------------
# the request mix


def make_bodies(known_customers: Sequence[str], known_anonymous: Sequence[str], n: int, seed: int = 7
                ) -> tuple[list[bytes], dict[str, int]]:
    """``n`` request bodies: ~70% known visitors, ~30% new anonymous ones; 20-50 candidates each."""
    from engine.config import load_config

    cfg = load_config(bench_config())
    rng = random.Random(seed)
    placements = [("product_recs", 0.45), ("home_hero", 0.25), ("cart_recs", 0.2), ("email", 0.1)]
    pools = {p: [a.id for a in cfg.actions_for(p)] for p, _ in placements}
    mix = {"known_customer": 0, "known_anonymous": 0, "new_anonymous": 0}
    bodies = []
    for _ in range(n):
        x = rng.random()
        body: dict[str, Any] = {}
        if x < 0.56:
            body["customer_id"] = rng.choice(known_customers)
            mix["known_customer"] += 1
        elif x < 0.70:
            body["anonymous_id"] = rng.choice(known_anonymous)
            mix["known_anonymous"] += 1
        else:
            body["anonymous_id"] = f"a-new-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
            mix["new_anonymous"] += 1
        y, acc, placement = rng.random(), 0.0, placements[-1][0]
        for p, w in placements:
            acc += w
            if y <= acc:
                placement = p
                break
        body["placement"] = placement
        pool = pools[placement]
        k = rng.randint(min(20, len(pool)), min(50, len(pool)))
        body["candidates"] = rng.sample(pool, k)
        body["context"] = {"channel": rng.choice(("web", "web", "app")), "locale": "en-GB",
                           "url": f"https://shop.example/{rng.choice(('', 'cart', 'shoes', 'books'))}"}
        bodies.append(orjson.dumps(body))
    return bodies, mix


# --------------------------------------------------------------------------------------------------
# closed loop (wrk) and the Redis floor


def run_wrk(base_url: str, bodies_file: Path, seconds: float, connections: int = 32, threads: int = 2
            ) -> dict[str, Any]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "2s",
            "-s", str(WRK_DIR / "decide.lua"), base_url, "--", str(bodies_file)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    m = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    raw = orjson.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    return {
        "connections": connections, "threads": threads, "requests": raw["requests"],
        "rate": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "errors": errors + (int(non2xx.group(1)) if non2xx and not raw["errors_status"] else 0),
        "latency_ms": {"p50": raw["p50_us"] / 1000, "p90": raw["p90_us"] / 1000, "p99": raw["p99_us"] / 1000,
                       "p99_9": raw["p99_9_us"] / 1000, "max": raw["max_us"] / 1000},
        "command": " ".join(argv),
    }


async def redis_floor(redis_url: str, customers: Sequence[str], n: int) -> dict[str, Any]:
    """Sequential round trips from Python, with the API's client settings (redis-py asyncio + hiredis)."""
    import redis.asyncio as aioredis

    from engine.config import load_config
    from engine.layout import profile_key
    from engine.profile_store import ProfileStore

    client = aioredis.from_url(redis_url, decode_responses=True, health_check_interval=0)
    store = ProfileStore(client, load_config(bench_config()))
    rng = random.Random(3)
    try:
        await client.ping()
        hget, pipe, ping = [], [], []
        for _ in range(n):
            cid = rng.choice(customers)
            t = time.perf_counter()
            await client.ping()
            ping.append(time.perf_counter() - t)
            t = time.perf_counter()
            await client.hgetall(profile_key(cid))
            hget.append(time.perf_counter() - t)
            t = time.perf_counter()
            await store.read_raw(cid)
            pipe.append(time.perf_counter() - t)
        return {"ping_ms": summarise_ms(ping), "hgetall_ms": summarise_ms(hget),
                "profile_pipeline_read_ms": summarise_ms(pipe), "profile_read_commands": store.read_width}
    finally:
        await client.aclose()


def decision_counters(base_url: str) -> dict[str, float]:
    import httpx

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out = {}
    for m in re.finditer(r'^pulse_(decisions_total|errors_total)\{\w+="([^"]*)"\} ([0-9.e+]+)$', text, re.M):
        out[f"{m.group(1)}:{m.group(2)}"] = float(m.group(3))
    return out


# --------------------------------------------------------------------------------------------------


def write_profiles(redis_url: str, quick: bool) -> tuple[list[str], list[str], int, float]:
    """The visitors decisions are asked for: 3,000 (quick: 500) profiles of 10-60 events, written through the
    worker's ``BatchProcessor``. Returns the customers, the anonymous visitors, the events written and the
    rate they were written at."""
    n_customers, n_anon = (400, 100) if quick else (2400, 600)
    ev_lo, ev_hi = (10, 30) if quick else (10, 60)
    log(f"latency: writing {n_customers + n_anon} profiles through BatchProcessor")
    f = EventFactory(11)
    now_ms = int(time.time() * 1000)
    rng = random.Random(5)
    customers = [f"c-lat-{i}" for i in range(n_customers)]
    anons = [f"a-lat-{i}" for i in range(n_anon)]
    histories = [f.history(v, rng.randint(ev_lo, ev_hi), customer=True, end_ms=now_ms) for v in customers]
    histories += [f.history(v, rng.randint(ev_lo, ev_hi), customer=False, end_ms=now_ms) for v in anons]
    populate_rate = asyncio.run(populate_profiles(redis_url, histories))
    return customers, anons, sum(len(h) for h in histories), populate_rate


def run(infra: Infra) -> dict[str, Any]:
    quick = infra.quick
    duration, warmup, grace = (1.0, 0.5, 1.0) if quick else (15.0, 3.0, 3.0)
    wrk_seconds = 2 if quick else 10
    stack = infra.stack()
    customers, anons, n_events, populate_rate = write_profiles(stack.redis_url, quick)
    n_customers, n_anon = len(customers), len(anons)

    bodies, mix = make_bodies(customers, anons, 4000)
    bodies_file = Path(tempfile.mkstemp(prefix="pulse-bench-bodies-", suffix=".jsonl")[1])
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    cands = [len(orjson.loads(b)["candidates"]) for b in bodies]

    api, api_url = start_api(infra, stack)
    from serving.auth import ADMIN, PUBLIC, SERVER, new_key

    keys = {role: new_key(role) for role in (PUBLIC, SERVER, ADMIN)}
    api_keyed, api_keyed_url = start_api(
        infra, stack, name="api_keys_on",
        API_KEYS=f"public:{keys[PUBLIC]}:{KEY_ORIGIN},server:{keys[SERVER]},admin:{keys[ADMIN]}")
    browser = {"Authorization": f"Bearer {keys[PUBLIC]}", "Origin": KEY_ORIGIN}
    # Saturation is measured in full decisions: with load shedding on, a closed loop's excess connections would
    # cycle through cheap shed answers (one run: 39,865 shed of 71,727) and inflate the rate.
    api_full, api_full_url = start_api(infra, stack, name="api_no_shedding", **NO_SHEDDING)
    bare, bare_url = start_api(infra, stack, name="bare", app="bench.bare_app:app")
    bare_route, bare_route_url = start_api(infra, stack, name="bare_route", app="bench.bare_app:route_app")
    redis_pid = infra.redis_pid()
    results: dict[str, Any] = {"rates": {}, "saturation": {}}
    try:
        log("latency: warming up both servers")
        for url in (api_url, api_full_url, bare_url):
            run_open_loop(url, bodies, 200, 0.5 if quick else 2.0, 0.0, connections=16, grace=grace)
        run_open_loop(api_keyed_url, bodies, 200, 0.5 if quick else 2.0, 0.0, connections=16, grace=grace,
                      headers=browser)
        with RssSampler({"api": api.proc.pid, "bare": bare.proc.pid}) as rss:
            for rate in RATES:
                for name, url, proc in (("bare", bare_url, bare), ("ours", api_url, api)):
                    before = decision_counters(url) if name == "ours" else {}
                    cpu = CpuMeter({"server": proc.proc.pid, "redis": redis_pid}).start()
                    r = run_open_loop(url, bodies, rate, duration, warmup, grace=grace)
                    r["cpu"] = cpu.stop()
                    answered = r["answered_incl_warmup"]
                    if name == "ours":
                        after = decision_counters(url)
                        r["server_counters"] = {k: after[k] - before.get(k, 0.0) for k in after
                                                if after[k] != before.get(k, 0.0)}
                        answered = int(sum(v for k, v in r["server_counters"].items()
                                           if k.startswith("decisions_total:")) or answered)
                    # CPU per request the server answered (an overloaded server answers fewer than were sent)
                    r["server_cpu_ms_per_request"] = round(1000 * r["cpu"]["server_cpu_s"] / max(1, answered), 3)
                    results["rates"].setdefault(str(rate), {})[name] = r
                    lat = r["latency_ms"]
                    log(f"latency: {name:4} @ {rate:>5}/s -> achieved {r['achieved_rate']:>7}/s  p50 {lat.get('p50')} "
                        f"p99 {lat.get('p99')} p99.9 {lat.get('p99_9')} ms  errors {r['errors']} timeouts "
                        f"{r['timeouts']} degraded {r['degraded']}")
            results["keys"] = keys_on_vs_off(api_url, api_keyed_url, bodies, browser, duration, warmup, grace,
                                             pids={"off": api.proc.pid, "on": api_keyed.proc.pid})
            for name, url, proc in (("bare", bare_url, bare), ("bare_route", bare_route_url, bare_route),
                                    ("ours", api_full_url, api_full)):
                before = decision_counters(url) if name == "ours" else {}
                cpu = CpuMeter({"server": proc.proc.pid, "redis": redis_pid}).start()
                w = run_wrk(url, bodies_file, wrk_seconds)
                w["cpu"] = cpu.stop()
                if name == "ours":  # wrk does not read answers: the server says how many were degraded
                    after = decision_counters(url)
                    w["server_counters"] = {k: after[k] - before.get(k, 0.0) for k in after
                                            if after[k] != before.get(k, 0.0)}
                    w["load_shedding"] = "off"
                w["server_cpu_ms_per_request"] = round(1000 * w["cpu"]["server_cpu_s"] / max(1, w["requests"]), 3)
                w["redis_cpu_us_per_request"] = round(1e6 * w["cpu"]["redis_cpu_s"] / max(1, w["requests"]), 1)
                results["saturation"][name] = w
                log(f"latency: wrk -c32 {name}: {w['rate']} req/s, p99 {w['latency_ms']['p99']} ms, "
                    f"errors {w['errors']}")
        results["rss"] = rss.summary()


        if infra.profile:
            log("latency: profiling the API with py-spy at 1000 req/s")
            prof_s = 3.0 if quick else 15.0
            out = infra.results_file("profile-api", "txt")
            with pyspy_record(api.proc.pid, prof_s + 1, out) as rec:
                time.sleep(0.5)
                under = run_open_loop(api_url, bodies, TARGET_RATE, prof_s, 0.5, grace=grace)
            results["profile"] = {"file": str(out.relative_to(infra.repo)), "load": {
                "rate": TARGET_RATE, "latency_ms": under["latency_ms"]}, **summarise_profile(rec.path, rec.rate)}

        # uvicorn --workers 2 for both: does a second server process on 2 shared cores buy throughput?
        api.stop()
        api_keyed.stop()
        api_full.stop()
        bare.stop()
        bare_route.stop()
        for name, app in (("bare", "bench.bare_app:app"), ("ours", "serving.app:app")):
            proc, url = start_api(infra, stack, name=f"{name}-x2", app=app, workers=2,
                                  **(NO_SHEDDING if name == "ours" else {}))
            try:
                time.sleep(1.0)  # both server processes up
                servers = child_pids(proc.proc.pid)
                run_wrk(url, bodies_file, 1)  # warm-up: each process loads its models and connections
                cpu = CpuMeter({**{f"server{i}": p for i, p in enumerate(servers)}, "redis": redis_pid}).start()
                w = run_wrk(url, bodies_file, wrk_seconds)
                w["cpu"] = cpu.stop()
                server_cpu = sum(v for k, v in w["cpu"].items() if k.startswith("server"))
                w["child_processes"] = len(servers)  # the server processes (+ multiprocessing helpers)
                w["server_cpu_ms_per_request"] = round(1000 * server_cpu / max(1, w["requests"]), 3)
                results["saturation"][f"{name}_2_processes"] = w
                log(f"latency: wrk -c32 {name}, 2 server processes: {w['rate']} req/s, "
                    f"p99 {w['latency_ms']['p99']} ms, errors {w['errors']}")
            finally:
                proc.stop()
    finally:
        api.stop()
        api_keyed.stop()
        api_full.stop()
        bare.stop()
        bare_route.stop()
        bodies_file.unlink(missing_ok=True)

    floor_n = 1000 if quick else 10000
    results["redis_floor"] = asyncio.run(redis_floor(stack.redis_url, customers, floor_n))

    # headline figures
    held = [r for r in RATES if _holds(results["rates"][str(r)]["ours"], r)]
    ours_sat = results["saturation"]["ours"]["rate"]
    bare_sat = results["saturation"]["bare"]["rate"]
    ours2, bare2 = results["saturation"]["ours_2_processes"]["rate"], results["saturation"]["bare_2_processes"]["rate"]
    results["summary"] = {
        "highest_rate_with_p99_under_10ms": max(held) if held else 0,
        "throughput_ratio_vs_bare": round(ours_sat / bare_sat, 3) if bare_sat else 0.0,
        # against the constant answer served through FastAPI's routing (the floor before the fast path)
        "throughput_ratio_vs_bare_route": round(ours_sat / results["saturation"]["bare_route"]["rate"], 3)
        if results["saturation"]["bare_route"]["rate"] else 0.0,
        "api_cpu_ms_per_decision_at_saturation": results["saturation"]["ours"]["server_cpu_ms_per_request"],
        "two_processes": {"ours": ours2, "bare": bare2, "ratio_vs_bare": round(ours2 / bare2, 3) if bare2 else 0.0,
                          "ours_gain_over_one_process": round(ours2 / ours_sat, 2) if ours_sat else 0.0},
        "at_1000": results["rates"][str(TARGET_RATE)]["ours"],
        "generator_check": {str(r): {"target": r, "bare_achieved": results["rates"][str(r)]["bare"]["achieved_rate"],
                                     "bare_p99_ms": results["rates"][str(r)]["bare"]["latency_ms"].get("p99"),
                                     "generator_lag_p99_ms":
                                         results["rates"][str(r)]["bare"]["generator_lag_ms"].get("p99")}
                            for r in RATES},
    }
    results["setup"] = {
        "profiles": n_customers + n_anon, "events_written": n_events, "populate_events_per_s": round(populate_rate),
        "request_mix": mix, "candidates_per_request": {"min": min(cands), "max": max(cands),
                                                        "mean": round(sum(cands) / len(cands), 1)},
        "open_loop": {"duration_s": duration, "warmup_s": warmup, "connections": 64, "rates": list(RATES)},
        "config": config_summary(), "uvicorn_argv": api.argv,
    }
    return results


def keys_on_vs_off(off_url: str, on_url: str, bodies: Sequence[bytes], browser: dict[str, str],
                   duration: float, warmup: float, grace: float, rounds_n: int = KEY_ROUNDS,
                   control_url: str | None = None, on_control_url: str | None = None,
                   pids: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """Decide at TARGET_RATE without keys and with them (Bearer public key + allowed Origin), alternated
    ``rounds_n`` times; the medians of the rounds' p99s side by side.

    With ``control_url`` (a second API process without keys, sent the same browser headers) a third arm says
    how far two identically configured processes differ in the same run: a keys-on gap inside that spread is
    the process, not the keys. ``on_control_url``, a second keys-on process (``on2``), says the same of the keys'
    side: a gap both keys-on processes show is the keys'.

    ``pids`` (arm -> server pid) adds each arm's server CPU per request: what the keys cost, without the
    scheduling noise a shared machine puts in a p99."""
    arms: dict[str, tuple[str, dict[str, str] | None]] = {"off": (off_url, None), "on": (on_url, browser)}
    if control_url is not None:
        arms["off2"] = (control_url, browser)
    if on_control_url is not None:
        arms["on2"] = (on_control_url, browser)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    # one discarded round each first: the keys-off API has served every rate before, the others only the warm-up
    for url, headers in arms.values():
        run_open_loop(url, bodies, TARGET_RATE, duration, warmup, grace=grace, headers=headers)
    names = list(arms)
    for i in range(rounds_n):
        # rotate the order, so no arm always runs first or after the same one
        for which in names[i % len(names):] + names[:i % len(names)]:
            url, headers = arms[which]
            cpu = CpuMeter({"server": (pids or {}).get(which)}).start()
            r = run_open_loop(url, bodies, TARGET_RATE, duration, warmup, grace=grace, headers=headers)
            r["cpu"] = cpu.stop()
            if "server_cpu_s" in r["cpu"]:
                r["server_cpu_us_per_request"] = round(1e6 * r["cpu"]["server_cpu_s"]
                                                       / max(1, r["answered_incl_warmup"]), 1)
            rounds[which].append(r)
            lat = r["latency_ms"]
            log(f"latency: keys {which:4} @ {TARGET_RATE}/s -> achieved {r['achieved_rate']}/s p50 {lat.get('p50')} "
                f"p99 {lat.get('p99')} ms  errors {r['errors']} timeouts {r['timeouts']} degraded {r['degraded']}")

    def side(runs: list[dict[str, Any]]) -> dict[str, Any]:
        p99s = sorted(r["latency_ms"].get("p99", float("nan")) for r in runs)
        p50s = sorted(r["latency_ms"].get("p50", float("nan")) for r in runs)
        cpus = sorted(r["server_cpu_us_per_request"] for r in runs if "server_cpu_us_per_request" in r)
        return {"p99_ms_median": p99s[len(p99s) // 2], "p50_ms_median": p50s[len(p50s) // 2], "p99_ms": p99s,
                "server_cpu_us_per_request_median": cpus[len(cpus) // 2] if cpus else None,
                "errors": sum(r["errors"] + r["timeouts"] for r in runs),
                "degraded": sum(r["degraded"] for r in runs), "ok": sum(r["ok"] for r in runs),
                "requests": sum(r["requests"] for r in runs)}

    sides = {name: side(runs) for name, runs in rounds.items()}
    base = sides["off"]["p99_ms_median"]
    out: dict[str, Any] = {"rate": TARGET_RATE, "rounds": rounds_n, "duration_s": duration, "origin": KEY_ORIGIN,
                           **sides,
                           "p99_ratio_on_vs_off": round(sides["on"]["p99_ms_median"] / base, 3) if base else None}
    for other in ("off2", "on2"):
        if other in sides:
            out[f"p99_ratio_{other}_vs_off"] = round(sides[other]["p99_ms_median"] / base, 3) if base else None
    cpu_off = sides["off"]["server_cpu_us_per_request_median"]
    for other in ("on", "off2", "on2"):
        per_request = sides.get(other, {}).get("server_cpu_us_per_request_median")
        if per_request is not None and cpu_off:
            out[f"cpu_ratio_{other}_vs_off"] = round(per_request / cpu_off, 3)
    return out


def _holds(r: dict[str, Any], rate: float) -> bool:
    p99 = r["latency_ms"].get("p99", float("inf"))
    return (p99 <= P99_TARGET_MS and r["errors"] == 0 and r["timeouts"] == 0 and r["degraded"] == 0
            and r["achieved_rate"] >= 0.95 * rate)


def run_keys_only(infra: Infra, seconds: float, rounds_n: int) -> dict[str, Any]:
    """Only the keys on / off comparison, with longer rounds than ``run`` gives it (``--keys-only``)."""
    from serving.auth import ADMIN, PUBLIC, SERVER, new_key

    stack = infra.stack()
    customers, anons, _, _ = write_profiles(stack.redis_url, infra.quick)
    bodies, _ = make_bodies(customers, anons, 4000)
    keys = {role: new_key(role) for role in (PUBLIC, SERVER, ADMIN)}
    api, api_url = start_api(infra, stack)
    api_keyed, api_keyed_url = start_api(
        infra, stack, name="api_keys_on",
        API_KEYS=f"public:{keys[PUBLIC]}:{KEY_ORIGIN},server:{keys[SERVER]},admin:{keys[ADMIN]}")
    browser = {"Authorization": f"Bearer {keys[PUBLIC]}", "Origin": KEY_ORIGIN}
    control, control_url = start_api(infra, stack, name="api_keys_off_2")
    keyed_control, keyed_control_url = start_api(
        infra, stack, name="api_keys_on_2",
        API_KEYS=f"public:{keys[PUBLIC]}:{KEY_ORIGIN},server:{keys[SERVER]},admin:{keys[ADMIN]}")
    try:
        return {"keys": keys_on_vs_off(api_url, api_keyed_url, bodies, browser, seconds, 1.0, 3.0, rounds_n,
                                       control_url=control_url, on_control_url=keyed_control_url,
                                       pids={"off": api.proc.pid, "on": api_keyed.proc.pid,
                                             "off2": control.proc.pid, "on2": keyed_control.proc.pid})}
    finally:
        for proc in (api, api_keyed, control, keyed_control):
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also profile the API with py-spy")
    ap.add_argument("--keys-only", action="store_true",
                    help="only decide at 1,000 req/s with API keys on vs off (--seconds per round, --rounds)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=KEY_ROUNDS)
    args = ap.parse_args(argv)
    exit_cleanly_on_signals()
    with Infra.started(args.quick, args.profile) as infra:
        if args.keys_only:
            print(write_result("latency-keys", run_keys_only(infra, args.seconds, args.rounds), args.quick))
            return 0
        res = run(infra)
    print(write_result("latency", res, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
