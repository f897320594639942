"""``make demo``: the whole pipeline on local real services, personalising before your eyes.

Starts Kafka and Redis (infra/), a worker and the API, publishes a realistic stream of visits, shows a
visitor's decision before and after a few clicks, prints throughput and latency figures and the URL of the
demo shop (``/demo/``, a page using the browser snippet, served by the API), and stops everything on Ctrl-C
(``--exit`` stops by itself after the figures, as the tests use it).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from engine.kafka_client import kafka_client_kwargs
from infra import local
from infra.demo_nba import Walkthrough
from infra.processes import Stack, api_process, free_port, wait_http_ready, wait_until, worker_process
from serving.auth import ADMIN, PUBLIC, ROLES, SERVER, new_key

CATEGORIES = {"shoes": ["sku-shoe-1", "sku-shoe-2"], "jackets": ["sku-jacket-1"], "books": ["sku-book-1"],
              "electronics": ["sku-phones-1"], "hats": ["sku-hat-1"]}
# The crowd leans towards books and electronics, so an anonymous visitor sees those first.
CROWD_TASTE = {"books": 0.35, "electronics": 0.3, "shoes": 0.15, "jackets": 0.15, "hats": 0.05}


def visit_events(visitor: str, rng: random.Random, now_ms: int, pages: int) -> list[dict[str, Any]]:
    session = uuid.uuid4().hex[:8]
    out = []
    for i in range(pages):
        cat = rng.choices(list(CROWD_TASTE), weights=list(CROWD_TASTE.values()))[0]
        item = rng.choice(CATEGORIES[cat])
        kind = rng.choices(["page_view", "click", "add_to_cart"], weights=[0.8, 0.15, 0.05])[0]
        props: dict[str, Any] = {"category": cat, "item_id": item}
        if kind == "page_view":
            props["url"] = f"https://shop.example/{cat}/{item}"
        out.append({"event_id": uuid.uuid4().hex, "type": kind, "timestamp": now_ms + i * 1000,
                    "anonymous_id": visitor, "context": {"channel": "web", "session_id": session},
                    "properties": props})
    return out


async def publish(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **kafka_client_kwargs())
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, orjson.dumps(e), key=e["anonymous_id"].encode()) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def worker_applied(worker_metrics: str) -> int:
    """The worker's applied-events counter, from its own metrics port (the API does not re-export it)."""
    try:
        text = httpx.get(f"{worker_metrics}/metrics").text
    except httpx.HTTPError:  # not serving yet: nothing applied
        return 0
    for line in text.splitlines():
        if line.startswith("pulse_worker_events_applied_total"):
            return int(float(line.split()[1]))
    return 0


def show(title: str, answer: dict[str, Any]) -> None:
    ranked = ", ".join(f"{a['action_id']} ({a['score']:.2f})" for a in answer["actions"])
    flags = f"personalised={answer['personalised']} degraded={answer['degraded']}"
    print(f"  {title:<28} {ranked}   [{flags}]")


