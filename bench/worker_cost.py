"""What the stream worker's batch path costs per event, in one process on a real Redis, stage by stage: prepare
(parse, validate, compile), apply (the Lua applier and every hook ``streams/app.py`` wires: reward join,
co-visitation feed with its consent gate, consent withdrawals, attribution), the behavioural clusters' feed and
the segment tracker. No Kafka: messages go to an in-memory sink, so the figures are the worker's own.

``python -m bench.worker_cost [--events 20000] [--batch 500] [--rounds 3]``

Each round applies fresh events (a shop's mix from ``bench.traffic``) for fresh visitors, once per arm, the
arms alternating: ``views`` (the applier returns what the segments read of each profile it wrote, the
worker's way) and ``hgetall`` (the segment tracker reads each profile after the batch). Prints per round and
as medians per arm: this process's CPU per event per stage, Redis's CPU per event (``INFO cpu``) and Redis
commands per event by command (``INFO commandstats``, reset before each round; commands run by scripts
count too). Run it on two checkouts to compare other changes (``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson

STAGES = ("prepare", "apply+hooks", "clusters", "segments")


async def _redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(redis_url: str, events: int, batch: int, rounds: int, visitors: int,
                  views: bool = True, seed: int = 200) -> dict[str, Any]:
    from bench.common import bench_config
    from bench.traffic import EventFactory
    from engine.config import load_config
    from engine.erasure import ErasureStore
    from engine.learning_store import LearningStore
    from engine.profile_store import ProfileStore
    from engine.redis_connection import HiredisPackedConnection, make_redis
    from streams.attribution import AttributionFeed
    from streams.clusters import ClusterFeed
    from streams.collaborative import CollaborativeFeed
    from streams.consent import ConsentGate, ConsentWithdrawals
    from streams.pipeline import BatchProcessor, Record
    from streams.rewards import RewardJoiner
    from streams.segments import SegmentTracker

    config = load_config(bench_config())
    client = make_redis(redis_url, cluster=False, decode_responses=True, connection_class=HiredisPackedConnection)
    sent: list[bytes] = []

    async def dead_letter(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append(value)

    async def sink(key: bytes, value: bytes) -> asyncio.Future[None]:
        sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    store = ProfileStore(client, config)
    joiner = RewardJoiner(LearningStore(client), config, sink, dead_letter)
    feed = CollaborativeFeed(config, sink, ConsentGate(store, config))
    withdrawals = ConsentWithdrawals(store, ErasureStore(client, config, 86400), sink, config.collaborative.enabled)
    hooks = [joiner.on_events, feed.on_events, withdrawals.on_events]
    if config.attribution.enabled:
        hooks.append(AttributionFeed(client, config).on_events)
    processor = BatchProcessor(store, dead_letter, hooks=hooks, views=views)
    clusters = ClusterFeed(client, config, sink)
    tracker = SegmentTracker(client, config, sink)
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    total: list[float] = []
    redis_cpu: list[float] = []
    calls: list[dict[str, float]] = []
    try:
        await client.flushdb()
        for r in range(rounds):
            factory = EventFactory(seed + r)
            stream = list(factory.stream(events, visitors, prefix=f"wc{r}-"))
            records = [Record("events", hash(k) % 8, i, k, v) for i, (k, v) in enumerate(stream)]
            await client.config_resetstat()
            r0 = await _redis_cpu(client)
            used = dict.fromkeys(STAGES, 0.0)
            for i in range(0, len(records), batch):
                t0 = time.process_time()
                prepared = await processor.prepare(records[i:i + batch])
                t1 = time.process_time()
                stats = await processor.apply(prepared)
                t2 = time.process_time()
                if clusters:
                    await clusters.on_owners(stats.owners, time.time())
                t3 = time.process_time()
                if tracker:
                    await tracker.update(stats.owners, time.time(), views=stats.views)
                t4 = time.process_time()
                for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    used[stage] += dt
            redis_cpu.append(1e6 * (await _redis_cpu(client) - r0) / len(records))
            stats_now = await client.info("commandstats")
            calls.append({k.removeprefix("cmdstat_"): v["calls"] / len(records) for k, v in stats_now.items()
                          if k not in ("cmdstat_config", "cmdstat_info")})
            for stage in STAGES:
                per_stage[stage].append(1e6 * used[stage] / len(records))
            total.append(sum(per_stage[s][-1] for s in STAGES))
            print(f"round {r}: {total[-1]:6.1f} us CPU/event ("
                  + ", ".join(f"{s} {per_stage[s][-1]:.1f}" for s in STAGES)
                  + f"), redis {redis_cpu[-1]:6.1f} us/event, {sum(calls[-1].values()):.2f} commands/event",
                  flush=True)
    finally:
        await client.aclose()
    names = sorted({k for c in calls for k in c})
    per_cmd = {k: round(statistics.median(c.get(k, 0.0) for c in calls), 2) for k in names}
    return {"events_per_round": events, "visitors": visitors, "batch": batch, "rounds": rounds,
            "segments": len(config.segments), "cpu_us_per_event": round(statistics.median(total), 1),
            "cpu_us_per_event_by_stage": {s: round(statistics.median(v), 1) for s, v in per_stage.items()},
            "redis_cpu_us_per_event": round(statistics.median(redis_cpu), 1),
            "redis_calls_per_event": {k: v for k, v in sorted(per_cmd.items(), key=lambda kv: -kv[1]) if v >= 0.01},
            "messages_sent": len(sent)}


ARMS = {"views": True, "hgetall": False}


def compare(redis_url: str, events: int, batch: int, rounds: int, visitors: int) -> dict[str, Any]:
    """Both arms, alternating round by round (a shared machine drifts): medians per arm, and their ratio."""
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for r in range(rounds):
        for arm, views in ARMS.items():
            print(f"[{arm}]", end=" ", flush=True)
            runs[arm].append(asyncio.run(measure(redis_url, events, batch, 1, visitors, views, seed=200 + r)))
    out: dict[str, Any] = {"events_per_round": events, "visitors": visitors, "batch": batch, "rounds": rounds}
    for arm, results in runs.items():
        stages = {s: round(statistics.median(x["cpu_us_per_event_by_stage"][s] for x in results), 1) for s in STAGES}
        cmds = sorted({k for x in results for k in x["redis_calls_per_event"]})
        out[arm] = {"cpu_us_per_event": round(statistics.median(x["cpu_us_per_event"] for x in results), 1),
                    "cpu_us_per_event_by_stage": stages,
                    "redis_cpu_us_per_event": round(statistics.median(x["redis_cpu_us_per_event"] for x in results), 1),
                    "redis_calls_per_event": {k: round(statistics.median(x["redis_calls_per_event"].get(k, 0.0)
                                                                         for x in results), 2) for k in cmds}}
    for key in ("cpu_us_per_event", "redis_cpu_us_per_event"):
        out[f"{key}_views_over_hgetall"] = round(out["views"][key] / out["hgetall"][key], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--visitors", type=int, default=2_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from infra import local

    redis = local.start_redis()
    try:
        result = compare(redis.url, args.events, args.batch, args.rounds, args.visitors)
    finally:
        redis.close()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
