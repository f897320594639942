"""Does the learner keep up, and does hot-loading its snapshots cost serving anything?

1. **Learning throughput per placement**, in process, through the worker's own code path: each learning
   example is the JSON the reward join writes to the ``learning`` topic (a context of ~30 features as
   ``engine.features.context_features`` produces them, the shown action's features, the reward),
   decoded with ``orjson`` and handed to ``streams.learner.PlacementLearner.learn`` exactly as the
   ``learn`` agent of ``streams/app.py`` does. One placement per policy (``linucb``,
   ``linear_thompson``, ``ctr_ranker``, ``popularity``, ``random``), 40 candidate actions each. Reported:
   examples/s learning only, and sustained examples/s including the signed snapshot the worker publishes
   every ``snapshot_every_updates`` (200) updates (``PlacementLearner.snapshot``, into an in-memory store).
   Target: >= 5,000 rewards/s per placement.
2. **Snapshots**: ``engine.snapshots.dump_model`` / ``load_model`` time and size of each trained policy.
3. **Serving p99 with and without hot-loading**: the real API (uvicorn subprocess on ``infra.local`` Kafka
   and Redis, a linear-Thompson placement over 40 actions, 2,000 visitor profiles written through the
   worker's ``BatchProcessor``) is hammered by a closed-loop client (keep-alive connections, one request
   in flight each) for ~10 s in each mode, alternately: *steady* (one model loaded, nothing new) and
   *hot-load* (a new signed snapshot of the trained model published every 0.5 s, which the API's 0.5 s
   refresher fetches, verifies and swaps in). Target: hot-loading does not raise decide p99 (we call a
   difference within 20 % + 1 ms the same, since two runs of the same mode differ by about that here).

``python -m bench.learning_speed [--quick]`` writes ``bench/results/learning_speed.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.common import log, summarise_ms, write_result
from bench.http_client import HttpClient
from bench.traffic import CATEGORIES

REPO = Path(__file__).resolve().parent.parent
POLICIES = ("linucb", "linear_thompson", "ctr_ranker", "popularity", "random")
N_ACTIONS = 40
TAGS = ("sale", "new", "season", "premium", "sport", "bestseller", "eco", "gift")
TARGET_RATE = 5_000.0
SIGNING_KEY = "learning-speed-bench-signing-key"
SERVE_PLACEMENT = "ls_linear_thompson"
SERVE_POLICY = "linear_thompson"
RELOAD_EVERY_S = 0.5
#: Hot-loading "does not raise p99" when p99(hot) <= p99(steady) * (1 + P99_TOLERANCE) + P99_SLACK_MS.
P99_TOLERANCE = 0.2
P99_SLACK_MS = 1.0


# --------------------------------------------------------------------------------------------------
# configuration and realistic examples


def config_document() -> dict[str, Any]:
    """An overlay of the shipped config: its features, one learning placement per policy, 40 actions."""
    rng = random.Random(3)
    placements = [f"ls_{p}" for p in POLICIES]
    actions = []
    for i in range(N_ACTIONS):
        cat = CATEGORIES[i % 10]
        k = i // 10
        actions.append({"id": f"act-{cat}-{k}", "placements": placements, "category": cat,
                        "item_id": f"sku-{cat}-{k}", "tags": rng.sample(TAGS, rng.randint(1, 3)),
                        "title": f"{cat} pick {k}"})
    return {
        "include": [str(REPO / "config" / "engine.toml")],
        "replace": ["placement", "action", "collaborative"],
        "profile": {"ttl_days": 7},
        "feature": [{"name": "item", "top_k": 50}],
        "collaborative": {"enabled": False},
        "placement": [{"id": f"ls_{policy}", "max_items": 3, "policy": policy, "snapshot_every_updates": 200,
                       "snapshot_every_seconds": 1.0,
                       "reward": {"window_seconds": 2.0, "default": 0.0, "aggregation": "first"}}
                      for policy in POLICIES],
        "action": actions,
    }


def write_config() -> Path:
    from engine.config import load_config
    from engine.config.compose import dumps

    path = Path(tempfile.mkdtemp(prefix="pulse-ls-config-")) / "engine.toml"
    path.write_text(dumps(config_document()))
    load_config(path)
    return path


def realistic_context(rng: random.Random) -> dict[str, float]:
    """A context with the keys ``engine.features.context_features`` produces (~30 of them)."""
    ctx: dict[str, float] = {"bias": 1.0}
    cats = rng.sample(CATEGORIES, rng.randint(1, 6))
    w = [rng.random() ** 2 + 0.01 for _ in cats]
    for c, x in zip(cats, w, strict=True):
        ctx[f"aff_category:{c}"] = x / sum(w)
    items = [f"sku-{rng.choice(cats)}-{min(int(rng.paretovariate(1.1)) - 1, 149)}" for _ in range(rng.randint(1, 10))]
    wi = [rng.random() + 0.05 for _ in items]
    for it, x in zip(items, wi, strict=True):
        ctx[f"aff_item:{it}"] = ctx.get(f"aff_item:{it}", 0.0) + x / sum(wi)
    views = rng.randint(1, 200)
    ctx.update({
        "log_count:page_view": float(math.log1p(views)),
        "log_count:click": float(math.log1p(rng.randint(0, views // 3))),
        "log_count:add_to_cart": float(math.log1p(rng.randint(0, 5))),
        "hours_since_last_seen": rng.expovariate(1 / 24.0), "session_pages": float(rng.randint(1, 30)),
        "cart_items": float(rng.randint(0, 4)), "log_monetary": rng.choice((0.0, rng.uniform(2.0, 7.0))),
        "win:views:1h": float(rng.randint(0, 20)), "win:views:24h": float(rng.randint(0, 60)),
        "win:views:7d": float(views), "win:clicks:1h": float(rng.randint(0, 5)),
        "win:clicks:24h": float(rng.randint(0, 10)), "win:clicks:7d": float(rng.randint(0, 30)),
        "win:purchases:24h": float(rng.randint(0, 1)), "win:purchases:7d": float(rng.randint(0, 2)),
        "channel:web": 1.0, f"device:{rng.choice(('mobile', 'desktop'))}": 1.0,
    })
    return ctx


def learning_examples(config: Any, placement: str, n: int, seed: int) -> list[bytes]:
    """``n`` learning examples as the reward join serialises them (``streams.rewards.learning_example``)."""
    from engine.decisions import action_features

    rng = random.Random(seed)
    actions = config.actions_for(placement)
    feats = {a.id: action_features(a, config.affinities) for a in actions}
    ctr = {a.id: rng.uniform(0.02, 0.2) for a in actions}
    out = []
    now_ms = int(time.time() * 1000)
    for i in range(n):
        a = rng.choice(actions)
        af = dict(feats[a.id])
        if rng.random() < 0.3:
            af["covisit"] = rng.random()
        reward = float(rng.random() < ctr[a.id])
        out.append(orjson.dumps({
            "decision_id": uuid.UUID(int=rng.getrandbits(128)).hex, "placement": placement,
            "context": realistic_context(rng), "action_id": a.id, "propensity": rng.uniform(0.05, 1.0),
            "policy": config.placements[placement].learning.policy, "model_version": "1", "arm": "learning",
            "reward": reward, "defaulted": reward == 0.0, "timestamp": now_ms + i, "action_features": af,
        }))
    return out


# --------------------------------------------------------------------------------------------------
# 1 + 2: learner throughput and snapshots, in process


class MemoryStore:
    """The part of ``engine.learning_store.LearningStore`` the learner writes snapshots to."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[int, bytes]] = {}

    async def publish_model(self, name: str, version: int, blob: bytes) -> None:
        self.blobs[name] = (version, blob)


