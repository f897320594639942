"""Scaling figures beyond one Redis (``make bench-cluster``): events/s and CPU per event per component with a
single Redis server and with a 3-master Redis Cluster, each with 1 and 2 ingest workers, side by side in one run.

Usage::

    python -m bench.cluster_scaling            # 60,000 events per run, ~4 minutes
    python -m bench.cluster_scaling --quick    # 8,000 events per run

Every run starts fresh workers on a fresh consumer group over the same pre-produced events (a shop's mix,
``bench.traffic.EventFactory``) and a learner process beside them, as ``bench.throughput`` does; CPU is read
from ``/proc`` for each worker, the learner, each Redis server and the broker. The cluster's masters run
without replicas here: the figure is what sharding costs and gives on these 2 cores, not replication's
price (replicas copy every write: roughly their masters' CPU again). On 2 shared cores more Redis
processes cannot add CPU; what the cluster buys is room on more machines, which these figures size.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.common import Infra, exit_cleanly_on_signals, log, write_result
from bench.throughput import RedisTarget, run_workers
from bench.traffic import EventFactory, produce_records

WORKER_COUNTS = (1, 2)


def _row(name: str, workers: int, r: dict[str, Any]) -> dict[str, Any]:
    return {"redis": name, "workers": workers, "events_per_s": r["rate"], "completed": r["completed"],
            "worker_cpu_us_per_event": r.get("worker_cpu_us_per_event"),
            "redis_cpu_us_per_event": r.get("redis_cpu_us_per_event"),
            "kafka_cpu_us_per_event": r.get("kafka_cpu_us_per_event"),
            "learner_cpu_us_per_event": r.get("learner_cpu_us_per_event"),
            "dead_letters": r.get("dead_letters", 0)}


def run(infra: Infra, n: int, limit: float) -> dict[str, Any]:
    import redis as sync_redis

    from infra.cluster import start_redis_cluster

    stack = infra.stack(partitions=8)
    log(f"cluster_scaling: producing {n} events to {stack.events_topic} (8 partitions)")
    records = list(EventFactory(2024).stream(n, max(1000, n // 10)))
    asyncio.run(produce_records(stack.bootstrap, stack.events_topic, records))
    del records
    rows: list[dict[str, Any]] = []
    single = RedisTarget(infra.redis_url(), {"redis": infra.redis_pid()})
    cluster = start_redis_cluster(masters=3, replicas=0)
    try:
        pids = {f"redis{i}": cluster.node_pid(port) for i, port in enumerate(cluster.ports)}
        masters = RedisTarget(cluster.seeds_url, pids, cluster=True, nodes=cluster.urls)
        for workers in WORKER_COUNTS:  # alternated, so neither topology always runs on a warmer machine
            for name, target in (("single Redis", single), ("cluster, 3 masters", masters)):
                if not target.cluster:  # a fresh database per run on the single server
                    target = RedisTarget(infra.redis_url(), target.pids)
                log(f"cluster_scaling: {name}, {workers} worker(s)")
                r = run_workers(infra, stack, workers, n, limit, redis=target)
                rows.append(_row(name, workers, r))
                log(f"cluster_scaling: {name}, {workers} worker(s): {r['rate']} events/s, worker "
                    f"{r.get('worker_cpu_us_per_event')} us, Redis {r.get('redis_cpu_us_per_event')} us, Kafka "
                    f"{r.get('kafka_cpu_us_per_event')} us CPU per event")
                if target.cluster:  # the next run starts from empty masters, as the single server's fresh database
                    for url in target.nodes:
                        c = sync_redis.Redis.from_url(url)
                        try:
                            c.flushall()
                        finally:
                            c.close()
    finally:
        cluster.close()
    return {"events": n, "rows": rows, "cluster": {"masters": 3, "replicas": 0}}


def table(res: dict[str, Any]) -> str:
    lines = [f"{'redis':20} {'workers':>7} {'events/s':>10} {'worker us/ev':>13} {'Redis us/ev':>12} "
             f"{'Kafka us/ev':>12} {'learner us/ev':>14}"]
    for r in res["rows"]:
        lines.append(f"{r['redis']:20} {r['workers']:>7} {r['events_per_s']:>10,.0f} "
                     f"{r['worker_cpu_us_per_event']!s:>13} {r['redis_cpu_us_per_event']!s:>12} "
                     f"{r['kafka_cpu_us_per_event']!s:>12} {r['learner_cpu_us_per_event']!s:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--events", type=int, default=None)
    args = ap.parse_args(argv)
    exit_cleanly_on_signals()
    n = args.events or (8_000 if args.quick else 60_000)
    with Infra.started(args.quick) as infra:
        res = run(infra, n, limit=15.0 if args.quick else 60.0)
    print(table(res))
    print(write_result("cluster_scaling", res, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
