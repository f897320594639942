"""Freshness: from an event being published to the first decision that reflects it, under background load.

The real worker and the real API run on the local Kafka and Redis; a background producer (its own process)
publishes realistic events at a few thousand per second. Each sample then

1. picks a visitor nobody has seen, whose decision is therefore not personalised;
2. publishes one ``click`` for it with aiokafka (``acks=all``) and starts the clock just before the send;
3. polls ``POST /v1/decide`` (every 2 ms, keep-alive) until the answer says ``"personalised": true`` - the
   visitor's profile exists and was read - and, alongside, Redis directly (every 1 ms) for the profile key,
   which splits the total into stream time (event -> Redis) and serving time (Redis -> decision).

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

from bench.common import (
    CpuMeter,
    EventFactory,
    HttpClient,
    Infra,
    RssSampler,
    log,
    median,
    start_api,
    start_worker,
    summarise_ms,
    write_result,
)

FRESHNESS_TARGET_MS = 100.0
DECIDE_POLL_S = 0.002
REDIS_POLL_S = 0.001


# --------------------------------------------------------------------------------------------------
# background load (a process of its own: python -m bench.freshness background ...)


async def background(bootstrap: str, topic: str, rate: float, seconds: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    factory = EventFactory(99)
    stream = factory.stream(10**9, 50_000, prefix="bg-")
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
# the probe


async def probe(stack: Any, api_url: str, samples: int, discard: int) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from aiokafka import AIOKafkaProducer

    from engine.layout import profile_key

    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=0)
    await producer.start()
    redis = aioredis.from_url(stack.redis_url, decode_responses=True)
    http = HttpClient.for_url(api_url)
    factory = EventFactory(5)
    rng = random.Random(9)
    total, to_redis, serving, acks, polls = [], [], [], [], []
    timeouts = 0
    try:
        # warm: metadata for the topic, connections, first decide
        await producer.send_and_wait(stack.events_topic, value=b"{}", key=b"warm-up")  # dead-lettered
        await http.post_json("/v1/decide", {"anonymous_id": "warm-up", "placement": "home_hero"})
        for k in range(samples + discard):
            visitor = f"a-fresh-{uuid.uuid4().hex[:12]}"
            body = orjson.dumps({"anonymous_id": visitor, "placement": "home_hero", "n": 3})
            status, answer = await http.request("POST", "/v1/decide", body)
            assert status == 200 and b'"personalised":false' in answer, answer[:300]
            ev = factory.event(visitor, customer=False, ts_ms=int(time.time() * 1000), session="s-fresh",
                               etype="click")
            value = orjson.dumps(ev)
            seen_redis: list[float] = []

            async def watch_redis(key: str = profile_key(visitor), out: list[float] = seen_redis) -> None:
                while not await redis.exists(key):
                    await asyncio.sleep(REDIS_POLL_S)
                out.append(time.monotonic())

            t0 = time.monotonic()
            await producer.send_and_wait(stack.events_topic, value=value, key=visitor.encode())
            t_ack = time.monotonic()
            watcher = asyncio.create_task(watch_redis())
            n_polls = 0
            deadline = t0 + 30.0
            t1 = None
            while time.monotonic() < deadline:
                status, answer = await http.request("POST", "/v1/decide", body)
                n_polls += 1
                if status == 200 and b'"personalised":true' in answer:
                    t1 = time.monotonic()
                    break
                await asyncio.sleep(DECIDE_POLL_S)
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(watcher, 5)
            if k < discard:
                continue
            if t1 is None:
                timeouts += 1
                continue
            total.append(t1 - t0)
            acks.append(t_ack - t0)
            polls.append(n_polls)
            if seen_redis:
                to_redis.append(seen_redis[0] - t0)
                serving.append(max(0.0, t1 - seen_redis[0]))
            await asyncio.sleep(rng.uniform(0.02, 0.05))
    finally:
        await producer.stop()
        await redis.aclose()
        await http.close()
    return {
        "samples": len(total), "discarded_warmup": discard, "timeouts": timeouts,
        "event_to_decision_ms": summarise_ms(total),
        "event_to_redis_ms": summarise_ms(to_redis),
        "redis_to_decision_ms": summarise_ms(serving),
        "produce_ack_ms": summarise_ms(acks),
        "decide_polls_per_sample_median": median(polls) if polls else 0,
        "poll_interval_ms": {"decide": DECIDE_POLL_S * 1000, "redis": REDIS_POLL_S * 1000},
    }


async def _applied(redis_url: str) -> int:
    import redis.asyncio as aioredis

    from engine.layout import worker_stats_key

    c = aioredis.from_url(redis_url, decode_responses=True)
    try:
        return int((await c.hget(worker_stats_key(), "events_applied")) or 0)
    finally:
        await c.aclose()


def run(infra: Infra, rate: float | None = None, samples: int | None = None) -> dict[str, Any]:
    import uvloop

    quick = infra.quick
    rate = rate if rate is not None else (2000.0 if quick else 3000.0)
    samples, discard = (samples or (25 if quick else 300)), (5 if quick else 10)
    stack = infra.stack()
    worker = start_worker(infra, stack)
    api, api_url = start_api(infra, stack)
    bg = None
    try:
        # the worker is ready when it applies an event
        from infra.processes import wait_until

        from bench.common import produce_records

        f = EventFactory(1)
        asyncio.run(produce_records(stack.bootstrap, stack.events_topic, f.stream(10, 10, prefix="ready-")))
        wait_until(lambda: asyncio.run(_applied(stack.redis_url)) > 0, 90, 0.2, "worker to apply events")
        log(f"freshness: background load {rate:.0f} events/s, {samples} samples")
        bg = start_background(stack.bootstrap, stack.events_topic, rate, 3600)
        time.sleep(2.0)  # let the load settle
        applied0, t0 = asyncio.run(_applied(stack.redis_url)), time.monotonic()
        cpu = CpuMeter({"worker": worker.proc.pid, "api": api.proc.pid, "redis": infra.redis_pid(),
                        "kafka": infra.kafka_pid(), "producer": bg.pid}).start()
        with RssSampler({"worker": worker.proc.pid, "api": api.proc.pid}) as rss:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                res = runner.run(probe(stack, api_url, samples, discard))
        res["cpu"] = cpu.stop()
        applied1, t1 = asyncio.run(_applied(stack.redis_url)), time.monotonic()
        res["background"] = stop_background(bg)
        bg = None
        res["background"]["target_rate"] = rate
        res["worker_applied_rate_during_probe"] = round((applied1 - applied0) / (t1 - t0), 1)
        res["rss"] = rss.summary()
    finally:
        if bg is not None:
            stop_background(bg)
        api.stop()
        worker.stop()
    p = res["event_to_decision_ms"]
    log(f"freshness: p50 {p.get('p50')} ms, p99 {p.get('p99')} ms over {res['samples']} samples "
        f"(background {res['background'].get('rate')} ev/s, worker applied {res['worker_applied_rate_during_probe']}/s)")
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", type=float, help="background events/s (default 2000 quick, 3000 full)")
    ap.add_argument("--samples", type=int)
    a = ap.parse_args(args)
    with Infra.started(a.quick) as infra:
        res = run(infra, a.rate, a.samples)
    print(write_result("freshness", res, a.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