def _timed_learning(config: Any, placement: str, raw: Sequence[bytes], warm: int, every: int | None,
                    min_interval: float = 0.0) -> tuple[float, int, float, Any]:
    """Learn ``raw[warm:]`` after an untimed ``raw[:warm]``; with ``every``, publish a snapshot (into memory)
    once ``every`` updates are pending and at least ``min_interval`` seconds passed since the last one.
    Returns (seconds, snapshots, seconds spent in snapshots, learner)."""
    from streams.learner import PlacementLearner

    key = SIGNING_KEY.encode()
    learner = PlacementLearner(config)
    for value in raw[:warm]:
        learner.learn(orjson.loads(value))
    store = MemoryStore()
    snapshots, snapshot_s = 0, 0.0
    loop = asyncio.new_event_loop()
    try:
        last = t0 = time.perf_counter()
        for value in raw[warm:]:
            learner.learn(orjson.loads(value))  # what the worker's learn agent does per example
            if every is not None and learner.state[placement].updates_since_snapshot >= every:
                ts = time.perf_counter()
                if ts - last >= min_interval:
                    # a store stand-in with what snapshot() calls
                    loop.run_until_complete(learner.snapshot(store, key, placement))  # type: ignore[arg-type]
                    last = time.perf_counter()
                    snapshot_s += last - ts
                    snapshots += 1
        return time.perf_counter() - t0, snapshots, snapshot_s, learner
    finally:
        loop.close()


