"""Stream throughput: events/s applied per worker, side by side with a bare aiokafka consumer.

1. Pre-produce N realistic events (``EventFactory.stream``: a shop's mix of page views, clicks, searches,
   carts, purchases, a few identifies/consents; skewed visitor activity) to an 8-partition topic.
2. **Bare consumer**: a group consumer (aiokafka, its own process) reads the whole topic and decodes every
   value with orjson - the ceiling for any Python consumer on this machine.
   **Bare pipeline**: the same consumer feeding the worker's own ``BatchProcessor`` (validation, feature
   operations, the Lua applier; no Faust, no reward/collaborative hooks) - what our feature logic costs.
   **Bare Faust**: a Faust app with the worker's settings whose agent only takes batches, decodes and
   counts - what Faust itself costs per event.
3. **One worker**: the real worker (``python -m streams worker``: a Faust app whose ``events`` and ``decisions``
   are read by a plain aiokafka batch loop, ``streams/consumer.py``) on fresh consumer groups, a fresh Redis
   database and fresh ``learning``/``decisions``/dead-letter topics (no run learns an earlier run's messages),
   timed until the counters it keeps in ``stats:{worker}`` say every event was received (or a time limit
   after its first event: then over what it did by then); the rate is the steady one (10% -> 90% of the
   events), so start-up and group join are not counted (they are reported separately).
4. **Two workers** on the same topic, fresh group and database: scaling.

CPU seconds of the worker(s), Redis and Kafka are recorded for every run, and Redis ``INFO commandstats``
gives the server-side cost of the Lua script per call.

``python -m bench.throughput [--quick]`` runs this benchmark alone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from bench.common import Infra, exit_cleanly_on_signals, log, start_worker, write_result
from bench.measure import CpuMeter, RssSampler, pyspy_record, summarise_profile
from bench.traffic import EventFactory, produce_records
from engine.kafka_client import kafka_client_kwargs, kafka_security

WORKER_TARGET = 10_000.0
BARE_SHARE_TARGET = 0.30


def steady_rate(series: list[tuple[float, int]], n: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Events/s between the moments the count crossed ``lo * n`` and ``hi * n`` (interpolated)."""
    def crossing(target: float) -> float | None:
        prev = None
        for t, c in series:
            if c >= target:
                if prev is None or c == prev[1]:
                    return t
                t0, c0 = prev
                return t0 + (t - t0) * (target - c0) / (c - c0)
            prev = (t, c)
        return None

    a, b = crossing(lo * n), crossing(hi * n)
    if a is None or b is None or b <= a:
        return 0.0
    return (hi - lo) * n / (b - a)


# --------------------------------------------------------------------------------------------------
# bare consumer (python -m bench.throughput bare-consumer ...)


