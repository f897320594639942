"""What next-best action costs, side by side in one run (``engine.timing``, ``engine.channels``,
``engine.arbitration``, ``serving/nba.py``).

``python -m bench.nba_cost [--events 30000] [--rounds 5] [--requests 3000] [--part all|worker|decide]``

1. **Worker**: the same events (a shop's mix from ``bench.traffic``, spread over 14 days) applied by two
   ``BatchProcessor``\\ s on one real Redis, one with the activity hours and channel counts (the shipped
   ``next_best_action`` placement answers channels) and one without (no placement answers channels), rounds
   alternated: worker CPU per event, Redis CPU per event (``INFO cpu``), events/s.
2. **Memory**: ``MEMORY USAGE`` of the same visitors' profiles with and without, and of the same profiles with
   the hour-of-week histogram (168 bins, one field per bin seen) instead of hour-of-day + weekday (31 bins).
3. **Decide**: the real app in process (``bench.decide_micro.drive``, real Kafka and Redis) with two placements
   over the same 50 actions' features: ``nba50`` (channels, audiences, values, ``min_expected_value``,
   arbitration) and ``plain50`` (the policy's order), both ``linear_thompson``; requests for the same
   customers, rounds alternated: process CPU per decision.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import write_result

CATEGORIES = ("shoes", "jackets", "books", "electronics", "hats", "kitchen", "toys", "garden", "beauty", "sport")


async def redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def worker_and_memory(redis_url: str, events: int, rounds: int, batch: int = 500) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from bench.common import bench_config
    from bench.traffic import EventFactory
    from engine.config import load_config
    from engine.features import FeatureExtractor
    from engine.profile_store import ProfileStore
    from streams.pipeline import BatchProcessor, Record

    on = load_config(bench_config())
    off = dataclasses.replace(on, placements={k: dataclasses.replace(p, channels=()) for k, p in on.placements.items()})
    assert FeatureExtractor(on).contact and not FeatureExtractor(off).contact
    client = aioredis.from_url(redis_url, decode_responses=True)

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        return None

    procs = {"with": BatchProcessor(ProfileStore(client, on), no_dlq),
             "without": BatchProcessor(ProfileStore(client, off), no_dlq)}
    cpu: dict[str, list[float]] = {s: [] for s in procs}
    rcpu: dict[str, list[float]] = {s: [] for s in procs}
    rate: dict[str, list[float]] = {s: [] for s in procs}
    try:
        for r in range(rounds):
            for side in (("without", "with") if r % 2 == 0 else ("with", "without")):
                factory = EventFactory(500 + r)  # the same events for both sides of a round
                stream = list(factory.stream(events, max(events // 20, 1), prefix=f"nba{r}-{side}-",
                                             span_s=14 * 86400.0))
                records = [Record("events", hash(k) % 8, i, k, v) for i, (k, v) in enumerate(stream)]
                used = 0.0
                r0, w0 = await redis_cpu(client), time.perf_counter()
                for i in range(0, len(records), batch):
                    t = time.process_time()
                    await procs[side].process(records[i:i + batch])
                    used += time.process_time() - t
                wall = time.perf_counter() - w0
                cpu[side].append(1e6 * used / len(records))
                rcpu[side].append(1e6 * (await redis_cpu(client) - r0) / len(records))
                rate[side].append(len(records) / wall)
                print(f"round {r} {side:8} worker {cpu[side][-1]:6.1f} us/event, redis {rcpu[side][-1]:6.1f} "
                      f"us/event, {rate[side][-1]:,.0f} events/s", flush=True)
        memory = await profile_memory(client, f"nba{rounds - 1}-")
    finally:
        await client.aclose()
    med = {s: {"worker_us_per_event": round(statistics.median(cpu[s]), 1),
               "redis_us_per_event": round(statistics.median(rcpu[s]), 1),
               "events_per_s": round(statistics.median(rate[s]))} for s in procs}
    return {"events_per_round": events, "rounds": rounds, "batch": batch, "medians": med,
            "worker_cpu_ratio": round(med["with"]["worker_us_per_event"] / med["without"]["worker_us_per_event"], 3),
            "redis_cpu_ratio": round(med["with"]["redis_us_per_event"] / med["without"]["redis_us_per_event"], 3),
            "events_per_s_ratio": round(med["with"]["events_per_s"] / med["without"]["events_per_s"], 3),
            "memory": memory}


async def profile_memory(client: Any, prefix: str, sample: int = 400) -> dict[str, Any]:
    """Bytes per profile: with the two histograms, without, and with an hour-of-week histogram instead."""
    from engine.layout import ACTIVITY_DAY_PREFIX, ACTIVITY_HOUR_PREFIX

    keys = [k async for k in client.scan_iter(match=f"p:{{c:{prefix}with-*", count=1000) if k.endswith("}")][:sample]
    with_: list[int] = []
    without: list[int] = []
    how: list[int] = []
    bins: list[tuple[int, int]] = []
    for k in keys:
        h = await client.hgetall(k)
        if not any(f.startswith(ACTIVITY_HOUR_PREFIX) for f in h):
            continue
        other = k.replace(f"{prefix}with-", f"{prefix}without-")
        if not await client.exists(other):
            continue
        with_.append(await client.memory_usage(k, samples=0))
        without.append(await client.memory_usage(other, samples=0))
        # hour-of-week: one bin per (weekday, hour) pair seen; as many as the product of the seen bins at most,
        # at least as many as the larger of the two (the events' pairs are not stored, so both bounds are built)
        hours = [f for f in h if f.startswith(ACTIVITY_HOUR_PREFIX)]
        days = [f for f in h if f.startswith(ACTIVITY_DAY_PREFIX)]
        base = {f: v for f, v in h.items() if not f.startswith(("a_h:", "a_d:"))}
        n_how = min(168, len(hours) * len(days))
        bins.append((len(hours) + len(days), n_how))
        tmp = f"bench:how:{len(how)}"
        await client.delete(tmp)
        await client.hset(tmp, mapping={**base, **{f"a_w:{i}": "12.34567" for i in range(n_how)}})
        how.append(await client.memory_usage(tmp, samples=0))
        await client.delete(tmp)
    n = len(with_)
    if not n:
        return {}
    return {"profiles": n, "bytes_median": {"without": statistics.median(without), "hour_x_weekday":
                                            statistics.median(with_), "hour_of_week_upper": statistics.median(how)},
            "extra_bytes_median": {
                "hour_x_weekday": statistics.median(w - o for w, o in zip(with_, without, strict=True)),
                "hour_of_week_upper": statistics.median(h - o for h, o in zip(how, without, strict=True))},
            "bins_median": {"hour_x_weekday": statistics.median(b for b, _ in bins),
                            "hour_of_week_upper": statistics.median(w for _, w in bins)}}


def nba_config(directory: Path) -> Path:
    """bench/catalogue.toml plus two placements over 50 actions each (the same features on both)."""
    from bench.common import bench_config

    lines = [f'include = ["{bench_config().resolve()}"]', ""]
    for pid, extra in (("nba50", 'channels = ["web", "email", "push", "sms"]\nmin_expected_value = 0.01\n'),
                       ("plain50", "")):
        lines += ["[[placement]]", f'id = "{pid}"', "max_items = 3", 'policy = "linear_thompson"',
                  "policy_params = { shared_dims = 0, epsilon = 0.05 }", extra]
    rng = random.Random(2)
    for pid in ("nba50", "plain50"):
        for i in range(50):
            cat = CATEGORIES[i % len(CATEGORIES)]
            lines += ["[[action]]", f'id = "{pid}-{i}"', f'placements = ["{pid}"]', f'category = "{cat}"',
                      f'item_id = "sku-{cat}-{i % 5 + 1}"', f'title = "offer {i}"']
            if i % 10 == 9:
                lines.append('audience = { exclude = ["lapsed"] }')
            if pid == "nba50":
                chans = ['"web"', '"email"', '"push"', '"sms"'][: 1 + i % 4]
                lines += [f"channels = [{', '.join(chans)}]", f"value = {rng.uniform(1, 80):.2f}",
                          f"lever = {rng.choice((0.8, 1.0, 1.0, 1.2))}"]
            lines.append("")
    path = directory / "nba_bench.toml"
    path.write_text("\n".join(lines))
    return path


async def decide_cpu(stack: Any, requests: int, rounds: int) -> dict[str, Any]:
    import orjson

    from bench.decide_micro import drive
    from bench.traffic import EventFactory, populate_profiles
    from serving.app import create_app
    from serving.decide import DecideFastPath

    f = EventFactory(11)
    now_ms = int(time.time() * 1000)
    rng = random.Random(5)
    customers = [f"c-nba-{i}" for i in range(300)]
    await populate_profiles(stack.redis_url, [f.history(v, rng.randint(10, 60), customer=True, end_ms=now_ms,
                                                        span_s=14 * 86400) for v in customers])
    bodies = {p: [orjson.dumps({"customer_id": c, "placement": p, "n": 3, "context": {"channel": "web"}})
                  for c in customers] for p in ("nba50", "plain50")}
    with tempfile.TemporaryDirectory() as tmp:
        # no load shedding: a shed decision is the non-personalised ranking, which would measure neither side
        os.environ.update(stack.env(ENGINE_CONFIG=str(nba_config(Path(tmp))), DECIDE_SHED_TARGET_MS="0",
                                    DECIDE_BUDGET_MS="5000"))  # a loaded machine: never degraded either
        fastapi_app = create_app()
        app = DecideFastPath(fastapi_app)
        cpu: dict[str, list[float]] = {p: [] for p in bodies}
        shown: dict[str, int] = {p: 0 for p in bodies}
        async with fastapi_app.router.lifespan_context(fastapi_app):
            for p in bodies:
                await drive(app, bodies[p], 600, 16)  # warm-up
            for r in range(rounds):
                for p in (("plain50", "nba50") if r % 2 == 0 else ("nba50", "plain50")):
                    used, wall, st = await drive(app, bodies[p], requests, 16)
                    assert set(st) == {200}, st
                    cpu[p].append(1e6 * used / requests)
                    print(f"round {r} {p:8} {cpu[p][-1]:7.1f} us CPU per decision, {requests / wall:,.0f}/s",
                          flush=True)
            svc = fastapi_app.state.services
            import serving.decide as d

            for b in bodies["nba50"][:50]:
                req = d.parse_decide_request(b, svc.config)
                prof = await d.read_profile(svc, req, time.time())
                ranking, _ = d.rank(svc, req, prof, True, time.time(), random.Random(0))
                shown["nba50"] += len(ranking.actions)
            degraded = dict(svc.metrics.decisions.values)
    med = {p: round(statistics.median(v), 1) for p, v in cpu.items()}
    # each round's two sides ran back to back: their ratio is less exposed to the shared machine's swings
    pairs = [n / p for n, p in zip(cpu["nba50"], cpu["plain50"], strict=True)]
    return {"requests_per_round": requests, "rounds": rounds, "candidates": 50, "us_cpu_per_decision": med,
            "ratio": round(med["nba50"] / med["plain50"], 3),
            "ratio_median_of_rounds": round(statistics.median(pairs), 3),
            "extra_us_median_of_rounds": round(statistics.median(
                n - p for n, p in zip(cpu["nba50"], cpu["plain50"], strict=True)), 1), "decisions": degraded,
            "nba50_actions_shown_per_decision": shown["nba50"] / 50}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("all", "worker", "decide"), default="all")
    args = ap.parse_args()
    if args.quick:
        args.events, args.rounds, args.requests = 6000, 3, 1000
    os.environ.setdefault("PULSE_ENV", "dev")  # the in-process app: development defaults (no keys)
    import uvloop

    from infra import local
    from infra.processes import Stack

    kafka, redis = local.start_kafka(), local.start_redis()
    try:
        stack = Stack(kafka.bootstrap, redis.url)
        stack.create_topics()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result: dict[str, Any] = {}
            if args.part in ("all", "worker"):
                result["worker"] = runner.run(worker_and_memory(redis.url, args.events, args.rounds))
            if args.part in ("all", "decide"):
                result["decide"] = runner.run(decide_cpu(stack, args.requests, args.rounds))
    finally:
        kafka.close()
        redis.close()
    print(result)
    write_result("nba_cost" if args.part == "all" else f"nba_cost-{args.part}", result, args.quick)


if __name__ == "__main__":
    main()