def learner_throughput(config: Any, n: int, repeats: int = 3, seed: int = 1) -> list[dict[str, Any]]:
    """Per policy: rewards/s learning only, with snapshots as configured, and with snapshots at most every
    0.5 s; each measured ``repeats`` times, interleaved, the median reported (the machine is shared)."""
    from engine.snapshots import dump_model, load_model

    key = SIGNING_KEY.encode()
    rows = []
    for policy in POLICIES:
        placement = f"ls_{policy}"
        raw = learning_examples(config, placement, n, seed)
        every = config.placements[placement].learning.snapshot_every_updates
        warm = max(1, n // 10)  # hash caches, first numpy calls, the model's action slots: not timed
        timed = n - warm
        rates: dict[str, list[float]] = {"learn": [], "configured": [], "limited": []}
        snaps: dict[str, int] = {}
        snapshot_ms: list[float] = []
        learner = None
        for _ in range(repeats):
            secs, _, _, learner = _timed_learning(config, placement, raw, warm, None)
            rates["learn"].append(timed / secs)
            secs, snaps["configured"], snap_s, _ = _timed_learning(config, placement, raw, warm, every)
            rates["configured"].append(timed / secs)
            if snaps["configured"]:
                snapshot_ms.append(1000 * snap_s / snaps["configured"])
            secs, snaps["limited"], _, _ = _timed_learning(config, placement, raw, warm, every, RELOAD_EVERY_S)
            rates["limited"].append(timed / secs)
        model = learner.models[placement][policy]  # type: ignore[union-attr]  # learned: it has models
        dumps, loads = [], []
        for _ in range(5):
            ts = time.perf_counter()
            blob = dump_model(model, 1, key, name=placement)
            dumps.append(time.perf_counter() - ts)
            ts = time.perf_counter()
            load_model(blob, key, name=placement)
            loads.append(time.perf_counter() - ts)
        med = {k: _median(v) for k, v in rates.items()}
        rows.append({
            "placement": placement, "policy": policy, "examples_timed": timed, "repeats": repeats,
            "actions": N_ACTIONS,
            "learn_per_s": med["learn"], "learn_us_per_example": 1e6 / med["learn"],
            "sustained_per_s": med["configured"], "snapshot_every_updates": every,
            "snapshots": snaps["configured"], "snapshot_ms_mean": _median(snapshot_ms) if snapshot_ms else None,
            "sustained_rate_limited_per_s": med["limited"], "snapshots_rate_limited": snaps["limited"],
            "snapshot_min_interval_s": RELOAD_EVERY_S, "all_rates_per_s": rates,
            "snapshot_bytes": len(blob), "dump_ms": 1000 * _median(dumps), "load_ms": 1000 * _median(loads),
            "meets_target": med["configured"] >= TARGET_RATE,
            "meets_target_rate_limited": med["limited"] >= TARGET_RATE,
        })
        log(f"{policy:<16} learn {med['learn']:>9,.0f}/s; with a snapshot every {every} updates "
            f"{med['configured']:>9,.0f}/s; at most every {RELOAD_EVERY_S}s {med['limited']:>9,.0f}/s; "
            f"snapshot {len(blob) / 1024:,.0f} KiB")
    return rows


def _median(xs: Sequence[float]) -> float:
    v = sorted(xs)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def trained_policy(config: Any, n: int) -> Any:
    from streams.learner import PlacementLearner

    learner = PlacementLearner(config)
    for value in learning_examples(config, SERVE_PLACEMENT, n, seed=9):
        learner.learn(orjson.loads(value))
    return learner.models[SERVE_PLACEMENT][SERVE_POLICY]


# --------------------------------------------------------------------------------------------------
# 3: serving p99 with and without hot-loading


async def populate(redis_url: str, config_path: Path, visitors: int, seed: int = 5) -> list[str]:
    """Profiles for ``visitors`` anonymous visitors, through the worker's ``BatchProcessor``."""
    import redis.asyncio as aioredis

    from bench.traffic import EventFactory
    from engine.config import load_config
    from engine.profile_store import ProfileStore
    from streams.pipeline import BatchProcessor, Record

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"event rejected: {headers} {value[:200]!r}")

    factory = EventFactory(seed)
    end_ms = int(time.time() * 1000)
    ids = [f"ls-a-{i}" for i in range(visitors)]
    events = sorted((e for v in ids for e in factory.history(v, 12, customer=False, end_ms=end_ms)),
                    key=lambda e: e["timestamp"])
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        proc = BatchProcessor(ProfileStore(client, load_config(config_path)), no_dlq)
        records = [Record("ls-populate", 0, i, e["anonymous_id"].encode(), orjson.dumps(e))
                   for i, e in enumerate(events)]
        for i in range(0, len(records), 500):
            await proc.process(records[i:i + 500])
    finally:
        await client.aclose()
    return ids


