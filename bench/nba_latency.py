"""Next-best action's tail at 1,000 decisions/s: 50 candidates with eligibility, caps and arbitration, idle and
while the stream ingests 2,000 events/s, side by side with the same placement's actions ranked by the policy
alone.

The real API and worker processes on real Kafka and Redis, the configuration of ``bench.nba_cost``
(``nba50``: channels, audiences, values, levers, ``min_expected_value``, the shipped ``[contact_policy]``;
``plain50``: the same 50 actions' features, the policy's order only), customers whose profiles hold two weeks
of history and exposure records (impressions of 20 actions this week on web, email and push, a dismissal:
``bench.contact_policy_cost.exposures``), so every cap and suppression rule reads real records. Each
request offers all 50 actions. The open-loop generator of ``bench.latency`` (64 connections, Poisson
arrivals); arms alternated in rounds, the background producer of ``bench.freshness`` (a shop's mix, fresh
timestamps) running through the ``ingest`` rounds:

``nba50`` / ``plain50`` x ``idle`` / ``ingest``: p50 and p99 per round; medians of the rounds' p99s; ratios.

``python -m bench.nba_latency [--seconds 10] [--rounds 3] [--rate 1000] [--ingest 2000]`` writes
``bench/results/nba_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import Infra, log, start_api, start_worker, write_result

P99_TARGET_MS = 5.0


def bodies_for(placement: str, customers: list[str], n: int, seed: int = 3) -> list[bytes]:
    rng = random.Random(seed)
    actions = [f"{placement}-{i}" for i in range(50)]
    zones = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC")
    return [orjson.dumps({"customer_id": rng.choice(customers), "placement": placement,
                          "candidates": rng.sample(actions, 50), "context": {"timezone": rng.choice(zones)}})
            for _ in range(n)]


def run(infra: Infra, seconds: float, rounds: int, rate: float, ingest: float) -> dict[str, Any]:
    from bench.contact_policy_cost import exposures
    from bench.freshness import start_background, stop_background
    from bench.latency import run_open_loop
    from bench.nba_cost import nba_config
    from bench.traffic import EventFactory, populate_profiles

    stack = infra.stack()
    config = nba_config(Path(tempfile.mkdtemp(prefix="pulse-nba-latency-")))
    f, rng = EventFactory(11), random.Random(5)
    now_ms = int(time.time() * 1000)
    customers = [f"c-nbal-{i}" for i in range(3000)]
    actions = [f"nba50-{i}" for i in range(50)]
    histories = [f.history(v, rng.randint(10, 40), customer=True, end_ms=now_ms, span_s=14 * 86400)
                 + exposures(v, rng, now_ms, actions) for v in customers]
    log(f"nba_latency: writing {len(customers)} profiles with exposure records")
    asyncio.run(populate_profiles(stack.redis_url, histories))
    worker = start_worker(infra, stack, ENGINE_CONFIG=str(config))
    api, url = start_api(infra, stack, ENGINE_CONFIG=str(config))
    bodies = {p: bodies_for(p, customers, 4000) for p in ("nba50", "plain50")}
    results: dict[str, list[dict[str, Any]]] = {f"{p}_{m}": [] for m in ("idle", "ingest") for p in bodies}
    try:
        for p in bodies:  # warm-up: the policies' models, the connections
            run_open_loop(url, bodies[p], rate, 3.0, 1.0, grace=2.0)
        for r in range(rounds):
            for mode in (("idle", "ingest") if r % 2 == 0 else ("ingest", "idle")):
                background = start_background(stack.bootstrap, stack.events_topic, ingest, 3600) \
                    if mode == "ingest" else None
                try:
                    if background is not None:
                        time.sleep(2.0)  # the producer connected and the worker busy
                    for p in (bodies if r % 2 == 0 else list(bodies)[::-1]):
                        out = run_open_loop(url, bodies[p], rate, seconds, 1.0, grace=3.0)
                        lat = out["latency_ms"]
                        results[f"{p}_{mode}"].append(out)
                        log(f"nba_latency: {p:7} {mode:6} @ {rate:.0f}/s -> {out['achieved_rate']}/s p50 "
                            f"{lat.get('p50')} p99 {lat.get('p99')} ms errors {out['errors']} "
                            f"degraded {out['degraded']}")
                finally:
                    if background is not None:
                        sent = stop_background(background)
                        log(f"nba_latency: background producer {sent}")
                        results.setdefault("_producer", []).append(sent)
    finally:
        api.stop()
        worker.stop()
    producer = results.pop("_producer", [])
    summary: dict[str, Any] = {}
    for arm, runs in results.items():
        p99s = sorted(r["latency_ms"].get("p99", float("nan")) for r in runs)
        summary[arm] = {"p99_ms": p99s, "p99_ms_median": statistics.median(p99s),
                        "p50_ms_median": statistics.median(r["latency_ms"].get("p50", float("nan")) for r in runs),
                        "achieved_rate_min": min(r["achieved_rate"] for r in runs),
                        "errors": sum(r["errors"] + r["timeouts"] for r in runs),
                        "degraded": sum(r["degraded"] for r in runs)}
    for mode in ("idle", "ingest"):
        a, b = summary[f"nba50_{mode}"], summary[f"plain50_{mode}"]
        summary[f"p99_ratio_nba_vs_plain_{mode}"] = round(a["p99_ms_median"] / b["p99_ms_median"], 3)
        summary[f"nba50_{mode}"]["holds_5ms"] = a["p99_ms_median"] <= P99_TARGET_MS and a["errors"] == 0
    return {"rate": rate, "ingest_events_per_s": ingest, "seconds": seconds, "rounds": rounds,
            "candidates": 50, "customers": len(customers), "producer": producer, **summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--ingest", type=float, default=2000.0)
    args = ap.parse_args()
    with Infra.started(quick=False) as infra:
        print(write_result("nba_latency", run(infra, args.seconds, args.rounds, args.rate, args.ingest), False))


if __name__ == "__main__":
    main()
