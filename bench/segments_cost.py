"""What segment tracking costs the worker: CPU per event of the batch writes alone and of the writes followed by
the segment tracker (``streams/segments.py``: read back the profiles a batch wrote, evaluate, publish changes),
in one process on a real Redis, batches alternated between the two, so a shared machine's noise hits both.

``python -m bench.segments_cost [--events 40000] [--batch 500] [--rounds 5]``

Each round applies fresh events (a shop's mix from ``bench.traffic``) for fresh visitors, so both sides do the
same amount of work; the published changes go to an in-memory sink (Kafka's cost is the outbox's, not
measured here). Prints the process CPU per event for each side and their difference, medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any


async def measure(redis_url: str, events: int, batch: int, rounds: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from bench.common import bench_config
    from bench.traffic import EventFactory
    from engine.config import load_config
    from engine.profile_store import ProfileStore
    from streams.pipeline import BatchProcessor, Record
    from streams.segments import SegmentTracker

    config = load_config(bench_config())
    client = aioredis.from_url(redis_url, decode_responses=True)
    sent: list[bytes] = []

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        return None

    async def sink(key: bytes, value: bytes) -> asyncio.Future[None]:
        sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    processor = BatchProcessor(ProfileStore(client, config), no_dlq)
    tracker = SegmentTracker(client, config, sink)
    cpu: dict[str, list[float]] = {"writes": [], "writes+segments": []}
    try:
        for r in range(rounds):
            for side in (("writes", "writes+segments") if r % 2 == 0 else ("writes+segments", "writes")):
                factory = EventFactory(100 + r * 2 + (side == "writes"))
                stream = list(factory.stream(events, max(events // 20, 1), prefix=f"seg{r}-{side[:8]}-"))
                records = [Record("events", hash(k) % 8, i, k, v) for i, (k, v) in enumerate(stream)]
                used = 0.0
                for i in range(0, len(records), batch):
                    chunk = records[i:i + batch]
                    t = time.process_time()
                    stats = await processor.process(chunk)
                    if side == "writes+segments":
                        await tracker.update(stats.owners, time.time())
                    used += time.process_time() - t
                cpu[side].append(1e6 * used / len(records))
                print(f"round {r} {side:16} {cpu[side][-1]:6.1f} us CPU per event", flush=True)
    finally:
        await client.aclose()
    base, with_segments = statistics.median(cpu["writes"]), statistics.median(cpu["writes+segments"])
    return {"events_per_round": events, "batch": batch, "rounds": rounds, "segments": len(config.segments),
            "us_per_event": {"writes": round(base, 1), "writes+segments": round(with_segments, 1)},
            "segments_us_per_event": round(with_segments - base, 1), "ratio": round(with_segments / base, 3),
            "changes_published": len(sent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from infra import local

    redis = local.start_redis()
    try:
        result = asyncio.run(measure(redis.url, args.events, args.batch, args.rounds))
    finally:
        redis.close()
    print(result)


if __name__ == "__main__":
    main()