async def publish(redis_url: str, version: int, blob: bytes) -> None:
    import redis.asyncio as aioredis

    from engine.learning_store import LearningStore
    from engine.models import model_name

    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        await LearningStore(client).publish_model(model_name(SERVE_PLACEMENT, SERVE_POLICY), version, blob)
    finally:
        await client.aclose()


class Publisher:
    """Publishes pre-signed snapshots of the trained model every ``every`` seconds, in its own thread
    (own event loop and Redis client), the way the worker does (``LearningStore.publish_model``)."""

    def __init__(self, redis_url: str, blobs: Sequence[tuple[int, bytes]], every: float) -> None:
        self.redis_url, self.blobs, self.every = redis_url, list(blobs), every
        self.published: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Publisher:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        from engine.learning_store import LearningStore
        from engine.models import model_name

        client = aioredis.from_url(self.redis_url, decode_responses=True)
        store = LearningStore(client)
        try:
            nxt = time.monotonic()
            for version, blob in self.blobs:
                if self._stop.is_set():
                    break
                await store.publish_model(model_name(SERVE_PLACEMENT, SERVE_POLICY), version, blob)
                self.published.append(version)
                nxt += self.every
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        finally:
            await client.aclose()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


async def closed_loop(base: str, bodies: Sequence[bytes], seconds: float, connections: int) -> dict[str, Any]:
    """``connections`` keep-alive connections, each with one decide in flight, for ``seconds``."""
    lat: list[float] = []
    errors = 0
    degraded = 0
    deadline = time.monotonic() + seconds

    async def loop(k: int) -> None:
        nonlocal errors, degraded
        client = HttpClient.for_url(base)
        i = k
        try:
            while time.monotonic() < deadline:
                t = time.perf_counter()
                status, body = await client.request("POST", "/v1/decide", bodies[i % len(bodies)])
                lat.append(time.perf_counter() - t)
                i += connections
                if status != 200:
                    errors += 1
                elif b'"degraded":true' in body:
                    degraded += 1
        finally:
            await client.close()

    t0 = time.monotonic()
    await asyncio.gather(*(loop(k) for k in range(connections)))
    elapsed = time.monotonic() - t0
    return {**summarise_ms(lat), "rps": round(len(lat) / elapsed, 1), "errors": errors,
            "degraded": degraded}


