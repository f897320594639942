"""Freshness: from an event being published to the first decision that reflects it, under background load.

The real worker and the real API run on the local Kafka and Redis; a background producer (its own process)
publishes realistic events at a few thousand per second. Each sample then

1. picks a visitor nobody has seen, whose decision is therefore not personalised;
2. publishes one ``click`` for it with aiokafka (``acks=all``) and starts the clock just before the send;
3. polls Redis (every 1 ms) until the visitor's profile key exists, then ``POST /v1/decide`` (every 2 ms,
   keep-alive) until the answer says ``"personalised": true``: the first decision that reflects the event.
   The split gives stream time (event -> Redis) and serving time (Redis -> decision). Serving reads Redis
   on every request (no cache), so polling decide only once the profile exists loses nothing - and it
   keeps the probe from loading the system: every decision is itself published to Kafka and consumed by
   the worker, so decide polling every 2 ms would add ~500 decisions/s of work to the pipeline measured.

Under the same background load, decisions are then offered at 1,000/s and their latency compared with the
same API once the load stopped (``bench/mixed.py``). Then the floor, under the same background load: the
worker is replaced by a plain aiokafka consumer feeding the same ``BatchProcessor`` (no Faust), and
event -> Redis is measured the same way.

The producer is started and used before the first sample, and the first samples are discarded, so the
figures are the steady state (a producer's first send fetches metadata and can take a few hundred ms).

``python -m bench.freshness [--quick]`` runs this benchmark alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson

from bench import mixed
from bench.common import (
    Infra,
    exit_cleanly_on_signals,
    log,
    median,
    start_api,
    start_worker,
    summarise_ms,
    write_result,
)
from bench.http_client import HttpClient
from bench.measure import CpuMeter, RssSampler
from bench.traffic import EventFactory
from engine.kafka_client import kafka_client_kwargs

FRESHNESS_TARGET_MS = 100.0
#: visitors of the background load (bench.mixed asks decisions for its most active ones)
BACKGROUND_VISITORS = 50_000
READY_KEY = "bench:bare-pipeline-ready"
DECIDE_POLL_S = 0.002
REDIS_POLL_S = 0.001


# --------------------------------------------------------------------------------------------------
# background load (a process of its own: python -m bench.freshness background ...)


async def background(bootstrap: str, topic: str, rate: float, seconds: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **kafka_client_kwargs())
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    factory = EventFactory(99)
    stream = factory.stream(10**9, BACKGROUND_VISITORS, prefix="bg-")
    tick = 0.01
    sent = 0
    t0 = time.monotonic()
    try:
        while not stop.is_set() and time.monotonic() - t0 < seconds:
            due = int((time.monotonic() - t0) * rate)
            futures = []
            while sent < due:
                key, value = next(stream)
                # fresh timestamps: the load looks like live traffic
                e = orjson.loads(value)
                e["timestamp"] = int(time.time() * 1000)
                futures.append(await producer.send(topic, value=orjson.dumps(e), key=key))
                sent += 1
            if futures:
                await asyncio.gather(*futures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick)
    finally:
        await producer.stop()
    elapsed = time.monotonic() - t0
    return {"sent": sent, "seconds": round(elapsed, 2), "rate": round(sent / elapsed, 1)}


def start_background(bootstrap: str, topic: str, rate: float, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.freshness", "background", "--bootstrap", bootstrap, "--topic", topic,
         "--rate", str(rate), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def stop_background(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    try:
        return orjson.loads(out.strip().splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError):
        return {"error": (err or b"").decode(errors="replace")[-500:]}


# --------------------------------------------------------------------------------------------------
# the floor: the same BatchProcessor behind a plain aiokafka consumer (no Faust), in a process of its own


async def bare_pipeline(bootstrap: str, topic: str, redis_url: str, group: str) -> None:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaConsumer

    from bench.common import bench_config
    from engine.config import load_config
    from engine.profile_store import ProfileStore
    from streams.pipeline import BatchProcessor, Record

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        return None

    client = aioredis.from_url(redis_url, decode_responses=True)
    proc = BatchProcessor(ProfileStore(client, load_config(bench_config())), no_dlq)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="latest",
                                enable_auto_commit=True, max_poll_records=500, **kafka_client_kwargs())
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        ready = False
        while not stop.is_set():
            if not ready and consumer.assignment():
                # positions are set ("latest"): events published from now on will be seen
                for tp in consumer.assignment():
                    await consumer.position(tp)
                await client.set(READY_KEY, "1")
                ready = True
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            records = [Record(m.topic, m.partition, m.offset, m.key, m.value) for ms in batch.values() for m in ms]
            if records:
                await proc.process(records)
    finally:
        await consumer.stop()
        await client.aclose()


async def probe_redis_only(stack: Any, redis_url: str, samples: int, discard: int, budget_s: float
                           ) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaProducer

    from engine.layout import anonymous_profile_key

    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=0, **kafka_client_kwargs())
    await producer.start()
    redis = aioredis.from_url(redis_url, decode_responses=True)
    factory = EventFactory(6)
    out: list[float] = []
    timeouts = 0
    started = time.monotonic()
    try:
        await producer.send_and_wait(stack.events_topic, value=b"{}", key=b"warm-up")
        for k in range(samples + discard):
            if time.monotonic() - started > budget_s or (timeouts >= 3 and not out):
                break
            visitor = f"a-floor-{uuid.uuid4().hex[:12]}"
            ev = factory.event(visitor, customer=False, ts_ms=int(time.time() * 1000), session="s", etype="click")
            t0 = time.monotonic()
            await producer.send_and_wait(stack.events_topic, value=orjson.dumps(ev), key=visitor.encode())
            seen = None
            while time.monotonic() - t0 < min(10.0, max(1.0, budget_s - (t0 - started))):
                if await redis.exists(anonymous_profile_key(visitor)):
                    seen = time.monotonic()
                    break
                await asyncio.sleep(REDIS_POLL_S)
            if k >= discard:
                if seen is None:
                    timeouts += 1
                else:
                    out.append(seen - t0)
            await asyncio.sleep(0.03)
    finally:
        await producer.stop()
        await redis.aclose()
    return {"samples": len(out), "timeouts": timeouts, "event_to_redis_ms": summarise_ms(out)}


# --------------------------------------------------------------------------------------------------
# the probe


async def probe(stack: Any, api_url: str, samples: int, discard: int, budget_s: float) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaProducer

    from engine.layout import anonymous_profile_key

    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=0, **kafka_client_kwargs())
    await producer.start()
    redis = aioredis.from_url(stack.redis_url, decode_responses=True)
    http = HttpClient.for_url(api_url)
    factory = EventFactory(5)
    rng = random.Random(9)
    total: list[float] = []
    to_redis: list[float] = []
    serving: list[float] = []
    acks: list[float] = []
    polls: list[float] = []
    timeouts = 0
    started = time.monotonic()
    stopped_early = ""
    try:
        # warm: metadata for the topic, connections, first decide
        await producer.send_and_wait(stack.events_topic, value=b"{}", key=b"warm-up")  # dead-lettered
        await http.post_json("/v1/decide", {"anonymous_id": "warm-up", "placement": "home_hero"})
        for k in range(samples + discard):
            if time.monotonic() - started > budget_s:
                stopped_early = f"time budget of {budget_s:.0f}s used up after {k} samples"
                break
            if timeouts >= 3 and not total:
                stopped_early = "3 samples in a row were never reflected within 10 s: the worker is not keeping up"
                break
            visitor = f"a-fresh-{uuid.uuid4().hex[:12]}"
            body = orjson.dumps({"anonymous_id": visitor, "placement": "home_hero", "n": 3})
            status, answer = await http.request("POST", "/v1/decide", body)
            assert status == 200 and b'"personalised":false' in answer, answer[:300]
            ev = factory.event(visitor, customer=False, ts_ms=int(time.time() * 1000), session="s-fresh",
                               etype="click")
            value = orjson.dumps(ev)
            key = anonymous_profile_key(visitor)
            t0 = time.monotonic()
            await producer.send_and_wait(stack.events_topic, value=value, key=visitor.encode())
            t_ack = time.monotonic()
            deadline = t0 + 10.0
            t_redis = t1 = None
            while time.monotonic() < deadline:  # the profile lands in Redis ...
                if await redis.exists(key):
                    t_redis = time.monotonic()
                    break
                await asyncio.sleep(REDIS_POLL_S)
            n_polls = 0
            while t_redis is not None and time.monotonic() < deadline:  # ... and a decision reflects it
                status, answer = await http.request("POST", "/v1/decide", body)
                n_polls += 1
                if status == 200 and b'"personalised":true' in answer:
                    t1 = time.monotonic()
                    break
                await asyncio.sleep(DECIDE_POLL_S)
            if k < discard:
                continue
            if t1 is None or t_redis is None:
                timeouts += 1
                continue
            total.append(t1 - t0)
            acks.append(t_ack - t0)
            polls.append(n_polls)
            to_redis.append(t_redis - t0)
            serving.append(t1 - t_redis)
            await asyncio.sleep(rng.uniform(0.02, 0.05))
    finally:
        await producer.stop()
        await redis.aclose()
        await http.close()
    return {
        "samples": len(total), "discarded_warmup": discard, "timeouts": timeouts, "stopped_early": stopped_early,
        "event_to_decision_ms": summarise_ms(total),
        "event_to_redis_ms": summarise_ms(to_redis),
        "redis_to_decision_ms": summarise_ms(serving),
        "produce_ack_ms": summarise_ms(acks),
        "decide_polls_per_sample_median": median(polls) if polls else 0,
        "poll_interval_ms": {"decide": DECIDE_POLL_S * 1000, "redis": REDIS_POLL_S * 1000},
    }


def _is_set(redis_url: str, key: str) -> bool:
    import redis as sync_redis

    c = sync_redis.Redis.from_url(redis_url)
    try:
        return bool(c.exists(key))
    finally:
        c.close()


async def _applied(redis_url: str) -> int:
    import redis.asyncio as aioredis

    from engine.layout import worker_stats_key

    c = aioredis.from_url(redis_url, decode_responses=True)
    try:
        return int((await c.hget(worker_stats_key(), "events_applied")) or 0)
    finally:
        await c.aclose()


def run(infra: Infra, rate: float | None = None, samples: int | None = None,
        worker_env: dict[str, str] | None = None, worker_capacity: float | None = None) -> dict[str, Any]:
    """``rate``: background events/s; by default 2000 (1000 quick), but never more than half of
    ``worker_capacity`` (the throughput benchmark's one-worker rate, when it ran first): past its capacity
    the worker's backlog grows without bound and "freshness" only measures the backlog."""
    import uvloop

    quick = infra.quick
    target = 1000.0 if quick else 2000.0
    if rate is None:
        rate = min(target, 0.5 * worker_capacity) if worker_capacity else target
        rate = max(rate, 100.0)
    samples, discard = (samples or (15 if quick else 300)), (3 if quick else 10)
    stack = infra.stack()
    # the deployment under load: an ingest process and a learner process (streams/app.py, roles)
    worker = start_worker(infra, stack, name="ingest", command="ingest", **(worker_env or {}))
    learner = start_worker(infra, stack, name="learner", command="learner", **(worker_env or {}))
    api, api_url = start_api(infra, stack)
    bg = None
    try:
        # the worker is ready when it applies an event
        from bench.traffic import produce_records
        from infra.processes import wait_until

        f = EventFactory(1)
        asyncio.run(produce_records(stack.bootstrap, stack.events_topic, f.stream(10, 10, prefix="ready-")))
        wait_until(lambda: asyncio.run(_applied(stack.redis_url)) > 0, 90, 0.2, "worker to apply events")
        log(f"freshness: background load {rate:.0f} events/s, {samples} samples")
        bg = start_background(stack.bootstrap, stack.events_topic, rate, 3600)
        time.sleep(1.0 if quick else 3.0)  # let the load settle
        applied0, t0 = asyncio.run(_applied(stack.redis_url)), time.monotonic()
        cpu = CpuMeter({"worker": worker.proc.pid, "learner": learner.proc.pid, "api": api.proc.pid,
                        "redis": infra.redis_pid(),
                        "kafka": infra.kafka_pid(), "producer": bg.pid}).start()
        with RssSampler({"worker": worker.proc.pid, "api": api.proc.pid}) as rss:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                res = runner.run(probe(stack, api_url, samples, discard, 12.0 if quick else 150.0))
        res["cpu"] = cpu.stop()
        applied1, t1 = asyncio.run(_applied(stack.redis_url)), time.monotonic()
        # decision latency in this deployment: under the same background load, then idle (bench/mixed.py)
        stopped: dict[str, Any] = {}

        def stop_bg() -> dict[str, Any]:
            assert bg is not None
            stopped.update(stop_background(bg))
            return stopped

        res["decide_under_ingest"] = mixed.measure(
            api_url, lambda: asyncio.run(_applied(stack.redis_url)), visitors=BACKGROUND_VISITORS, quick=quick,
            stop_background=stop_bg)
        res["background"] = stopped
        bg = None
        res["background"]["target_rate"] = rate
        res["background"]["worker_capacity_from_throughput"] = worker_capacity
        res["background"]["capped_by_worker_capacity"] = bool(worker_capacity and rate < target)
        res["background"]["intended_rate"] = target
        res["worker_applied_rate_during_probe"] = round((applied1 - applied0) / (t1 - t0), 1)
        res["rss"] = rss.summary()

        # the floor: same load, same BatchProcessor, a plain aiokafka consumer instead of the Faust worker
        api.stop()
        worker.stop()
        learner.stop()
        log("freshness: floor - the same BatchProcessor behind a bare aiokafka consumer")
        floor_url = infra.redis_url()
        bare = subprocess.Popen(
            [sys.executable, "-m", "bench.freshness", "bare-pipeline", "--bootstrap", stack.bootstrap,
             "--topic", stack.events_topic, "--redis-url", floor_url, "--group", f"bare-{stack.tag}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        bg = start_background(stack.bootstrap, stack.events_topic, rate, 3600)
        try:
            wait_until(lambda: _is_set(floor_url, READY_KEY), 60, 0.1, "bare pipeline to join its group")
            time.sleep(1.0)  # load settles
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                res["floor_bare_pipeline"] = runner.run(probe_redis_only(
                    stack, floor_url, max(8, samples // 3), discard, 6.0 if quick else 60.0))
        finally:
            res.setdefault("floor_bare_pipeline", {})["background"] = stop_background(bg)
            bg = None
            bare.send_signal(signal.SIGTERM)
            try:
                bare.wait(20)
            except subprocess.TimeoutExpired:
                bare.kill()
    finally:
        if bg is not None:
            stop_background(bg)
        api.stop()
        worker.stop()
        learner.stop()
    p = res["event_to_decision_ms"]
    fl = res.get("floor_bare_pipeline", {}).get("event_to_redis_ms", {})
    log(f"freshness: p50 {p.get('p50')} ms, p99 {p.get('p99')} ms over {res['samples']} samples "
        f"(background {res['background'].get('rate')} ev/s, "
        f"worker applied {res['worker_applied_rate_during_probe']}/s); "
        f"floor (bare aiokafka + BatchProcessor, event->redis) p50 {fl.get('p50')} p99 {fl.get('p99')} ms")
    return res


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["background"]:
        ap = argparse.ArgumentParser()
        ap.add_argument("--bootstrap", required=True)
        ap.add_argument("--topic", required=True)
        ap.add_argument("--rate", type=float, required=True)
        ap.add_argument("--seconds", type=float, default=3600)
        a = ap.parse_args(args[1:])
        print(orjson.dumps(asyncio.run(background(a.bootstrap, a.topic, a.rate, a.seconds))).decode(), flush=True)
        return 0
    if args[:1] == ["bare-pipeline"]:
        ap = argparse.ArgumentParser()
        for opt in ("--bootstrap", "--topic", "--redis-url", "--group"):
            ap.add_argument(opt, required=True)
        a = ap.parse_args(args[1:])
        asyncio.run(bare_pipeline(a.bootstrap, a.topic, a.redis_url, a.group))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", type=float, help="background events/s (default 2000 quick, 3000 full)")
    ap.add_argument("--samples", type=int)
    ap.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the worker, e.g. WORKER_BATCH_TIMEOUT=0.005 (experiments)")
    a = ap.parse_args(args)
    exit_cleanly_on_signals()
    with Infra.started(a.quick) as infra:
        res = run(infra, a.rate, a.samples, dict(kv.split("=", 1) for kv in a.worker_env))
    print(write_result("freshness", res, a.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
