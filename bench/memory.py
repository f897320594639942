"""Memory: Redis bytes per typical customer profile, and the RSS of the worker and the API under load.

* **Redis.** Profiles with a realistic history (50 events each over the last week: page views, clicks,
  searches, carts, purchases, in sessions) are written through the worker's own ``BatchProcessor``; then
  ``MEMORY USAGE <key> SAMPLES 0`` is summed over every key of each profile (``engine.layout`` names them),
  with a breakdown per key and its encoding, and per section of the profile hash (bytes of field names and
  values, by the field's first character). The growth of ``used_memory`` per profile is reported too (it
  includes the keyspace's own overhead: dict entries, expiry entries), and the Redis commands and their
  ``INFO commandstats`` microseconds per event while the profiles were written (``evalsha`` includes the
  commands the script runs).
* **Processes.** RSS from ``/proc/<pid>/status`` sampled every 250 ms while the other benchmarks load them:
  the API during the open-loop runs (up to 4000 req/s), the worker while it drains the throughput topic.

``python -m bench.memory [--quick]`` runs the Redis part alone.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, cast

from bench.common import Infra, bench_config, exit_cleanly_on_signals, log, median, percentile, write_result
from bench.traffic import EventFactory, populate_profiles

EVENTS_PER_PROFILE = 50
BYTES_TARGET = 2048
#: profile hash sections by the first character of a field (see engine.layout)
SECTIONS = {"a": "affinities", "d": "dedup", "w": "windows", "r": "recent", "c": "counts", "C": "cart",
            "k": "consent", "L": "landmarks", "o": "offsets"}


async def measure(redis_url: str, customers: list[str]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from engine.config import load_config
    from engine.layout import aliases_key, customer_keys

    cfg = load_config(bench_config())
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        per_profile: list[int] = []
        per_key: dict[str, list[int]] = {}
        encodings: dict[str, dict[str, int]] = {}
        sizes: dict[str, list[int]] = {}
        sections: dict[str, list[int]] = {}
        for cid in customers:
            fields = cast(dict[str, str], await client.hgetall(customer_keys(cid, cfg).keys[0]))  # decoding client
            by: dict[str, int] = {}
            for k, v in fields.items():
                sec = SECTIONS.get(k[0], "scalars")
                by[sec] = by.get(sec, 0) + len(k.encode()) + len(v.encode())
            for sec, n in by.items():
                sections.setdefault(sec, []).append(n)
            keys = [*customer_keys(cid, cfg).keys, aliases_key(cid)]
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.memory_usage(k, samples=0)
                pipe.object("encoding", k)
                pipe.type(k)
            res = await pipe.execute()
            total = 0
            pipe = client.pipeline(transaction=False)
            present = []
            for i, k in enumerate(keys):
                used, enc, typ = res[3 * i], res[3 * i + 1], res[3 * i + 2]
                if not used:
                    continue
                total += used
                role = k.split("}", 1)[1].lstrip(":") or "hash"
                per_key.setdefault(role, []).append(used)
                encodings.setdefault(role, {})
                encodings[role][enc] = encodings[role].get(enc, 0) + 1
                present.append((role, typ))
                {"hash": pipe.hlen, "zset": pipe.zcard, "list": pipe.llen, "set": pipe.scard}.get(typ, pipe.exists)(k)
            counts = await pipe.execute()
            for (role, _), n in zip(present, counts, strict=True):
                sizes.setdefault(role, []).append(int(n))
            per_profile.append(total)
        per_profile.sort()
        return {
            "profiles": len(per_profile),
            "bytes_per_profile": {"median": median(per_profile), "p10": percentile(per_profile, 10),
                                  "p90": percentile(per_profile, 90), "max": per_profile[-1]},
            "by_key": {role: {"median_bytes": median(v), "share_pct": round(100 * sum(v) / sum(per_profile), 1),
                              "median_entries": median(sizes.get(role, [0])), "encodings": encodings[role]}
                       for role, v in sorted(per_key.items(), key=lambda kv: -sum(kv[1]))},
            "hash_sections_payload_bytes": {sec: {"median": median(v), "profiles_with": len(v)}
                                            for sec, v in sorted(sections.items(), key=lambda kv: -sum(kv[1]))},
        }
    finally:
        await client.aclose()


async def reset_stats(redis_url: str) -> None:
    import redis.asyncio as aioredis

    c = aioredis.from_url(redis_url)
    try:
        await c.config_resetstat()
    finally:
        await c.aclose()


async def command_stats(redis_url: str, events: int) -> dict[str, Any]:
    """Calls and microseconds per event of each Redis command since ``reset_stats``."""
    import redis.asyncio as aioredis

    c = aioredis.from_url(redis_url)
    try:
        stats = await c.info("commandstats")
    finally:
        await c.aclose()
    per = {k.removeprefix("cmdstat_"): {"calls_per_event": round(v["calls"] / events, 3),
                                         "usec_per_event": round(v["usec"] / events, 2)}
           for k, v in stats.items() if not k.startswith("cmdstat_config")}
    top = dict(sorted(per.items(), key=lambda kv: -kv[1]["usec_per_event"]))
    # evalsha's time includes the commands its script runs (they are listed too, with their own time)
    return {"commands": top, "script_usec_per_event": per.get("evalsha", {}).get("usec_per_event", 0.0)}


async def used_memory(redis_url: str) -> int:
    import redis.asyncio as aioredis

    c = aioredis.from_url(redis_url)
    try:
        return int((await c.info("memory"))["used_memory"])
    finally:
        await c.aclose()


def run(infra: Infra, others: dict[str, Any] | None = None) -> dict[str, Any]:
    n = 100 if infra.quick else 500
    url = infra.redis_url()
    log(f"memory: {n} profiles x {EVENTS_PER_PROFILE} events through BatchProcessor")
    f = EventFactory(77)
    now_ms = int(time.time() * 1000)
    customers = [f"c-mem-{i}" for i in range(n)]
    histories = [f.history(c, EVENTS_PER_PROFILE, customer=True, end_ms=now_ms, span_s=7 * 86400) for c in customers]
    # the popularity owner is global, not per profile: create it first so it is not counted in the growth
    warm = [f.history("c-mem-warm", EVENTS_PER_PROFILE, customer=True, end_ms=now_ms, span_s=7 * 86400)]
    asyncio.run(populate_profiles(url, warm, topic="bench-memory-warm"))
    before = asyncio.run(used_memory(url))
    asyncio.run(reset_stats(url))
    asyncio.run(populate_profiles(url, histories, topic="bench-memory"))
    stats = asyncio.run(command_stats(url, n * EVENTS_PER_PROFILE))
    after = asyncio.run(used_memory(url))
    res = asyncio.run(measure(url, customers))
    res["redis_per_event_while_writing"] = stats
    res["events_per_profile"] = EVENTS_PER_PROFILE
    res["used_memory_growth_per_profile"] = round((after - before) / n)
    res["target_bytes"] = BYTES_TARGET
    log(f"memory: median {res['bytes_per_profile']['median']:.0f} B per profile (MEMORY USAGE), "
        f"{res['used_memory_growth_per_profile']} B used_memory growth per profile")
    if others:
        rss: dict[str, Any] = {}
        lat = others.get("latency", {}).get("rss", {})
        if lat:
            rss["api_under_open_loop"] = lat.get("api")
            rss["bare_endpoint_under_open_loop"] = lat.get("bare")
        thr = others.get("throughput", {})
        if thr.get("one_worker", {}).get("rss"):
            rss["worker_draining_topic"] = thr["one_worker"]["rss"].get("worker0")
        fr = others.get("freshness", {}).get("rss", {})
        if fr:
            rss["worker_under_background_load"] = fr.get("worker")
            rss["api_during_freshness"] = fr.get("api")
        res["rss_mib"] = rss
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    exit_cleanly_on_signals()
    with Infra.started(args.quick) as infra:
        res = run(infra)
    print(write_result("memory", res, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
