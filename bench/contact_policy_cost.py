"""What the contact policy costs (``engine/contact_policy.py``, ``engine/exposure.py``), side by side in one run.

``python -m bench.contact_policy_cost [--events 20000] [--rounds 4] [--requests 2000] [--part all|worker|decide]``

1. **Worker**: the same events (a shop's mix from ``bench.traffic`` with one impression in five, on web, email
   and push, naming one of 60 actions; spread over 3 days) applied by two ``BatchProcessor``\\ s on one real
   Redis: with ``[contact_policy] enabled`` (the exposure records written by the Lua script's ``x`` operation)
   and without, rounds alternated: worker CPU per event, Redis CPU per event (``INFO cpu``), events/s.
2. **Decide**: the real app in process (``bench.decide_micro.drive``, real Kafka and Redis), the placements of
   ``bench.nba_cost`` (``nba50``: channels, values, arbitration; ``plain50``: the policy's order; 50 actions
   each), customers whose profiles hold exposure records (impressions of 20 of the actions this week, emails
   and pushes, purchases, dismissals), the configuration swapped between the policy on and off between
   rounds (the same app, the same profiles): process CPU per decision, and the Redis commands per decision
   (``INFO commandstats``: the profile read is the same one round trip either way).
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
import uuid
from pathlib import Path
from typing import Any

from bench.common import write_result

SIDES = ("off", "on")


def _policy_off(config: Any) -> Any:
    return dataclasses.replace(config, contact_policy=dataclasses.replace(config.contact_policy, enabled=False))


def exposures(visitor: str, rng: random.Random, now_ms: int, actions: list[str]) -> list[dict[str, Any]]:
    """Impressions of 20 of the actions this week (web, email, push), a dismissal: what a contacted customer has."""
    out = []
    for aid in rng.sample(actions, 20):
        for _ in range(rng.randint(1, 3)):
            out.append({"event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "type": "impression",
                        "timestamp": now_ms - rng.randint(60_000, 6 * 86_400_000), "customer_id": visitor,
                        "context": {"channel": "web"},
                        "properties": {"action_id": aid, "channel": rng.choice(("web", "web", "email", "push"))}})
    out.append({"event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "type": "feedback", "customer_id": visitor,
                "timestamp": now_ms - rng.randint(60_000, 86_400_000), "context": {"channel": "web"},
                "properties": {"decision_id": uuid.uuid4().hex, "action_id": rng.choice(actions), "kind": "dismiss"}})
    return out


async def redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def worker_cost(redis_url: str, events: int, rounds: int, batch: int = 500) -> dict[str, Any]:
    import orjson
    import redis.asyncio as aioredis

    from bench.common import bench_config
    from bench.traffic import EventFactory
    from engine.config import load_config
    from engine.features import FeatureExtractor
    from engine.profile_store import ProfileStore
    from streams.pipeline import BatchProcessor, Record

    on = load_config(bench_config())
    assert on.contact_policy.enabled, "bench/catalogue.toml includes config/engine.toml, which enables the policy"
    configs = {"on": on, "off": _policy_off(on)}
    assert FeatureExtractor(configs["off"]).exposure is None
    client = aioredis.from_url(redis_url, decode_responses=True)

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"benchmark event rejected: {headers} {value[:200]!r}")

    procs = {s: BatchProcessor(ProfileStore(client, configs[s]), no_dlq) for s in SIDES}
    cpu: dict[str, list[float]] = {s: [] for s in SIDES}
    rcpu: dict[str, list[float]] = {s: [] for s in SIDES}
    rate: dict[str, list[float]] = {s: [] for s in SIDES}
    try:
        for r in range(rounds):
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                factory, rng = EventFactory(700 + r), random.Random(r)  # the same events for both sides
                records = []
                for i, (k, v) in enumerate(factory.stream(events, max(events // 20, 1), prefix=f"cp{r}-{side}-",
                                                          span_s=3 * 86400.0)):
                    if rng.random() < 0.2:  # one event in five an impression of the same visitor
                        ev = orjson.loads(v)
                        ev.update(type="impression", properties={"action_id": f"act-{rng.randrange(60)}",
                                                                 "channel": rng.choice(("web", "email", "push"))})
                        v = orjson.dumps(ev)
                    records.append(Record("events", hash(k) % 8, i, k, v))
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
                print(f"round {r} policy {side:3} worker {cpu[side][-1]:6.1f} us/event, redis {rcpu[side][-1]:6.1f} "
                      f"us/event, {rate[side][-1]:,.0f} events/s", flush=True)
    finally:
        await client.aclose()
    med = {s: {"worker_us_per_event": round(statistics.median(cpu[s]), 1),
               "redis_us_per_event": round(statistics.median(rcpu[s]), 1),
               "events_per_s": round(statistics.median(rate[s]))} for s in SIDES}
    return {"events_per_round": events, "impression_share": 0.2, "rounds": rounds, "batch": batch, "medians": med,
            "worker_cpu_ratio": round(med["on"]["worker_us_per_event"] / med["off"]["worker_us_per_event"], 3),
            "redis_cpu_ratio": round(med["on"]["redis_us_per_event"] / med["off"]["redis_us_per_event"], 3),
            "events_per_s_ratio": round(med["on"]["events_per_s"] / med["off"]["events_per_s"], 3)}


async def commands(client: Any) -> float:
    stats = await client.info("commandstats")
    return float(sum(v["calls"] for v in stats.values()))


async def decide_cost(stack: Any, requests: int, rounds: int) -> dict[str, Any]:
    import orjson
    import redis.asyncio as aioredis

    from bench.decide_micro import drive
    from bench.nba_cost import nba_config
    from bench.traffic import EventFactory, populate_profiles
    from serving.app import create_app
    from serving.decide import DecideFastPath

    f = EventFactory(13)
    now_ms = int(time.time() * 1000)
    rng = random.Random(7)
    customers = [f"c-cap-{i}" for i in range(300)]
    actions = [f"{p}-{i}" for p in ("nba50", "plain50") for i in range(50)]
    await populate_profiles(stack.redis_url, [
        f.history(v, rng.randint(10, 60), customer=True, end_ms=now_ms, span_s=14 * 86400)
        + exposures(v, rng, now_ms, actions) for v in customers])
    placements = ("nba50", "plain50")
    bodies = {p: [orjson.dumps({"customer_id": c, "placement": p, "n": 3, "context": {"channel": "web"}})
                  for c in customers] for p in placements}
    client = aioredis.from_url(stack.redis_url, decode_responses=True)
    cpu: dict[tuple[str, str], list[float]] = {(p, s): [] for p in placements for s in SIDES}
    cmds: dict[tuple[str, str], list[float]] = {(p, s): [] for p in placements for s in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(stack.env(ENGINE_CONFIG=str(nba_config(Path(tmp))), DECIDE_SHED_TARGET_MS="0",
                                    DECIDE_BUDGET_MS="5000"))  # no shedding, never degraded: both sides personalised
        fastapi_app = create_app()
        app = DecideFastPath(fastapi_app)
        async with fastapi_app.router.lifespan_context(fastapi_app):
            svc = fastapi_app.state.services
            configs = {"on": svc.config, "off": _policy_off(svc.config)}
            assert configs["on"].contact_policy.enabled
            for p in placements:
                await drive(app, bodies[p], 600, 16)  # warm-up
            for r in range(rounds):
                for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                    svc.config = configs[side]
                    for p in placements:
                        c0 = await commands(client)
                        used, wall, st = await drive(app, bodies[p], requests, 16)
                        assert set(st) == {200}, st
                        cmds[p, side].append((await commands(client) - c0 - 1) / requests)  # -1: INFO itself
                        cpu[p, side].append(1e6 * used / requests)
                        print(f"round {r} {p:8} policy {side:3} {cpu[p, side][-1]:7.1f} us CPU per decision, "
                              f"{cmds[p, side][-1]:.3f} Redis commands per decision, {requests / wall:,.0f}/s",
                              flush=True)
            svc.config = configs["on"]
            import serving.decide as d

            excluded: dict[str, float] = {}
            for p in placements:  # how much the policy had to exclude (the work it did)
                n = 0
                for b in bodies[p][:100]:
                    req = d.parse_decide_request(b, svc.config)
                    prof = await d.read_profile(svc, req, time.time())
                    ranking, _ = d.rank(svc, req, prof, True, time.time(), random.Random(0))
                    n += len(ranking.unreachable)
                excluded[p] = n / 100
            decisions = dict(svc.metrics.decisions.values)
    await client.aclose()
    med = {f"{p}/{s}": round(statistics.median(cpu[p, s]), 1) for p in placements for s in SIDES}
    out: dict[str, Any] = {"requests_per_round": requests, "rounds": rounds, "candidates": 50,
                           "us_cpu_per_decision": med, "decisions": decisions,
                           "redis_commands_per_decision": {f"{p}/{s}": round(statistics.median(cmds[p, s]), 3)
                                                           for p in placements for s in SIDES},
                           "candidates_excluded_per_decision_with_policy": excluded}
    for p in placements:
        pairs = [on / off for on, off in zip(cpu[p, "on"], cpu[p, "off"], strict=True)]
        out[f"{p}_ratio"] = round(med[f"{p}/on"] / med[f"{p}/off"], 3)
        out[f"{p}_ratio_median_of_rounds"] = round(statistics.median(pairs), 3)
        out[f"{p}_extra_us_median_of_rounds"] = round(statistics.median(
            on - off for on, off in zip(cpu[p, "on"], cpu[p, "off"], strict=True)), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("all", "worker", "decide"), default="all")
    args = ap.parse_args()
    if args.quick:
        args.events, args.rounds, args.requests = 5000, 2, 600
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
                result["worker"] = runner.run(worker_cost(redis.url, args.events, args.rounds))
            if args.part in ("all", "decide"):
                result["decide"] = runner.run(decide_cost(stack, args.requests, args.rounds))
    finally:
        kafka.close()
        redis.close()
    print(result)
    write_result("contact_policy_cost" if args.part == "all" else f"contact_policy_cost-{args.part}", result,
                 args.quick)


if __name__ == "__main__":
    main()
