"""The API process's Prometheus metrics, through ``prometheus_client`` (docs/operations.md).

One registry per process: each :class:`ServingMetrics` has its own (never the library's global one), so that
what one API process exports is its own. Under several uvicorn workers (``--workers N``) set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory the processes share: the values then live in its files and
:meth:`ServingMetrics.render` adds up every process's (``prometheus_client.multiprocess``), so that one scrape
of any worker sees the whole replica. The stream workers export their own metrics on their own port
(``streams/metrics.py``); the API does not re-export them (a sum over API replicas would multiply them).

Values are printed exactly (``12345678`` as ``1.2345678e+07``, every digit kept), as the exposition format
wants. The classes keep the call sites' interface: ``Counter.inc(label_value, n)``,
``Histogram.observe(v)``, ``Gauge.value = v``.

>>> m = ServingMetrics()
>>> m.events_in.inc(n=12_345_678)
>>> [line for line in m.render().splitlines() if line.startswith("pulse_collector_events_received_total")]
['pulse_collector_events_received_total 1.2345678e+07']
"""

from __future__ import annotations

import os
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

# the _created sample of every counter and histogram doubles the lines and no dashboard here reads it
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: the directory of multiprocess mode (several uvicorn workers): the library's own variable
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get("prometheus_multiproc_dir") or None


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S, *,
                 registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()  # never the library's global one
        self.name, self.buckets = name, buckets
        self._h = prometheus_client.Histogram(name, help_text, buckets=buckets, registry=registry)
        self.observe = self._h.observe

    # this process's observations, as the dashboard's summary reads them (serving/summary.py)
    @property
    def counts(self) -> list[int]:
        """Observations per bucket (not cumulative), the last one past the largest bound."""
        return [int(b.get()) for b in self._h._buckets]

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def sum(self) -> float:
        return float(self._h._sum.get())


class Counter:
    """A counter with one optional label; ``name`` ends in ``_total`` as exported."""

    def __init__(self, name: str, help_text: str, label: str | None = None, *,
                 registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.name, self.label = name, label
        self._c = prometheus_client.Counter(name.removesuffix("_total"), help_text,
                                            [label] if label else [], registry=registry)
        self._children: dict[str, Any] = {}
        if label is None:
            self._plain = self._c

    def inc(self, label_value: str = "", n: float = 1.0) -> None:
        if self.label is None:
            self._plain.inc(n)
            return
        child = self._children.get(label_value)
        if child is None:  # the children are cached: labels() builds a key and takes a lock
            child = self._children[label_value] = self._c.labels(label_value)
        child.inc(n)

    @property
    def values(self) -> dict[str, float]:
        """This process's value per label value (``""`` without a label): the tests' and benchmarks' view."""
        if self.label is None:
            return {"": float(self._plain._value.get())}
        return {lv: float(child._value.get()) for lv, child in self._children.items()}


class Gauge:
    """A gauge set by assignment (``gauge.value = 3``); per process under multiprocess mode (a ``pid`` label)."""

    def __init__(self, name: str, help_text: str, *, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.name = name
        self._g = prometheus_client.Gauge(name, help_text, registry=registry, multiprocess_mode="liveall")
        self._value = 0.0

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, v: float) -> None:
        self._value = v
        self._g.set(v)


class ServingMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.decide_latency = Histogram("pulse_decide_latency_seconds", "Time to answer /v1/decide", registry=r)
        self.decisions = Counter("pulse_decisions_total", "Decisions served", "outcome", registry=r)
        self.events_in = Counter("pulse_collector_events_received_total", "Events posted to the collector", registry=r)
        self.events_out = Counter("pulse_collector_events_published_total", "Events delivered to Kafka", registry=r)
        self.events_rejected = Counter("pulse_collector_events_rejected_total",
                                       "Invalid events rejected (or dead-lettered, on the Segment routes)", registry=r)
        self.errors = Counter("pulse_errors_total", "Errors by where they happened", "where", registry=r)
        self.read_pipelines = Counter("pulse_profile_read_pipelines_total",
                                      "Pipelines that carried the decisions' profile reads", registry=r)
        self.read_commands = Counter("pulse_profile_read_commands_total",
                                     "Profile read commands (per pipeline: the batching achieved)", registry=r)
        self.decide_queue = Histogram("pulse_decide_queue_seconds",
                                      "Wait of /v1/decide requests before the API read them (from the proxy's "
                                      "X-Request-Start stamp)", registry=r)
        self.admission_limit = Gauge("pulse_decide_admission_limit",
                                     "Decisions in progress this process runs in full; past it they are shed",
                                     registry=r)
        self.decision_log_unacked = Gauge(
            "pulse_decision_log_unacknowledged", "Decision records answered that Kafka has not acknowledged "
            "yet (buffered or in the producer): what a crash of this process would lose; at most "
            "DECISION_LOG_MAX_BUFFERED", registry=r)
        self.admission_cuts = Counter("pulse_decide_admission_cuts_total",
                                      "Times the admission limit was lowered because decisions ended late", registry=r)
        self.model_load = Histogram("pulse_model_load_seconds",
                                    "Time to verify, decode and prepare a model snapshot; off the event loop, but "
                                    "rebuilding the model holds the interpreter lock, so decisions wait about "
                                    "that long", registry=r)
        self.model_rejected = Counter("pulse_model_rejected_total",
                                      "Model snapshots refused (the last good model kept), by reason: signature, "
                                      "format, name, replay", "reason", registry=r)

    def render(self) -> str:
        """This process's metrics, or under multiprocess mode every process's of the directory, added up."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry).decode()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=directory)
        return generate_latest(merged).decode()
