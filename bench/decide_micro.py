"""In-process microbenchmark of ``POST /v1/decide``: the real app (ASGI, no HTTP server) on real local Kafka and
Redis, driven with the latency benchmark's request mix; prints the process CPU per decision.

``python -m bench.decide_micro [--requests 4000] [--concurrency 16] [--profile out.txt]``

``--keys`` compares the same app with API keys on (a public key and an allowed origin on every request, as a
browser sends them) and off: two apps on the same Redis, rounds alternated, CPU per decision side by side (process
CPU, so less sensitive than wall-clock latency to a machine shared with other work).

``--parts`` also times the handler's stages one at a time over 2,000 of the requests (profiles read from Redis
once, beforehand): parse, decode, rank (arm, context, eligible actions, policy), answer encoding, decision record
+ buffering; microseconds per request, median of 7 passes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import Sequence
from typing import Any


async def drive(app: Any, bodies: list[bytes], n: int, concurrency: int,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> tuple[float, float, dict[int, int]]:
    statuses: dict[int, int] = {}
    it = iter(range(n))

    async def one(body: bytes) -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/decide", "raw_path": b"/v1/decide",
                 "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
                 "client": ("127.0.0.1", 5555), "state": {},
                 "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()), *headers]}
        await app(scope, receive, send)

    async def worker() -> None:
        for i in it:
            await one(bodies[i % len(bodies)])

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu0, time.perf_counter() - wall0, statuses


async def time_parts(svc: Any, bodies: list[bytes]) -> None:
    import statistics

    import orjson

    import serving.decide as d
    from engine.features import decode
    from engine.layout import identity_key

    now = time.time()
    reqs = [d.parse_decide_request(b, svc.config) for b in bodies]
    raws = []
    for req in reqs:  # what read_profile gets from Redis, before decoding
        subject = req.customer_id or req.anonymous_id
        assert subject is not None  # a parsed request has one of them
        ident = await svc.redis.get(identity_key(subject)) if req.customer_id is None else None
        raw = await (svc.store.read_raw(ident or subject) if ident or req.customer_id is not None
                     else svc.store.read_anonymous(subject))  # the two key spaces (engine.layout)
        raws.append((ident or subject, raw))
    profiles = [decode(s, raw, svc.config, now) for s, raw in raws]
    if os.environ.get("PARTS_DUMP"):  # the raw profiles and requests, for offline tuning (JSON: no pickles)
        def as_text(value: object) -> str:
            if isinstance(value, bytes | bytearray):
                return value.decode("utf-8", "surrogateescape")
            raise TypeError(f"{type(value).__name__} in a PARTS_DUMP")

        with open(os.environ["PARTS_DUMP"], "wb") as f:
            f.write(orjson.dumps({"bodies": bodies, "raws": raws, "now": now}, default=as_text))
    pers = [p is not None and p.exists and p.personalisation_allowed for p in profiles]
    rng = random.Random(1)
    ranked = [d.rank(svc, r, p, ok, now, rng) for r, p, ok in zip(reqs, profiles, pers, strict=True)]
    parts = svc.answer_parts

    def answer(ranking: Any) -> bytes:
        actions = b",".join([parts[a.id][0] + orjson.dumps(round(float(s), 6)) + parts[a.id][1]
                             for a, s in ranking.actions])
        return orjson.dumps({"decision_id": "x" * 32, "actions": orjson.Fragment(b"[" + actions + b"]"),
                             "propensity": float(ranking.propensity), "policy": ranking.policy})

    def record(i: int) -> None:
        req, (ranking, context) = reqs[i], ranked[i]
        cands = req.candidates if req.candidates is not None else svc.placement_action_ids[req.placement]
        rec = d.decision_record("x" * 32, req, ranking, context, cands, False, now)
        d.publish_decision(svc, req.customer_id or req.anonymous_id or "", rec)

    stages: dict[str, Any] = {
        "parse": lambda: [d.parse_decide_request(b, svc.config) for b in bodies],
        "decode": lambda: [decode(s, raw, svc.config, now) for s, raw in raws],
        "rank (all)": lambda: [d.rank(svc, r, p, ok, now, rng) for r, p, ok in zip(reqs, profiles, pers, strict=True)],
        "answer": lambda: [answer(r) for r, _ in ranked],
        "record+publish": lambda: list(map(record, range(len(reqs)))),
    }
    thompson = [i for i, (r, _) in enumerate(ranked) if r.policy == "linear_thompson"]
    if thompson:
        stages["rank (linear_thompson only)"] = lambda: [
            d.rank(svc, reqs[i], profiles[i], pers[i], now, rng) for i in thompson]
    for name, fn in stages.items():
        n = len(thompson) if "only" in name else len(bodies)
        times = []
        for _ in range(7):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            await asyncio.sleep(0.03)  # let the decision log flush
        print(f"  {name:30} {1e6 * statistics.median(times) / n:7.1f} us per request (n={n})", flush=True)
    if os.environ.get("PARTS_PROFILE"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(stages[os.environ["PARTS_PROFILE"]])
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


async def main_async(args: argparse.Namespace, stack: Any) -> None:
    from bench.common import bench_config
    from bench.latency import make_bodies
    from bench.traffic import EventFactory, populate_profiles

    f = EventFactory(11)
    now_ms = int(time.time() * 1000)
    rng = random.Random(5)
    customers = [f"c-lat-{i}" for i in range(300)]
    anons = [f"a-lat-{i}" for i in range(100)]
    histories = [f.history(v, rng.randint(10, 60), customer=True, end_ms=now_ms) for v in customers]
    histories += [f.history(v, rng.randint(10, 60), customer=False, end_ms=now_ms) for v in anons]
    await populate_profiles(stack.redis_url, histories)
    bodies, _ = make_bodies(customers, anons, 4000)
    os.environ.update(stack.env(ENGINE_CONFIG=str(bench_config())))
    from serving.app import create_app
    from serving.decide import DecideFastPath

    if args.cached_profiles:  # what the rest of the decision costs: each profile read from Redis once
        import serving.decide as decide_mod

        real, cache = decide_mod.read_profile, {}

        async def cached(svc: Any, req: Any, now: float) -> Any:
            key = req.customer_id or req.anonymous_id
            if key not in cache:
                cache[key] = await real(svc, req, now)
            return cache[key]

        decide_mod.read_profile = cached
    if args.keys:
        await compare_keys(bodies, args)
        return
    fastapi_app = create_app()
    app = DecideFastPath(fastapi_app)
    async with fastapi_app.router.lifespan_context(fastapi_app):
        await drive(app, bodies, 1000, args.concurrency)  # warm-up
        for _ in range(args.rounds):
            prof = None
            if args.profile:
                import cProfile
                prof = cProfile.Profile()
                prof.enable()
            cpu, wall, st = await drive(app, bodies, args.requests, args.concurrency)
            if prof is not None:
                prof.disable()
                prof.dump_stats(args.profile)
            print(f"{args.requests} decides: {1000 * cpu / args.requests:.3f} ms CPU each, "
                  f"{args.requests / wall:,.0f}/s wall, statuses {st}", flush=True)
        if args.parts:
            await time_parts(fastapi_app.state.services, bodies[:2000])
        await asyncio.sleep(0.2)
        metrics = fastapi_app.state.services.metrics
        print("metrics errors:", dict(metrics.errors.values), "decisions:", dict(metrics.decisions.values))


async def compare_keys(bodies: list[bytes], args: argparse.Namespace) -> None:
    import dataclasses
    import statistics
    from contextlib import AsyncExitStack

    from engine.settings import load_settings
    from serving.app import create_app
    from serving.auth import ADMIN, PUBLIC, SERVER, new_key
    from serving.decide import DecideFastPath

    origin = "https://shop.example"
    keys = {role: new_key(role) for role in (PUBLIC, SERVER, ADMIN)}
    base = load_settings()
    keyed = dataclasses.replace(
        base, api_keys=f"public:{keys[PUBLIC]}:{origin},server:{keys[SERVER]},admin:{keys[ADMIN]}")
    browser = [(b"authorization", f"Bearer {keys[PUBLIC]}".encode()), (b"origin", origin.encode())]
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    async with AsyncExitStack() as stack:
        apps = {}
        for name, settings in (("off", base), ("on", keyed)):
            fastapi_app = create_app(settings)
            await stack.enter_async_context(fastapi_app.router.lifespan_context(fastapi_app))
            apps[name] = DecideFastPath(fastapi_app)
        for name in ("off", "on"):  # warm-up
            await drive(apps[name], bodies, 1000, args.concurrency, browser if name == "on" else [])
        for i in range(args.rounds):
            for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                used, wall, st = await drive(apps[name], bodies, args.requests, args.concurrency,
                                             browser if name == "on" else [])
                assert set(st) == {200}, st  # a refused request would make the keyed side look cheap
                cpu[name].append(1e6 * used / args.requests)
                print(f"keys {name:3}: {cpu[name][-1]:.1f} us CPU per decision, {args.requests / wall:,.0f}/s wall",
                      flush=True)
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(f"median of {args.rounds} rounds: keys off {off:.1f} us, keys on {on:.1f} us CPU per decision; "
          f"on/off {on / off:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", default="")
    ap.add_argument("--parts", action="store_true", help="also time the handler's stages one at a time")
    ap.add_argument("--keys", action="store_true", help="API keys on vs off, rounds alternated")
    ap.add_argument("--cached-profiles", action="store_true", help="read each profile once, then from memory")
    args = ap.parse_args()
    import uvloop

    from infra import local
    from infra.processes import Stack

    kafka, redis = local.start_kafka(), local.start_redis()
    try:
        stack = Stack(kafka.bootstrap, redis.url)
        stack.create_topics()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main_async(args, stack))
    finally:
        kafka.close()
        redis.close()


if __name__ == "__main__":
    main()