async def _consume(bootstrap: str, topic: str, group: str, expect: int, timeout: float,
                   handle: Callable[[dict[Any, list[Any]]], Awaitable[None]]) -> dict[str, Any]:
    """A group consumer reading ``topic`` from the start in batches of up to 500, each given to ``handle``
    (per partition, as ``getmany`` returns them), until ``expect`` records or ``timeout``; rates and CPU."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=True, max_poll_records=500, **kafka_client_kwargs())
    t_start = time.monotonic()
    await consumer.start()
    series: list[tuple[float, int]] = []
    count = 0
    first = None
    cpu0 = time.process_time()
    try:
        while count < expect and time.monotonic() - t_start < timeout:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if batch:
                await handle(batch)
                count += sum(len(msgs) for msgs in batch.values())
            now = time.monotonic()
            if count and first is None:
                first = now
            series.append((now, count))
    finally:
        await consumer.stop()
    cpu = time.process_time() - cpu0
    end = series[-1][0] if series else time.monotonic()
    return {
        "events": count, "rate": round(steady_rate(series, expect), 1),
        "rate_first_to_last": round(count / (end - first), 1) if first and end > first else 0.0,
        "startup_s": round((first or end) - t_start, 2), "cpu_s": round(cpu, 2),
        "cpu_us_per_event": round(1e6 * cpu / count, 1) if count else None,
    }


async def bare_consumer(bootstrap: str, topic: str, group: str, expect: int, timeout: float) -> dict[str, Any]:
    """Decode every value, nothing else: the ceiling for any Python consumer on this machine."""
    async def decode(batch: dict[Any, list[Any]]) -> None:
        for msgs in batch.values():
            for m in msgs:
                orjson.loads(m.value)

    return await _consume(bootstrap, topic, group, expect, timeout, decode)


async def bare_pipeline(bootstrap: str, topic: str, group: str, redis_url: str, expect: int, timeout: float
                        ) -> dict[str, Any]:
    """The worker's feature logic without Faust: aiokafka group consumer -> the same ``BatchProcessor``
    (batches of up to 500, as the worker takes them), no hooks (reward join, collaborative feed)."""
    import redis.asyncio as aioredis

    from bench.common import bench_config
    from engine.config import load_config
    from engine.profile_store import ProfileStore
    from engine.runtime import batch_young_threshold, freeze_startup_heap
    from streams.pipeline import BatchProcessor, Record

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        return None

    client = aioredis.from_url(redis_url, decode_responses=True)
    proc = BatchProcessor(ProfileStore(client, load_config(bench_config())), no_dlq)
    frozen = False

    async def process(batch: dict[Any, list[Any]]) -> None:
        nonlocal frozen
        if not frozen:  # the collector tuned as in the worker, once the process has started
            freeze_startup_heap(batch_young_threshold(500))
            frozen = True
        await proc.process([Record(m.topic, m.partition, m.offset, m.key, m.value)
                            for ms in batch.values() for m in ms])

    try:
        return await _consume(bootstrap, topic, group, expect, timeout, process)
    finally:
        await client.aclose()


def bare_faust(bootstrap: str, topic: str, group: str, redis_url: str, partitions: int) -> None:
    """A Faust app with the worker's settings whose agent only takes batches and counts them (into
    ``stats:{worker}`` like the worker): what Faust itself costs per event, before any of our code."""
    import faust
    import redis.asyncio as aioredis

    from engine.layout import worker_stats_key
    from engine.settings import load_settings

    settings = load_settings()
    from streams.faust_auth import faust_credentials

    app = faust.App(group, broker=[f"kafka://{hp}" for hp in bootstrap.split(",")], store="memory://",
                    datadir=f"/tmp/pulse-faust-bare-{group}", web_enabled=False, topic_partitions=partitions,
                    topic_allow_declare=False, broker_commit_every=1000, broker_commit_interval=1.0,
                    producer_acks=-1, consumer_auto_offset_reset="earliest",
                    broker_credentials=faust_credentials(kafka_security()))
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    state: dict[str, Any] = {}

    @app.agent(source)
    async def count(stream: Any) -> None:
        if "redis" not in state:
            state["redis"] = aioredis.from_url(redis_url, decode_responses=True)
        async for events in stream.take_events(settings.worker_batch_size, within=settings.worker_batch_timeout):
            for e in events:
                orjson.loads(e.message.value)
            await state["redis"].hincrby(worker_stats_key(), "events_received", len(events))

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


def run_bare_faust(infra: Infra, stack: Any, n: int, limit: float) -> dict[str, Any]:
    from infra.processes import ManagedProcess

    redis_url = infra.redis_url()
    tag = uuid.uuid4().hex[:6]
    proc = ManagedProcess(f"bare-faust-{tag}", [sys.executable, "-m", "bench.throughput", "bare-faust",
                                                "--bootstrap", stack.bootstrap, "--topic", stack.events_topic,
                                                "--group", f"bare-faust-{tag}", "--redis-url", redis_url],
                          stack.env(), infra.log_dir).start()
    t_start = time.monotonic()
    series: list[tuple[float, int]] = []
    first = None
    assert proc.proc is not None  # started
    cpu = CpuMeter({"faust": proc.proc.pid})  # started at the first event: start-up CPU is not counted
    got0 = 0
    try:
        while time.monotonic() - (first or t_start) < limit:
            got = asyncio.run(_counters(redis_url)).get("events_received", 0)
            now = time.monotonic()
            series.append((now, got))
            if got and first is None:
                first = now
                cpu.start()
                got0 = got
            if got >= n:
                break
            if proc.proc.poll() is not None:
                raise RuntimeError(f"bare Faust app exited:\n{proc.log_tail()}")
            time.sleep(0.05)
    finally:
        usage = cpu.stop() if first else {}
        proc.stop()
    got = series[-1][1] if series else 0
    return {"events": got, "completed": got >= n, "rate": round(steady_rate(series, n if got >= n else got), 1),
            "startup_s": round((first or t_start) - t_start, 2),
            "cpu_us_per_event": round(1e6 * usage["faust_cpu_s"] / (got - got0), 1) if got > got0 else None,
            "cpu": usage}


def run_bare(stack: Any, n: int, timeout: float, pipeline_redis: str | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.throughput", "bare-pipeline" if pipeline_redis else "bare-consumer",
            "--bootstrap", stack.bootstrap, "--topic", stack.events_topic, "--group", f"bare-{uuid.uuid4().hex[:6]}",
            "--expect", str(n), "--timeout", str(timeout)]
    if pipeline_redis:
        argv += ["--redis-url", pipeline_redis]
    out = subprocess.run(argv, capture_output=True, timeout=timeout + 60, check=False)
    try:
        return orjson.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, orjson.JSONDecodeError) as exc:
        raise RuntimeError(f"bare consumer failed: {out.stderr.decode(errors='replace')[-1000:]}") from exc


# --------------------------------------------------------------------------------------------------
# workers


@dataclass
class RedisTarget:
    """The Redis the workers write to: one server's database, or a Redis Cluster (``url`` its seed nodes,
    ``nodes`` each master's own URL, for command statistics); ``pids`` name the server processes for CPU."""

    url: str
    pids: dict[str, int | None]
    cluster: bool = False
    nodes: list[str] = field(default_factory=list)


