"""Micro-benchmark: Redis server CPU of the per-owner Lua applier (``engine/lua/apply_ops.lua``).

1. ``--customers`` customers get a realistic history of ``--warm`` events each over the week before a
   fixed instant (``EventFactory.history``), applied through the worker's own ``BatchProcessor``; the
   database is then saved with ``DUMP``.
2. ``--events`` further events (the stream's mix, ``EventFactory.event``: page views, clicks, searches,
   carts, purchases, identifies, consents, feedback) of uniformly chosen customers over the following hour
   go through ``BatchProcessor`` in batches of 500 once, recording every ``ProfileStore.apply`` call (an
   owner batch holds ~1 event, as in the stream benchmark; profiles are ~``warm`` + ``events / customers
   / 2`` events deep on average, 50 by default).
3. Each repeat restores the database (``FLUSHALL`` + ``RESTORE``), runs ``CONFIG RESETSTAT`` and replays
   the recorded ``apply`` calls (the same ``EVALSHA`` commands, in order, with little Python around them).
   ``INFO commandstats`` gives the microseconds of Redis CPU per ``EVALSHA`` call and per event (the
   script's time includes the commands it runs), ``INFO cpu`` the whole server's CPU per event. The table
   shows the median, min and max over the repeats; the machine is shared, so trust medians, and compare
   scripts in one run (``--script``/``--baseline``: their repeats are interleaved).

All timestamps are fixed, so the resulting profiles are deterministic: ``digest`` is a SHA-256 over every
key's contents (hash fields sorted, zset members with their scores), which must not change when the
script is optimised.

``python -m bench.lua_micro [--customers 2000 --warm 40 --events 20000 --repeats 5]``
``[--baseline 9c1632b] [--script a.lua --script b.lua] [--commands]``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import bench_config
from bench.traffic import EventFactory, to_records

END_MS = 1_750_000_000_000  # fixed: deterministic profiles (the script never reads the clock)
PARTITIONS = 8
BATCH = 500


def workload(customers: int, warm: int, events: int, seed: int = 7) -> tuple[list[Any], list[Any]]:
    """(warm-up records, measured records): Kafka records of one topic, offsets continuing."""
    f = EventFactory(seed)
    ids = [f"c-micro-{i}" for i in range(customers)]
    warm_end = END_MS - 3600 * 1000
    hist = [e for c in ids for e in f.history(c, warm, customer=True, end_ms=warm_end, span_s=7 * 86400)]
    hist.sort(key=lambda e: e["timestamp"])
    rng = random.Random(seed + 1)
    sessions = {c: f"s-live-{i}" for i, c in enumerate(ids)}
    live = []
    for i in range(events):
        c = ids[rng.randrange(customers)]
        if rng.random() < 0.02:
            sessions[c] = f"s-{rng.getrandbits(32):x}"
        live.append(f.event(c, customer=True, ts_ms=warm_end + 3600 * 1000 * i // max(events, 1),
                            session=sessions[c]))
    offsets = [0] * PARTITIONS
    return to_records(hist, "micro", offsets), to_records(live, "micro", offsets)


async def _process(proc: Any, records: list[Any]) -> None:
    for i in range(0, len(records), BATCH):
        await proc.process(records[i:i + BATCH])


async def digest(client: Any) -> str:
    h = hashlib.sha256()
    keys = sorted([k async for k in client.scan_iter(count=1000)])
    for k in keys:
        t = await client.type(k)
        if t == b"hash":
            items = sorted((await client.hgetall(k)).items())
        elif t == b"zset":
            items = sorted(await client.zrange(k, 0, -1, withscores=True))
        elif t == b"set":
            items = sorted(await client.smembers(k))
        elif t == b"string":
            items = [await client.get(k)]
        else:
            items = [t]
        h.update(repr((k, items)).encode())
    return h.hexdigest()[:16]


async def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    import redis.asyncio as aioredis

    import engine.profile_store as ps
    from engine.config import load_config
    from infra.local import start_redis
    from streams.pipeline import BatchProcessor

    flat = ps.encode_events
    # name -> (script, argument encoder)
    scripts: dict[str, tuple[str, Any]] = {}
    if args.baseline:
        # a script from before the flat argument encoding: ARGV[4] = orjson.dumps(rows)
        text = subprocess.run(["git", "show", f"{args.baseline}:engine/lua/apply_ops.lua"], check=True,
                              capture_output=True, text=True).stdout
        scripts[f"{args.baseline} (nested JSON)"] = (text, orjson.dumps)
    for name in args.script:
        scripts[name] = (Path(name).read_text(), flat)
    if not args.script:
        scripts["apply_ops.lua"] = (ps.APPLY_OPS_LUA, flat)

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"event rejected: {headers} {value[:200]!r}")

    t0 = time.perf_counter()
    warm_recs, live_recs = workload(args.customers, args.warm, args.events)
    cfg = load_config(bench_config())
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in scripts}
    with start_redis() as redis:
        client = aioredis.from_url(redis.url, decode_responses=True)
        raw = aioredis.from_url(redis.url)
        try:
            current = ps.APPLY_OPS_LUA
            store = ps.ProfileStore(client, cfg)
            proc = BatchProcessor(store, no_dlq)
            await _process(proc, warm_recs)
            keys = [k async for k in raw.scan_iter(count=1000)]
            pipe = raw.pipeline(transaction=False)
            for k in keys:
                pipe.dump(k)
            dumps = await pipe.execute()

            async def restore() -> None:
                await raw.flushall()
                pipe = raw.pipeline(transaction=False)
                for k, d in zip(keys, dumps, strict=True):
                    pipe.restore(k, 0, d)
                await pipe.execute()

            # the measured events go through BatchProcessor once, recording every ProfileStore.apply call;
            # the repeats replay those calls (the same EVALSHA commands, in order, with little Python around)
            calls: list[Any] = []
            real_apply = store.apply

            async def recording_apply(batches: Any, on_sent: Any = None) -> list[int]:
                calls.append(list(batches))
                return await real_apply(batches, on_sent)

            store.apply = recording_apply  # type: ignore[method-assign,assignment]  # records, then calls the real one
            await _process(proc, live_recs)
            store.apply = real_apply  # type: ignore[method-assign]  # restored
            ps.APPLY_OPS_LUA = current
            print(f"# {len(warm_recs)} warm-up events, {len(keys)} keys saved, {len(live_recs)} measured events "
                  f"in {len(calls)} apply calls ({time.perf_counter() - t0:.1f}s)", flush=True)
            for rep in range(args.repeats):
                for name, (text, encoder) in scripts.items():  # interleaved: A/B see the same machine load
                    ps.APPLY_OPS_LUA = text
                    ps.encode_events = encoder
                    store._sha = None
                    await restore()
                    await raw.config_resetstat()
                    cpu0 = await raw.info("cpu")
                    for batches in calls:
                        await store.apply(batches)
                    cpu1 = await raw.info("cpu")
                    cmds = await raw.info("commandstats")
                    st = cmds.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
                    if args.commands and rep == 0:
                        top = sorted(cmds.items(), key=lambda kv: -kv[1]["calls"])
                        print("    " + "  ".join(f"{k.removeprefix('cmdstat_')} {v['calls'] / len(live_recs):.2f}/ev "
                                                 f"{v['usec_per_call']:.1f}us" for k, v in top))
                    server = sum(cpu1[f] - cpu0[f] for f in ("used_cpu_sys", "used_cpu_user"))
                    row = {"calls": st["calls"], "usec_per_call": st["usec"] / st["calls"],
                           "usec_per_event": st["usec"] / len(live_recs),
                           "server_usec_per_event": 1e6 * server / len(live_recs),
                           "digest": await digest(raw) if rep == 0 or args.digest_all else ""}
                    rows[name].append(row)
                    print(f"  {rep + 1} {name}: {row['usec_per_call']:.2f} us/call  {row['usec_per_event']:.2f} us/ev"
                          f"  server {row['server_usec_per_event']:.2f} us/event  {row['digest']}", flush=True)
        finally:
            await client.aclose()
            await raw.aclose()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=40, help="events per customer before measuring")
    ap.add_argument("--events", type=int, default=20000, help="measured events (all customers)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", metavar="REV",
                    help="also measure the script of git revision REV (one before the flat argument encoding)")
    ap.add_argument("--script", action="append", default=[],
                    help="a Lua script to load instead of engine/lua/apply_ops.lua (repeatable: A/B, interleaved)")
    ap.add_argument("--commands", action="store_true",
                    help="print the Redis commands per event (the script's own included) of the first repeat")
    ap.add_argument("--digest-all", action="store_true", help="digest the database after every repeat")
    args = ap.parse_args(argv)
    results = asyncio.run(run(args))
    ok = True
    for name, rows in results.items():
        print()
        print(f"{name} (median of {len(rows)})")
        print(f"{'metric':<34}{'median':>10}{'min':>10}{'max':>10}")
        for label, key in (("evalsha calls per event", None), ("evalsha Redis CPU us per call", "usec_per_call"),
                           ("evalsha Redis CPU us per event", "usec_per_event"),
                           ("Redis server CPU us per event", "server_usec_per_event")):
            vals = [r["calls"] / args.events for r in rows] if key is None else [r[key] for r in rows]
            print(f"{label:<34}{statistics.median(vals):>10.2f}{min(vals):>10.2f}{max(vals):>10.2f}")
        digests = {r["digest"] for r in rows if r["digest"]}
        print(f"profiles digest: {', '.join(sorted(digests))}")
        ok = ok and len(digests) == 1
    return 0 if ok else 1

if __name__ == "__main__":
    raise SystemExit(main())
