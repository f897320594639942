"""What attribution costs the worker: CPU per event of the batch writes with attribution off and on (the
``streams/attribution.py`` hook: identities, decision records, erasure markers and consent read, then one
script call per person with touches or conversions), in one process on a real Redis, batches alternated
between the two sides so a shared machine's noise hits both. Redis's own CPU per event is measured too
(``INFO cpu`` before and after each side's batches).

``python -m bench.attribution_cost [--events 40000] [--batch 500] [--rounds 5] [--impressions 0.5]``

Each round applies fresh events (a shop's mix from ``bench.traffic``; besides, after a page view, with
probability ``--impressions``, an ``impression`` of one of the configured actions, as a site with a
personalised slot on most pages sends) for fresh visitors, so both sides do the same work but the hook's.
Prints the worker process's and Redis's CPU per event for each side, their differences and ratios, medians
of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from typing import Any


def with_impressions(stream: list[tuple[bytes, bytes]], share: float, actions: list[tuple[str, str]],
                     seed: int) -> list[tuple[bytes, bytes]]:
    """The stream with an impression after a share of its page views (same visitor, a configured action)."""
    import orjson

    rng = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    for key, value in stream:
        out.append((key, value))
        e = orjson.loads(value)
        if e["type"] == "page_view" and rng.random() < share:
            action, placement = rng.choice(actions)
            imp = {**e, "event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "type": "impression",
                   "timestamp": e["timestamp"] + 1,
                   "properties": {"action_id": action, "placement": placement, "position": 0,
                                  "decision_id": uuid.UUID(int=rng.getrandbits(128)).hex}}
            out.append((key, orjson.dumps(imp)))
    return out


async def measure(redis_url: str, events: int, batch: int, rounds: int, impressions: float) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from bench.common import bench_config
    from bench.traffic import EventFactory
    from engine.config import load_config
    from engine.profile_store import ProfileStore
    from engine.redis_connection import HiredisPackedConnection
    from streams.attribution import AttributionFeed
    from streams.pipeline import BatchProcessor, Record

    config = load_config(bench_config())
    client = aioredis.from_url(redis_url, decode_responses=True, connection_class=HiredisPackedConnection)

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        return None

    async def redis_cpu() -> float:
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    feed = AttributionFeed(client, config)
    sides = {"off": BatchProcessor(ProfileStore(client, config), no_dlq),
             "on": BatchProcessor(ProfileStore(client, config), no_dlq, hooks=[feed.on_events])}
    actions = [(a.id, a.placements[0]) for a in config.actions.values()]
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    rcpu: dict[str, list[float]] = {"off": [], "on": []}
    n_events = 0
    try:
        for r in range(rounds):
            for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                factory = EventFactory(300 + r * 2 + (side == "off"))
                stream = with_impressions(
                    list(factory.stream(events, max(events // 20, 1), prefix=f"attr{r}-{side}-")),
                    impressions, actions, r)
                records = [Record("events", hash(k) % 8, i, k, v) for i, (k, v) in enumerate(stream)]
                n_events = len(records)
                used, r0 = 0.0, await redis_cpu()
                for i in range(0, len(records), batch):
                    t = time.process_time()
                    await sides[side].process(records[i:i + batch])
                    used += time.process_time() - t
                rcpu[side].append(1e6 * (await redis_cpu() - r0) / len(records))
                cpu[side].append(1e6 * used / len(records))
                print(f"round {r} {side:3} worker {cpu[side][-1]:6.1f} us, redis {rcpu[side][-1]:6.1f} us CPU "
                      "per event", flush=True)
    finally:
        await client.aclose()
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    roff, ron = statistics.median(rcpu["off"]), statistics.median(rcpu["on"])
    return {"events_per_round": n_events, "batch": batch, "rounds": rounds, "impressions_after_page_views": impressions,
            "worker_us_per_event": {"off": round(off, 1), "on": round(on, 1)},
            "worker_attribution_us_per_event": round(on - off, 1), "worker_ratio": round(on / off, 3),
            "redis_us_per_event": {"off": round(roff, 1), "on": round(ron, 1)},
            "redis_attribution_us_per_event": round(ron - roff, 1), "redis_ratio": round(ron / roff, 3),
            "touches": feed.touches, "conversions_credited": feed.credited}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--impressions", type=float, default=0.5)
    args = ap.parse_args()
    from infra import local

    redis = local.start_redis()
    try:
        result = asyncio.run(measure(redis.url, args.events, args.batch, args.rounds, args.impressions))
    finally:
        redis.close()
    print(result)


if __name__ == "__main__":
    main()
