"""The stream worker's own Prometheus metrics, served on its own port (``WORKER_METRICS_PORT``; 0: none).

Each worker exports what it did (events received, applied, dead-lettered; where its batch loop's time went;
Kafka faults it waited out) and its consumer lag per partition (the partition's high watermark minus the
worker's fetch position, updated every second): a sum over the workers is the pipeline's, and the API does
not re-export any of it. The same counts still go to Redis for the benchmarks (``ProfileStore``).

>>> m = WorkerMetrics()
>>> m.count({"events_received": 12_345_678, "events_applied": 0})
>>> m.add_seconds({"loop_poll": 0.25})
>>> m.set_lag({("events", 0): 7})
>>> sorted(line for line in m.render().splitlines() if not line.startswith("#"))
... # doctest: +NORMALIZE_WHITESPACE
['pulse_worker_consumer_lag{partition="0",topic="events"} 7.0',
 'pulse_worker_events_received_total 1.2345678e+07', 'pulse_worker_loop_poll_seconds_total 0.25']
"""

from __future__ import annotations

import logging
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

log = logging.getLogger(__name__)
prometheus_client.disable_created_metrics()

#: what each worker counter counts (``pulse_worker_<name>_total``); another name gets a generic help
HELP = {
    "events_received": "Event records read from the events topic",
    "events_applied": "Events applied to profiles",
    "dead_letters": "Events dead-lettered while prepared (invalid)",
    "dead_letters_isolated": "Events dead-lettered while written (their profile's script or a hook failed)",
    "segment_changes": "Segment entries and exits published",
    "infra_pauses": "Times the worker paused for Redis or Kafka",
    "kafka_resends": "Sends sent again after a Kafka error",
    "kafka_dropped": "Sends given up",
    "kafka_commit_failures": "Offset commits that failed and were retried",
    "kafka_pauses": "Times the loop waited for Kafka",
    "rewards_resent": "Learning examples sent again",
}


class WorkerMetrics:
    """One registry per worker process; counters made on first use (the stream names them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters: dict[str, prometheus_client.Counter] = {}
        self.lag = prometheus_client.Gauge("pulse_worker_consumer_lag", "Records of the partition not yet fetched "
                                           "by this worker (high watermark - position)", ["topic", "partition"],
                                           registry=self.registry)
        self._lag_labels: set[tuple[str, int]] = set()

    def _counter(self, name: str, help_text: str) -> prometheus_client.Counter:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = prometheus_client.Counter(f"pulse_worker_{name}", help_text,
                                                                 registry=self.registry)
        return c

    def count(self, counters: dict[str, int]) -> None:
        for name, n in counters.items():
            if n:
                self._counter(name, HELP.get(name, f"Worker counter {name}")).inc(n)

    def add_seconds(self, seconds: dict[str, float]) -> None:
        for name, s in seconds.items():
            if s > 0:
                self._counter(f"{name}_seconds", f"Seconds of the worker's {name.replace('_', ' ')}").inc(s)

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """The lag of each partition assigned now; partitions no longer assigned are dropped."""
        for topic, partition in self._lag_labels - set(lags):
            self.lag.remove(topic, str(partition))
        for (topic, partition), n in lags.items():
            self.lag.labels(topic, str(partition)).set(n)
        self._lag_labels = set(lags)

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` on ``port`` from a daemon thread; a port that cannot be bound is logged, not
        fatal (the worker's job is the stream)."""
        try:
            server, _ = prometheus_client.start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.error("worker metrics: cannot serve on %s:%s (%s); WORKER_METRICS_PORT", addr, port, exc)
            return None
        log.info("worker metrics on http://%s:%s/metrics", addr, port)
        return server