async def _counters(redis_url: str, cluster: bool = False) -> dict[str, Any]:
    from engine.layout import HOT_KEY_SHARDS, worker_stats_key
    from engine.redis_connection import make_redis

    c = make_redis(redis_url, cluster=cluster, decode_responses=True)
    try:  # on a cluster the workers' counters are sharded over HOT_KEY_SHARDS hashes: summed here
        out: dict[str, Any] = {}
        for shard in range(HOT_KEY_SHARDS if cluster else 1):
            for k, v in cast(dict[str, str], await c.hgetall(worker_stats_key(shard))).items():
                out[k] = out.get(k, 0) + (float(v) if k.endswith("_seconds") else int(float(v)))
        return out
    finally:
        await c.aclose()


def _redis_cmdstats(url: str, reset: bool = False, nodes: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """Command statistics of a server, or summed over a cluster's ``nodes``."""
    import redis as sync_redis

    total: dict[str, dict[str, float]] = {}
    for node in nodes or [url]:
        c = sync_redis.Redis.from_url(node)
        try:
            if reset:
                c.config_resetstat()
                continue
            for k, v in c.info("commandstats").items():
                t = total.setdefault(k.removeprefix("cmdstat_"), {"calls": 0, "usec": 0})
                t["calls"] += v["calls"]
                t["usec"] += v["usec"]
        finally:
            c.close()
    return {k: {**v, "usec_per_call": round(v["usec"] / v["calls"], 2)} for k, v in total.items() if v["calls"] >= 50}


def run_workers(infra: Infra, stack: Any, count: int, n: int, limit: float, profile: bool = False,
                env: dict[str, str] | None = None, split: bool = True, redis: RedisTarget | None = None
                ) -> dict[str, Any]:
    """Start ``count`` workers on a fresh group and Redis database; time them until all ``n`` events are
    received or ``limit`` seconds after the first one (then the rate is over what was done by then).

    ``split``: the workers are ``ingest`` processes and one ``learner`` process learns what they emit (the
    deployment under load; the learner's CPU is reported apart); otherwise each worker runs every role."""
    from infra.topics import ensure_topics

    redis = redis or RedisTarget(infra.redis_url(), {"redis": infra.redis_pid()})
    redis_url, nodes = redis.url, redis.nodes
    tag = uuid.uuid4().hex[:6]
    # fresh side topics too: a new group would otherwise learn every earlier run's co-visitation messages
    side = {"LEARNING_TOPIC": f"learning-{tag}", "DLQ_TOPIC": f"events.dlq-{tag}",
            "DECISIONS_TOPIC": f"decisions-{tag}", "SEGMENTS_TOPIC": f"segments-{tag}"}
    asyncio.run(ensure_topics(stack.bootstrap, 8, list(side.values())))
    extra = {"REDIS_URL": redis_url, "WORKER_APP_ID": f"pulse-bench-{tag}",
             "WORKER_DATA_DIR": f"/tmp/pulse-faust-bench-{tag}", **side, **(env or {}),
             **({"REDIS_CLUSTER": "1"} if redis.cluster else {})}
    _redis_cmdstats(redis_url, reset=True, nodes=nodes)
    command = "ingest" if split else "worker"
    workers = [start_worker(infra, stack, name=f"{command}-{tag}-{i}", command=command, **extra)
               for i in range(count)]
    learners = [start_worker(infra, stack, name=f"learner-{tag}", command="learner", **extra)] if split else []
    t_start = time.monotonic()
    series: list[tuple[float, int]] = []
    applied_series: list[tuple[float, int]] = []
    # CPU is counted from the first event on: start-up (imports, group join) is reported apart
    pids = {**{f"worker{i}": w.proc.pid for i, w in enumerate(workers)},
            **({"learner": learners[0].proc.pid} if learners else {})}
    cpu = CpuMeter({**pids, **redis.pids, "kafka": infra.kafka_pid()})
    got0 = 0
    prof_out = infra.results_file("profile-worker", "txt")
    prof_ctx: Any = None
    rec = None
    first = None
    c: dict[str, Any] = {}
    try:
        with RssSampler(pids) as rss:
            while time.monotonic() - (first or t_start) < limit:
                c = asyncio.run(_counters(redis_url, redis.cluster))
                now = time.monotonic()
                got = c.get("events_received", 0)
                series.append((now, got))
                applied_series.append((now, c.get("events_applied", 0)))
                if got and first is None:
                    first = now
                    got0 = got
                    cpu.start()
                    if profile:  # the steady state only: start-up (imports, group join) is not profiled
                        prof_ctx = pyspy_record(workers[0].proc.pid, limit + 10, prof_out)
                        rec = prof_ctx.__enter__()
                if got >= n:
                    break
                for w in workers + learners:
                    if w.proc.poll() is not None:
                        raise RuntimeError(f"{w.name} exited:\n{w.log_tail()}")
                time.sleep(0.05)
    finally:
        if prof_ctx:
            prof_ctx.__exit__(None, None, None)
        usage = cpu.stop() if first else {}
        for w in workers + learners:
            w.stop()
    end = series[-1][0] if series else time.monotonic()
    got = series[-1][1] if series else 0
    res = {
        "workers": count, "command": command, "learner_process": split,
        "events": n, "received": got, "applied": c.get("events_applied", 0),
        "dead_letters": c.get("dead_letters", 0), "completed": got >= n, "time_limit_s": limit,
        "rate": round(steady_rate(series, n if got >= n else got), 1),
        "rate_first_to_last": round(got / (end - first), 1) if first and end > first else 0.0,
        "startup_s": round((first or end) - t_start, 2), "cpu": usage, "rss": rss.summary(),
        "redis_commandstats": _redis_cmdstats(redis_url, nodes=nodes),
    }
    loop = {k[len("loop_"):-len("_seconds")]: v for k, v in c.items() if k.startswith("loop_")}
    if loop and sum(loop.values()) > 0:  # where the ingest loops' wall time went (published every second)
        res["loop_time_share_pct"] = {k: round(100 * v / sum(loop.values()), 1) for k, v in loop.items()}
    if got:  # Redis commands per event (inside and outside Lua): where the server's time goes
        stats = res["redis_commandstats"]
        by_calls = sorted(stats.items(), key=lambda kv: -kv[1]["calls"])
        by_usec = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
        res["redis_calls_per_event"] = {k: round(v["calls"] / got, 2) for k, v in by_calls if v["calls"] >= 0.05 * got}
        res["redis_usec_per_event"] = {k: round(v["usec"] / got, 1) for k, v in by_usec if v["usec"] >= 0.5 * got}
    wcpu = sum(v for k, v in usage.items() if k.startswith("worker"))
    done = got - got0
    if done > 0:
        res["worker_cpu_us_per_event"] = round(1e6 * wcpu / done, 1)
        redis_cpu = sum(v for k, v in usage.items() if k.startswith("redis") and k.endswith("_cpu_s"))
        res["redis_cpu_us_per_event"] = round(1e6 * redis_cpu / done, 1)
        res["kafka_cpu_us_per_event"] = round(1e6 * usage.get("kafka_cpu_s", 0.0) / done, 1)
        if split:
            res["learner_cpu_us_per_event"] = round(1e6 * usage.get("learner_cpu_s", 0.0) / done, 1)
        res["events_per_core_second"] = round(done / wcpu, 1) if wcpu else None
    if rec is not None:
        res["profile"] = {"file": str(prof_out.relative_to(infra.repo)), **summarise_profile(rec.path, rec.rate)}
    return res


def run(infra: Infra, n: int | None = None, worker_env: dict[str, str] | None = None) -> dict[str, Any]:
    quick = infra.quick
    n = n or (8_000 if quick else 200_000)
    timeout = 60.0 if quick else 300.0  # bare consumers (they finish in seconds)
    limit = 15.0 if quick else 100.0  # per worker run, after its first event
    stack = infra.stack(partitions=8)
    log(f"throughput: producing {n} events to {stack.events_topic} (8 partitions)")
    factory = EventFactory(2024)
    records = list(factory.stream(n, max(1000, n // 10)))
    size = sum(len(v) for _, v in records) / len(records)
    produced, seconds = asyncio.run(produce_records(stack.bootstrap, stack.events_topic, records))
    del records
    res: dict[str, Any] = {"events": n, "mean_event_bytes": round(size, 1), "partitions": 8,
                           "produce_rate": round(produced / seconds, 1), "visitors": max(1000, n // 10)}

    log("throughput: bare aiokafka consumer (decode only)")
    res["bare_consumer"] = run_bare(stack, n, timeout)
    log(f"throughput: bare consumer {res['bare_consumer']['rate']} events/s")

    log("throughput: the same BatchProcessor behind a bare aiokafka consumer (no Faust, no hooks)")
    res["bare_pipeline"] = run_bare(stack, n, timeout, pipeline_redis=infra.redis_url())
    log(f"throughput: bare pipeline {res['bare_pipeline']['rate']} events/s "
        f"({res['bare_pipeline'].get('cpu_us_per_event')} us CPU/event)")

    log("throughput: a bare Faust agent (take_events + decode + count, none of our code)")
    res["bare_faust"] = run_bare_faust(infra, stack, n, limit)
    log(f"throughput: bare Faust {res['bare_faust']['rate']} events/s "
        f"({res['bare_faust'].get('cpu_us_per_event')} us CPU/event)")

    log("throughput: 1 worker (ingest process; a learner process beside it)")
    res["one_worker"] = run_workers(infra, stack, 1, n, limit, env=worker_env)
    log(f"throughput: 1 worker {res['one_worker']['rate']} events/s "
        f"({res['one_worker'].get('worker_cpu_us_per_event')} us CPU/event in the worker, "
        f"{res['one_worker'].get('redis_cpu_us_per_event')} in Redis, "
        f"{res['one_worker'].get('learner_cpu_us_per_event')} in the learner)")

    log("throughput: 1 worker running every role in one process (python -m streams worker)")
    res["one_process"] = run_workers(infra, stack, 1, n, limit, env=worker_env, split=False)
    log(f"throughput: 1 worker, one process {res['one_process']['rate']} events/s "
        f"({res['one_process'].get('worker_cpu_us_per_event')} us CPU/event)")

    log("throughput: 2 workers (ingest processes; one learner)")
    res["two_workers"] = run_workers(infra, stack, 2, n, limit, env=worker_env)
    log(f"throughput: 2 workers {res['two_workers']['rate']} events/s")

    if infra.profile:  # a run of its own: py-spy's sampling takes CPU from the 2 shared cores, so a profiled run's
        # rate is not the worker's (it is kept apart as profiled_run_rate)
        log("throughput: 1 worker again, profiled with py-spy (its rate is not reported as the worker's)")
        profiled = run_workers(infra, stack, 1, n, limit, profile=True, env=worker_env)
        if "profile" in profiled:
            res["one_worker"]["profile"] = profiled["profile"]
        res["one_worker"]["profiled_run_rate"] = profiled["rate"]

    one, two, bare = res["one_worker"]["rate"], res["two_workers"]["rate"], res["bare_consumer"]["rate"]
    res["summary"] = {
        "events_per_s_one_worker": one, "events_per_s_two_workers": two,
        "events_per_s_one_process": res["one_process"]["rate"], "bare_consumer_events_per_s": bare,
        "share_of_bare": round(one / bare, 3) if bare else 0.0,
        "scaling_two_over_one": round(two / one, 2) if one else 0.0,
    }
    return res


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["bare-faust"]:
        ap = argparse.ArgumentParser()
        for opt in ("--bootstrap", "--topic", "--group", "--redis-url"):
            ap.add_argument(opt, required=True)
        ap.add_argument("--partitions", type=int, default=8)
        a = ap.parse_args(args[1:])
        bare_faust(a.bootstrap, a.topic, a.group, a.redis_url, a.partitions)
        return 0
    if args[:1] in (["bare-consumer"], ["bare-pipeline"]):
        ap = argparse.ArgumentParser()
        ap.add_argument("--bootstrap", required=True)
        ap.add_argument("--topic", required=True)
        ap.add_argument("--group", required=True)
        ap.add_argument("--expect", type=int, required=True)
        ap.add_argument("--timeout", type=float, default=300)
        ap.add_argument("--redis-url")
        a = ap.parse_args(args[1:])
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        if args[0] == "bare-consumer":
            out = asyncio.run(bare_consumer(a.bootstrap, a.topic, a.group, a.expect, a.timeout))
        else:
            out = asyncio.run(bare_pipeline(a.bootstrap, a.topic, a.group, a.redis_url, a.expect, a.timeout))
        print(orjson.dumps(out).decode())
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--events", type=int)
    ap.add_argument("--profile", action="store_true", help="profile the single worker with py-spy")
    ap.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE")
    a = ap.parse_args(args)
    exit_cleanly_on_signals()
    with Infra.started(a.quick, a.profile) as infra:
        res = run(infra, a.events, dict(kv.split("=", 1) for kv in a.worker_env))
    print(write_result("throughput", res, a.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