async def loop_stall_per_load(redis_url: str, config: Any, blobs: Sequence[tuple[int, bytes]]) -> dict[str, Any]:
    """What one hot-load costs the API's event loop, without HTTP noise: serving's own ``ModelRegistry``
    refreshes after each new snapshot while a 1 ms ticker on the same loop records how late it wakes
    (the longest stall a request could sit behind). Compared with the same ticker without loads."""
    import redis.asyncio as aioredis

    from engine.learning_store import LearningStore
    from serving.metrics import ServingMetrics
    from serving.models import ModelRegistry

    client = aioredis.from_url(redis_url, decode_responses=True)
    registry = ModelRegistry(config, LearningStore(client), SIGNING_KEY.encode(), ServingMetrics())
    stalls: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - t - 0.001)

    async def idle_stalls(seconds: float) -> list[float]:
        stalls.clear()
        await asyncio.sleep(seconds)
        return list(stalls)

    task = asyncio.create_task(ticker())
    try:
        baseline = await idle_stalls(2.0)
        refresh_s, load_stall = [], []
        for version, blob in blobs:
            await publish(redis_url, version, blob)
            await asyncio.sleep(0.05)
            stalls.clear()
            t = time.perf_counter()
            swapped = await registry.refresh()
            refresh_s.append(time.perf_counter() - t)
            await asyncio.sleep(0.005)
            load_stall.append(max(stalls, default=0.0))
            assert swapped >= 1, "the registry did not load the new snapshot"
    finally:
        running = False
        await task
        await client.aclose()
    b = sorted(baseline)
    return {"loads": len(blobs), "refresh_ms": summarise_ms(refresh_s),
            "max_loop_stall_per_load_ms": summarise_ms(load_stall),
            "loop_stall_without_loads_ms": {"p99": round(1000 * b[int(0.99 * (len(b) - 1))], 3),
                                            "max": round(1000 * b[-1], 3)}}


def model_version(base: str) -> int:
    import httpx

    body = httpx.get(f"{base}/v1/experiments/{SERVE_PLACEMENT}", timeout=10).json()
    return int(body["model_versions"][SERVE_POLICY])


