"""A few Prometheus metrics, rendered in the text exposition format without extra dependencies."""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for le, c in zip(self.buckets, self.counts, strict=False):
            cumulative += c
            lines.append(f'{self.name}_bucket{{le="{le}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines += [f"{self.name}_sum {self.sum}", f"{self.name}_count {self.count}"]
        return lines


class Counter:
    """A counter with one optional label."""

    def __init__(self, name: str, help_text: str, label: str | None = None) -> None:
        self.name, self.help, self.label = name, help_text, label
        self.values: dict[str, float] = defaultdict(float)

    def inc(self, label_value: str = "", n: float = 1.0) -> None:
        self.values[label_value] += n

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self.values:
            lines.append(f"{self.name} 0" if self.label is None else f"{self.name}{{{self.label}=\"\"}} 0")
        for lv, v in sorted(self.values.items()):
            lab = f'{{{self.label}="{lv}"}}' if self.label else ""
            lines.append(f"{self.name}{lab} {v:g}")
        return lines


class Gauge:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.value = 0.0

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.value:g}"]


class ServingMetrics:
    def __init__(self) -> None:
        self.decide_latency = Histogram("pulse_decide_latency_seconds", "Time to answer /v1/decide")
        self.decisions = Counter("pulse_decisions_total", "Decisions served", "outcome")
        self.events_in = Counter("pulse_collector_events_received_total", "Events posted to the collector")
        self.events_out = Counter("pulse_collector_events_published_total", "Events delivered to Kafka")
        self.events_rejected = Counter("pulse_collector_events_rejected_total", "Invalid events rejected")
        self.errors = Counter("pulse_errors_total", "Errors by where they happened", "where")
        self.read_pipelines = Counter("pulse_profile_read_pipelines_total",
                                      "Pipelines that carried the decisions' profile reads")
        self.read_commands = Counter("pulse_profile_read_commands_total",
                                     "Profile read commands (per pipeline: the batching achieved)")
        self.decide_queue = Histogram("pulse_decide_queue_seconds",
                                      "Wait of /v1/decide requests before the API read them (from the proxy's "
                                      "X-Request-Start stamp)")
        self.admission_limit = Gauge("pulse_decide_admission_limit",
                                     "Decisions in progress this process runs in full; past it they are shed")
        self.decision_log_unacked = Gauge(
            "pulse_decision_log_unacknowledged", "Decision records answered that Kafka has not acknowledged yet "
            "(buffered or in the producer): what a crash of this process would lose; at most "
            "DECISION_LOG_MAX_BUFFERED")
        self.admission_cuts = Counter("pulse_decide_admission_cuts_total",
                                      "Times the admission limit was lowered because decisions ended late")
        self.model_load = Histogram("pulse_model_load_seconds",
                                    "Time to verify, decode and prepare a model snapshot; off the event loop, but "
                                    "rebuilding the model holds the interpreter lock, so decisions wait about that "
                                    "long")
        self.model_rejected = Counter("pulse_model_rejected_total",
                                      "Model snapshots refused (the last good model kept), by reason: signature, "
                                      "format, name, replay", "reason")

    def render(self) -> str:
        out: list[str] = []
        for m in (self.decide_latency, self.decide_queue, self.decisions, self.events_in, self.events_out,
                  self.events_rejected, self.errors, self.read_pipelines, self.read_commands,
                  self.admission_limit, self.admission_cuts, self.model_load, self.model_rejected,
                  self.decision_log_unacked):
            out += m.render()
        return "\n".join(out) + "\n"