def run(visitors: int, exit_after: bool) -> int:
    t0 = time.perf_counter()
    print("Starting Kafka and Redis (local processes from infra/)...")
    kafka = local.start_kafka()
    redis = local.start_redis()
    infra_s = time.perf_counter() - t0
    log_dir = Path(tempfile.mkdtemp(prefix="pulse-demo-"))
    stack = Stack(kafka.bootstrap, redis.url)
    stack.create_topics()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # keys new for this run, one per role; the public one for the page, as a site would embed it
    keys = {role: new_key(role) for role in ROLES}
    shop = "http://localhost:8080"
    # the public key serves pages on the shop's origin and the demo shop the API serves itself (/demo/)
    api_keys = f"{PUBLIC}:{keys[PUBLIC]}:{shop}|{base},{SERVER}:{keys[SERVER]},{ADMIN}:{keys[ADMIN]}"
    page, server, admin = ({"Authorization": f"Bearer {keys[role]}"} for role in (PUBLIC, SERVER, ADMIN))
    worker = worker_process(stack, log_dir).start()
    worker_metrics = f"http://127.0.0.1:{worker.env['WORKER_METRICS_PORT']}"
    api = api_process(stack, log_dir, port, API_KEYS=api_keys, DEMO_PUBLIC_KEY=keys[PUBLIC]).start()
    try:
        wait_http_ready(base, api, timeout=60)
        print(f"  Kafka {kafka.bootstrap}, Redis {redis.url}, API {base}  (infra up in {infra_s:.1f}s; "
              f"logs in {log_dir})")
        print(f"  API keys (new for this run; API_KEYS={api_keys[:6]}...):")
        for role in ROLES:
            extra = f"   (pages on {shop})" if role == PUBLIC else ""
            print(f"    {role:<7} {keys[role]}{extra}")

        rng = random.Random(7)
        now_ms = int(time.time() * 1000) - 3_600_000
        crowd = [e for v in range(visitors) for e in visit_events(f"visitor-{v}", rng, now_ms, rng.randint(3, 12))]
        print(f"\nPublishing {len(crowd)} events from {visitors} visitors...")
        baseline = worker_applied(worker_metrics)
        t_pub = time.perf_counter()
        asyncio.run(publish(kafka.bootstrap, stack.events_topic, crowd))
        wait_until(lambda: worker_applied(worker_metrics) - baseline >= len(crowd), timeout=120, interval=0.05,
                   what="the worker to apply the crowd's events")
        events_s = len(crowd) / (time.perf_counter() - t_pub)
        print(f"  worker applied them all: {events_s:,.0f} events/s end to end (publish -> Redis)")

        you = f"you-{uuid.uuid4().hex[:6]}"
        body = {"anonymous_id": you, "placement": "home_hero", "n": 3}
        print(f"\nA new visitor '{you}' arrives on the home page:")
        show("before any click:", httpx.post(f"{base}/v1/decide", json=body, headers=page).json())
        clicks = [{"event_id": uuid.uuid4().hex, "type": t, "timestamp": int(time.time() * 1000),
                   "anonymous_id": you, "context": {"channel": "web"},
                   "properties": {"category": "hats", "item_id": "sku-hat-1"}}
                  for t in ("page_view", "click")]
        print("  ...they look at a sun hat and click it (POST /v1/events)")
        t_click = time.perf_counter()
        assert httpx.post(f"{base}/v1/events", json=clicks, headers=page).status_code == 202
        after = wait_until(
            lambda: (lambda a: a if a["personalised"] else None)(httpx.post(f"{base}/v1/decide", json=body,
                                                                        headers=page).json()),
            timeout=30, interval=0.005, what="the decision to reflect the clicks")
        fresh_ms = (time.perf_counter() - t_click) * 1000
        show("a moment later:", after)
        print(f"  the decision changed {fresh_ms:.0f} ms after the clicks were posted")
        Walkthrough(base, server, admin).run()

        lat = []
        with httpx.Client(headers=page) as client:
            for i in range(500):
                req = {"anonymous_id": f"visitor-{i % visitors}", "placement": "home_hero"}
                s = time.perf_counter()
                client.post(f"{base}/v1/decide", json=req)
                lat.append((time.perf_counter() - s) * 1000)
        q = statistics.quantiles(lat, n=100)
        print(f"\nDecision latency over 500 sequential calls (client-side, incl. HTTP): "
              f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms")
        profile = httpx.get(f"{base}/v1/profiles/{you}", headers=admin).json()
        print(f"Profile of '{you}': counts={profile['counts']} "
              f"category affinity={ {k: round(v, 2) for k, v in profile['affinities']['category'].items()} }")
        print(f"\nThe demo shop (a page using the snippet {base}/sdk/pulse.js): open {base}/demo/"
              f"\n  click products of one category and watch the hero and the recommendations change, and why")
        if not exit_after:
            print(f"\nRunning. Try: curl -s -XPOST {base}/v1/decide -H 'Authorization: Bearer {keys[PUBLIC]}' "
                  f"-d '{orjson.dumps(body).decode()}'"
                  f"\nPress Ctrl-C to stop.")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("\nStopping API, worker, Kafka and Redis...")
        api.stop()
        worker.stop()
        redis.close()
        kafka.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=2000)
    parser.add_argument("--exit", action="store_true", help="stop by itself after printing the figures")
    args = parser.parse_args()
    raise SystemExit(run(args.visitors, args.exit))


if __name__ == "__main__":
    main()
