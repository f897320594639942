"""Operations: the metrics print exact values and add up across uvicorn workers; the alert rules and the
Grafana dashboard are well formed and name only metrics that some process exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints
from prometheus_client.parser import text_string_to_metric_families

from serving.health import render_arm_counters, render_redis_memory
from serving.metrics import ServingMetrics
from streams.metrics import HELP, WorkerMetrics

INFRA = Path(__file__).resolve().parent.parent / "infra"
#: PromQL words that are not metric names (functions are recognised by their parenthesis)
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}


def samples(text: str) -> dict[str, float]:
    return {s.name + (str(sorted(s.labels.items())) if s.labels else ""): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_large_counters_keep_every_digit() -> None:
    m = ServingMetrics()
    m.events_in.inc(n=12_345_678)
    m.errors.inc("collector_publish", 12_345_679)
    values = samples(m.render())
    assert values["pulse_collector_events_received_total"] == 12_345_678
    assert values["pulse_errors_total[('where', 'collector_publish')]"] == 12_345_679
    w = WorkerMetrics()
    w.count({"events_applied": 98_765_432})
    assert samples(w.render())["pulse_worker_events_applied_total"] == 98_765_432
    arms = samples(render_arm_counters("home", {"learning": {"impressions": 12_345_678.0}}))
    assert arms["pulse_experiment_impressions_total[('arm', 'learning'), ('placement', 'home')]"] == 12_345_678


def test_each_process_has_its_own_registry() -> None:
    a, b = ServingMetrics(), ServingMetrics()
    a.events_in.inc(n=3)
    assert samples(b.render())["pulse_collector_events_received_total"] == 0


_CHILD = """
import sys
from serving.metrics import ServingMetrics
m = ServingMetrics()
m.events_in.inc(n=int(sys.argv[1]))
m.admission_limit.value = 8
"""


def test_uvicorn_workers_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (5_000_000, 7_345_678):  # two worker processes, each its own counts
        subprocess.run([sys.executable, "-c", _CHILD, str(n)], env=env, check=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", "from serving.metrics import ServingMetrics; "
                          "print(ServingMetrics().render())"], env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    values = samples(out)
    assert values["pulse_collector_events_received_total"] == 12_345_678
    # a gauge is per process (a pid label): adding up admission limits would mean nothing
    limits = [v for k, v in values.items() if k.startswith("pulse_decide_admission_limit[('pid'")]
    assert sorted(limits)[-2:] == [8.0, 8.0]


def exported_names() -> set[str]:
    """Every sample name the API and the workers export (the workers' counters named in ``HELP``, and the
    loop's seconds)."""
    w = WorkerMetrics()
    w.count(dict.fromkeys(HELP, 1))
    w.add_seconds({f"loop_{k}": 1.0 for k in ("poll", "prepare", "wait_writes", "head_start", "commit")})
    w.add_seconds({"kafka_pause": 1.0})
    w.set_lag({("events", 0): 1})
    m = ServingMetrics()
    m.decisions.inc("ok")
    m.errors.inc("x")
    m.model_rejected.inc("signature")
    text = m.render() + w.render() + render_redis_memory({"used_memory": 1, "maxmemory": 2})
    text += render_arm_counters("p", {"a": {"impressions": 1.0, "clicks": 1.0, "conversions": 1.0}})
    text += 'pulse_model_version{model="m"} 1\n'
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    return names | {"up"}  # Prometheus's own, per target


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads.

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{x="y"}[5m])) / b > 0.5 and on (job) up'))
    ['a_bucket', 'b', 'up']
    """
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {m.group(1) for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
            if m.group(1) not in KEYWORDS and not re.fullmatch(r"[0-9.e+]+", m.group(1))}


def test_alert_rules_are_well_formed_and_name_existing_metrics() -> None:
    doc = yaml.safe_load((INFRA / "prometheus" / "alerts.yml").read_text())
    names = exported_names()
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len(rules) >= 8 and all(g["name"] and g["rules"] for g in doc["groups"])
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"]) and rule["annotations"]["summary"], rule
        assert re.fullmatch(r"[0-9]+[smh]", rule["for"]) and rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        missing = metric_names(rule["expr"]) - names
        assert not missing, f"{rule['alert']}: no process exports {sorted(missing)}"
    assert {r["alert"] for r in rules} >= {"PulseConsumerLagGrowing", "PulseWorkerDown", "PulseDecideLatencyHigh"}


def test_the_dashboard_reads_existing_metrics_and_prometheus_scrapes_both_kinds() -> None:
    dash = json.loads((INFRA / "grafana" / "dashboards" / "pulse.json").read_text())
    names = exported_names()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(dash["panels"]) >= 8 and dash["uid"] == "pulse-overview"
    for expr in exprs:
        assert not metric_names(expr) - names, expr
    assert any("pulse_worker_consumer_lag" in e for e in exprs)
    source = yaml.safe_load((INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {source["datasources"][0]["uid"]}
    prom = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert set(jobs) == {"pulse-api", "pulse-worker"}
    assert jobs["pulse-api"]["authorization"]["credentials_file"]  # /metrics takes an admin key
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
