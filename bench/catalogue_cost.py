"""What a catalogue of 5,000 items costs a decision when it comes from the admin API rather than from the file,
and how long an admin change takes to be live in another API process.

``python -m bench.catalogue_cost [--items 5000] [--requests 1000] [--rounds 3]``

Three in-process apps (the real app, ASGI, no HTTP server, on real local Kafka and Redis), each on its own Redis
database with the same visitors' profiles:

* ``small``: the benchmark catalogue (bench/catalogue.toml, 60 actions), for scale;
* ``file``: the same plus ``--items`` items in ``product_recs``, declared in a generated configuration file;
* ``admin``: the benchmark catalogue, the same items uploaded through ``POST /v1/admin/actions/bulk``.

Rounds alternate the apps; the figure is the process CPU per decision (median of the rounds) and the
per-request latency percentiles of the same rounds. Then the pick-up delay: a change written to the ``admin``
app's Redis by another client (as another API process would), timed until the ``admin`` app serves it
(``--changes`` times; the poll is once a second, then a rebuild of the whole catalogue off the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.decide_micro import drive


def items(n: int) -> list[dict[str, Any]]:
    from bench.traffic import CATEGORIES

    return [{"id": f"item-{i}", "placements": ["product_recs"], "category": CATEGORIES[i % len(CATEGORIES)],
             "item_id": f"sku-{CATEGORIES[i % len(CATEGORIES)]}-{i // len(CATEGORIES)}", "tags": ["bulk"],
             "title": f"Item {i}", "payload": {"url": f"https://shop.example/item/{i}"}} for i in range(n)]


def file_config(base: Path, tables: list[dict[str, Any]]) -> Path:
    """An overlay of the benchmark catalogue that declares ``tables`` as ``[[action]]`` tables."""
    lines = [f"include = [{str(base)!r}]".replace("'", '"'), ""]
    for t in tables:
        lines.append("[[action]]")
        for key, value in t.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {orjson.dumps(value).decode()}")
        lines.append("")
    path = Path(tempfile.mkdtemp(prefix="pulse-catalogue-")) / "engine.toml"
    path.write_text("\n".join(lines))
    return path


def bodies_for(customers: list[str], anons: list[str], n: int) -> list[bytes]:
    rng = random.Random(3)
    out = []
    for _ in range(n):
        who = {"customer_id": rng.choice(customers)} if rng.random() < 0.7 else {"anonymous_id": rng.choice(anons)}
        placement = "product_recs" if rng.random() < 0.6 else "home_hero"
        out.append(orjson.dumps({**who, "placement": placement}))
    return out


async def latencies(app: Any, bodies: list[bytes], n: int) -> list[float]:
    """The wall time of each of ``n`` requests sent one at a time (ms)."""
    times: list[float] = []
    for i in range(n):
        t = time.perf_counter()
        await drive(app, [bodies[i % len(bodies)]], 1, 1)
        times.append(1000 * (time.perf_counter() - t))
    return times


async def main_async(args: argparse.Namespace, kafka_bootstrap: str, redis_base: str) -> None:
    import httpx

    from bench.common import bench_config
    from bench.traffic import EventFactory, populate_profiles
    from infra.processes import Stack

    f = EventFactory(11)
    now_ms = int(time.time() * 1000)
    rng = random.Random(5)
    customers = [f"c-cat-{i}" for i in range(300)]
    anons = [f"a-cat-{i}" for i in range(100)]
    histories = [f.history(v, rng.randint(10, 60), customer=True, end_ms=now_ms) for v in customers]
    histories += [f.history(v, rng.randint(10, 60), customer=False, end_ms=now_ms) for v in anons]
    tables = items(args.items)
    configs = {"small": bench_config(), "file": file_config(bench_config().resolve(), tables),
               "admin": bench_config()}
    from contextlib import AsyncExitStack

    bodies = bodies_for(customers, anons, 4000)
    apps: dict[str, Any] = {}
    services: dict[str, Any] = {}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    lat: dict[str, list[float]] = {name: [] for name in configs}
    async with AsyncExitStack() as stack_:
        for db, (name, path) in enumerate(configs.items()):
            url = f"{redis_base}/{db}"
            stack = Stack(kafka_bootstrap, url)
            await asyncio.to_thread(stack.create_topics)  # it runs its own event loop
            await populate_profiles(url, histories)
            os.environ.update(stack.env(ENGINE_CONFIG=str(path)))
            from serving.app import create_app  # after the environment: the module builds an app on import
            from serving.decide import DecideFastPath

            fastapi_app = create_app()
            await stack_.enter_async_context(fastapi_app.router.lifespan_context(fastapi_app))
            apps[name], services[name] = DecideFastPath(fastapi_app), fastapi_app.state.services
            if name == "admin":
                transport = httpx.ASGITransport(app=fastapi_app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                    t = time.perf_counter()
                    body = b"\n".join(orjson.dumps(t) for t in tables)
                    r = await client.post("/v1/admin/actions/bulk", content=body, timeout=120,
                                          headers={"Content-Type": "application/x-ndjson"})
                    assert r.status_code == 200, r.text
                    print(f"bulk upload of {len(tables)} items: {time.perf_counter() - t:.2f} s "
                          f"(validation, write, this process's rebuild)", flush=True)
            print(f"{name}: {len(services[name].config.actions)} actions, "
                  f"{len(services[name].config.actions_for('product_recs'))} in product_recs", flush=True)
        for app in apps.values():  # warm-up
            await drive(app, bodies, 300, args.concurrency)
        order = list(apps)
        for i in range(args.rounds):
            for name in (order if i % 2 == 0 else order[::-1]):
                used, wall, st = await drive(apps[name], bodies, args.requests, args.concurrency)
                assert set(st) == {200}, st
                cpu[name].append(1e6 * used / args.requests)
                lat[name] += await latencies(apps[name], bodies, args.requests // 2)
                print(f"round {i} {name:5}: {cpu[name][-1]:,.0f} us CPU per decision, "
                      f"{args.requests / wall:,.0f}/s wall", flush=True)
        print("\nmedian CPU per decision, and latency of one request at a time (ms):")
        for name in apps:
            q = statistics.quantiles(lat[name], n=100)
            print(f"  {name:5}: {statistics.median(cpu[name]):7,.0f} us CPU; p50 {statistics.median(lat[name]):.2f} "
                  f"ms, p99 {q[98]:.2f} ms", flush=True)
        base = statistics.median(cpu["file"])
        print(f"  admin/file CPU ratio {statistics.median(cpu['admin']) / base:.3f}", flush=True)
        await pick_up(services["admin"], f"{redis_base}/{list(configs).index('admin')}", args.changes)


async def pick_up(svc: Any, url: str, changes: int) -> None:
    """Write ``changes`` changes with another client and time each until ``svc`` serves it."""
    import redis.asyncio as aioredis

    from engine.catalogue import ACTIVE, Entry
    from engine.catalogue_store import CatalogueStore

    client = aioredis.from_url(url, decode_responses=True)
    store = CatalogueStore(client)
    delays, rebuilds = [], []
    try:
        for i in range(changes):
            await asyncio.sleep(random.Random(i).random())  # not in step with the poll
            table = {"id": f"changed-{i}", "placements": ["product_recs"], "category": "shoes"}
            t = time.perf_counter()
            def plan(_cat: Any, v: int, table: dict[str, Any] = table) -> tuple[dict[str, Entry], dict[str, Any]]:
                return {table["id"]: Entry(v, ACTIVE, table)}, {}

            version, _ = await store.change(plan)
            while svc.catalogue_version < version:
                await asyncio.sleep(0.002)
            delays.append(time.perf_counter() - t)
            rebuilds.append(svc.catalogue.rebuild_seconds)
    finally:
        await client.aclose()
    print(f"\npick-up delay over {changes} changes ({len(svc.config.actions)} actions): median "
          f"{statistics.median(delays):.2f} s, max {max(delays):.2f} s; rebuild median "
          f"{statistics.median(rebuilds):.3f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--changes", type=int, default=10)
    args = ap.parse_args()
    import uvloop

    from infra import local

    kafka, redis = local.start_kafka(), local.start_redis()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main_async(args, kafka.bootstrap, redis.url.rsplit("/", 1)[0]))
    finally:
        kafka.close()
        redis.close()


if __name__ == "__main__":
    main()