def serving_p99(config: Any, config_path: Path, seconds: float, rounds: int, connections: int,
                train_examples: int, visitors: int) -> dict[str, Any]:
    from engine.models import model_name
    from engine.snapshots import dump_model
    from infra.local import start_kafka, start_redis
    from infra.processes import Stack, api_process, free_port, wait_http_ready, wait_until

    key = SIGNING_KEY.encode()
    log(f"training a {SERVE_POLICY} model on {train_examples:,} examples for the snapshots")
    policy = trained_policy(config, train_examples)
    per_round = int(seconds / RELOAD_EVERY_S) + 4
    name = model_name(SERVE_PLACEMENT, SERVE_POLICY)
    blobs = [(v, dump_model(policy, v, key, name=name)) for v in range(2, 2 + rounds * per_round + 1)]
    log_dir = Path(tempfile.mkdtemp(prefix="pulse-ls-"))
    log(f"starting Kafka, Redis and the API; logs in {log_dir}")
    kafka = start_kafka()
    redis_server = None
    api = None
    try:
        redis_server = start_redis()
        stack = Stack(kafka.bootstrap, redis_server.url)
        stack.create_topics()
        ids = asyncio.run(populate(redis_server.url, config_path, visitors))
        asyncio.run(publish(redis_server.url, 1, dump_model(policy, 1, key, name=name)))
        port = free_port()
        api = api_process(stack, log_dir, port, ENGINE_CONFIG=str(config_path), MODEL_SIGNING_KEY=SIGNING_KEY).start()
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(base, api, timeout=90)
        wait_until(lambda: model_version(base) == 1, timeout=30, what="the API to load model v1")
        rng = random.Random(11)
        bodies = [orjson.dumps({"anonymous_id": rng.choice(ids), "placement": SERVE_PLACEMENT,
                                "context": {"channel": "web"}}) for _ in range(5000)]
        log("warm-up")
        asyncio.run(closed_loop(base, bodies, min(5.0, seconds), connections))
        runs: list[dict[str, Any]] = []
        queue = list(blobs)
        for r in range(rounds):
            for mode in ("steady", "hot_load"):
                pub = None
                before = model_version(base)
                if mode == "hot_load":
                    pub = Publisher(redis_server.url, queue[:per_round], RELOAD_EVERY_S).start()
                    queue = queue[per_round:]
                res = asyncio.run(closed_loop(base, bodies, seconds, connections))
                if pub is not None:
                    pub.stop()
                    time.sleep(RELOAD_EVERY_S * 2)  # let the last one load before the next steady run
                after = model_version(base)
                res.update(mode=mode, round=r + 1, model_version_before=before, model_version_after=after,
                           snapshots_published=len(pub.published) if pub else 0)
                runs.append(res)
                log(f"round {r + 1} {mode:<8}: p50 {res['p50']:.2f} ms, p99 {res['p99']:.2f} ms, "
                    f"{res['rps']:,.0f} req/s, model v{before} -> v{after}")
        metrics = _api_counters(base)
        log("event-loop stall of a hot-load, in process (serving's ModelRegistry)")
        stall = asyncio.run(loop_stall_per_load(redis_server.url, config,
                                                [(10_000 + v, b) for v, b in blobs[:10]]))
    finally:
        if api is not None:
            api.stop()
        if redis_server is not None:
            redis_server.close()
        kafka.close()
    out: dict[str, Any] = {"runs": runs, "connections": connections, "seconds_per_run": seconds,
                           "reload_every_s": RELOAD_EVERY_S, "snapshot_bytes": len(blobs[0][1]),
                           "snapshot_base64_bytes": len(base64.b64encode(blobs[0][1])),
                           "candidates": N_ACTIONS, "visitors": visitors, "api_counters": metrics,
                           "hot_load_in_process": stall}
    for mode in ("steady", "hot_load"):
        rs = [r for r in runs if r["mode"] == mode]
        out[mode] = {"p50_ms": _mean([r["p50"] for r in rs]), "p99_ms": _mean([r["p99"] for r in rs]),
                     "p99_9_ms": _mean([r["p99_9"] for r in rs]), "rps": _mean([r["rps"] for r in rs]),
                     "degraded": sum(r["degraded"] for r in rs), "errors": sum(r["errors"] for r in rs),
                     "models_loaded": sum(r["model_version_after"] - r["model_version_before"] for r in rs)}
    out["p99_ratio"] = out["hot_load"]["p99_ms"] / out["steady"]["p99_ms"]
    out["meets_target"] = out["hot_load"]["p99_ms"] <= out["steady"]["p99_ms"] * (1 + P99_TOLERANCE) + P99_SLACK_MS
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _api_counters(base: str) -> dict[str, float]:
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(("pulse_errors_total", "pulse_decisions_total")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# --------------------------------------------------------------------------------------------------


def print_tables(rows: Sequence[dict[str, Any]], serving: dict[str, Any] | None) -> None:
    head = (f"{'policy':<16} {'learn/s':>9} {'us/ex':>6} {'+snap/200 upd':>13} {'+snap<=2/s':>10} "
            f"{'snapshot':>10} {'dump ms':>8} {'load ms':>8} {'>= 5,000/s':>11}")
    print(f"\nLearner throughput per placement ({N_ACTIONS} actions, contexts of ~30 features; rewards/s learning "
          f"only, with a snapshot every 200 updates as configured, and with those snapshots at most every "
          f"{RELOAD_EVERY_S} s)")
    print(head)
    print("-" * len(head))
    for r in rows:
        verdict = "yes" if r["meets_target"] else ("<=2/s only" if r["meets_target_rate_limited"] else "NO")
        print(f"{r['policy']:<16} {r['learn_per_s']:>9,.0f} {r['learn_us_per_example']:>6.0f} "
              f"{r['sustained_per_s']:>13,.0f} {r['sustained_rate_limited_per_s']:>10,.0f} "
              f"{r['snapshot_bytes'] / 1024:>6,.0f} KiB {r['dump_ms']:>8.1f} {r['load_ms']:>8.1f} {verdict:>11}")
    if serving:
        print(f"\nDecide latency (client side, {serving['connections']} connections closed loop, "
              f"{serving['seconds_per_run']:.0f} s per run, {serving['candidates']} candidates, snapshot "
              f"{serving['snapshot_bytes'] / 1024:,.0f} KiB every {serving['reload_every_s']} s in hot_load)")
        head = f"{'run':<14} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>9} {'req/s':>7} {'models loaded':>13}"
        print(head)
        print("-" * len(head))
        for r in serving["runs"]:
            print(f"{r['mode'] + ' #' + str(r['round']):<14} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['p99_9']:>9.2f} "
                  f"{r['rps']:>7,.0f} {r['model_version_after'] - r['model_version_before']:>13}")
        s, h = serving["steady"], serving["hot_load"]
        print(f"{'steady (mean)':<14} {s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['p99_9_ms']:>9.2f} {s['rps']:>7,.0f}")
        print(f"{'hot_load (mean)':<14} {h['p50_ms']:>7.2f} {h['p99_ms']:>7.2f} {h['p99_9_ms']:>9.2f} {h['rps']:>7,.0f}"
              f" {h['models_loaded']:>13}")
        st = serving["hot_load_in_process"]
        print(f"in process: one hot-load (fetch + verify + decode of {serving['snapshot_bytes'] / 1024:,.0f} KiB) "
              f"takes {st['refresh_ms']['p50']:.1f} ms (p50) and stalls the event loop for at most "
              f"{st['max_loop_stall_per_load_ms']['p50']:.1f} ms (p50, max "
              f"{st['max_loop_stall_per_load_ms']['max']:.1f});"
              f" loop stalls without loads: p99 {st['loop_stall_without_loads_ms']['p99']:.1f} ms, max "
              f"{st['loop_stall_without_loads_ms']['max']:.1f} ms")
        print(f"p99 hot_load / steady = {serving['p99_ratio']:.2f} -> "
              f"{'no rise' if serving['meets_target'] else 'RAISED'} (tolerance {P99_TOLERANCE:.0%} + "
              f"{P99_SLACK_MS:.0f} ms)")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Learner throughput, snapshot cost, decide p99 under hot-loading.")
    ap.add_argument("--quick", action="store_true", help="a smoke run that finishes in under 2 minutes")
    ap.add_argument("--examples", type=int, default=None,
                    help="learning examples per policy and measurement (default 20,000; quick 3,000)")
    ap.add_argument("--seconds", type=float, default=None, help="decide hammer per run (default 10)")
    ap.add_argument("--rounds", type=int, default=None, help="steady/hot_load pairs, alternated (default 3)")
    ap.add_argument("--connections", type=int, default=2,
                    help="closed-loop connections (2: the API is busy but not queueing, so a stall shows in p99)")
    ap.add_argument("--skip-serving", action="store_true")
    args = ap.parse_args(argv)
    n = args.examples or (3_000 if args.quick else 20_000)
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)

    from engine.config import load_config

    config_path = write_config()
    config = load_config(config_path)
    log(f"learner throughput: {n:,} examples per policy")
    rows = learner_throughput(config, n, repeats=2 if args.quick else 3)
    serving = None
    if not args.skip_serving:
        serving = serving_p99(config, config_path, seconds, rounds, args.connections,
                              train_examples=n, visitors=500 if args.quick else 2000)
    print_tables(rows, serving)
    payload = {"learner": rows, "target_rewards_per_s": TARGET_RATE, "serving": serving,
               "learner_meets_target": {r["policy"]: r["meets_target"] for r in rows}}
    path = write_result("learning_speed", payload, args.quick)
    print(f"\nwrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
