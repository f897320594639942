"""``GET /v1/reports/summary``: what the dashboard (``/dashboard``, ``serving/dashboard.py``) draws, in one call.

* ``decisions``: decisions logged per placement and arm (the worker's ``arms:{<placement>}`` counters: every API
  replica's decisions, once), and this API process's latency histogram with p50/p95/p99 (the upper bound of the
  bucket each quantile falls in);
* ``experiments``: per placement and arm CTR and conversion rate with Wilson intervals, revenue (attributed,
  linear model, when attribution is on), and the lift of the learning arm over the control with delta-method
  intervals (``engine.stats.lift_interval``);
* ``attribution``: ``GET /v1/reports/attribution``'s document;
* ``segments``: members per segment as the stream last published them (the profiles' ``S`` field), counted over
  at most ``SEGMENT_SCAN_KEYS`` keys per call (``complete`` says whether the scan covered every key; if not, the
  counts are those of the profiles scanned, ``profiles_scanned`` of them);
* ``worker``: the workers' counters (events received and applied, dead letters...);
* ``lag``: per topic the records the workers' stream group has not committed yet (Kafka's end offsets minus
  the group's committed offsets), or ``null`` with ``lag_error`` when Kafka did not answer within
  ``LAG_TIMEOUT_S``; cached ``LAG_CACHE_S``.

Every rate the dashboard shows per second it computes from two calls (counters here are totals).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.attribution import AttributionStore
from engine.decisions import CONTROL_ARM, LEARNING_ARM
from engine.layout import SEGMENTS_FIELD
from engine.redis_connection import is_cluster
from engine.settings import Settings
from engine.stats import lift_interval, wilson
from serving import auth
from serving.metrics import Histogram
from serving.reports import report
from serving.services import REDIS_CALL_TIMEOUT_S, Services

router = APIRouter(dependencies=[auth.require(auth.ADMIN)])
#: Keys a summary looks at for segment sizes at most (SCAN, COUNT 1000 per step).
SEGMENT_SCAN_KEYS = 20_000
LAG_TIMEOUT_S = 3.0
LAG_CACHE_S = 2.0
_lag_cache: dict[str, Any] = {}
_lag_lock = asyncio.Lock()


def quantile(h: Histogram, q: float) -> float | None:
    """The upper bound of the bucket the q-quantile falls in (None: no observation; past the last bucket: inf).

    >>> h = Histogram("x", "x", (0.001, 0.01, 0.1))
    >>> for v in (0.0005, 0.002, 0.003, 0.05):
    ...     h.observe(v)
    >>> quantile(h, 0.5), quantile(h, 0.99), quantile(Histogram("y", "y"), 0.5)
    (0.01, 0.1, None)
    """
    if h.count == 0:
        return None
    target, seen = q * h.count, 0
    for le, c in zip(h.buckets, h.counts, strict=False):
        seen += c
        if seen >= target:
            return le
    return float("inf")


def _rate(successes: float, n: float) -> tuple[float, float]:
    p = min(successes, n) / n if n else 0.0
    return (p, p * (1 - p) / n if n else 0.0)


def _shown(c: dict[str, float]) -> float:
    """The rates' denominator: decisions actually shown (impression events) once counted, else decisions."""
    return c.get("shown", 0.0) or c.get("impressions", 0.0)


def experiment(counters: dict[str, dict[str, float]], revenue: dict[str, float], holdout_share: float
               ) -> dict[str, Any]:
    """Per arm: decisions, clicks, conversions, CTR and conversion rate (Wilson), attributed revenue; lifts.

    >>> e = experiment({"learning": {"impressions": 100, "clicks": 10}, "control": {"impressions": 100,
    ...                 "clicks": 5}}, {}, 0.5)
    >>> e["arms"]["learning"]["ctr"], round(e["ctr_lift"], 3)
    (0.1, 1.0)
    """
    arms: dict[str, Any] = {}
    for arm in sorted(set(counters) | {LEARNING_ARM, CONTROL_ARM}):
        c = counters.get(arm, {})
        n, clicks, conv = _shown(c), c.get("clicks", 0.0), c.get("conversions", 0.0)
        arms[arm] = {"decisions": c.get("impressions", 0.0), "shown": c.get("shown", 0.0),
                     "nothing_now": c.get("nothing_now", 0.0), "clicks": clicks, "conversions": conv,
                     "ctr": clicks / n if n else 0.0, "ctr_ci95": list(wilson(min(clicks, n), n)),
                     "conversion_rate": conv / n if n else 0.0, "conversion_rate_ci95": list(wilson(min(conv, n), n)),
                     "revenue": revenue.get(arm, 0.0),
                     "revenue_per_decision": revenue.get(arm, 0.0) / d if (d := c.get("impressions", 0.0)) else 0.0}
    out: dict[str, Any] = {"holdout_share": holdout_share, "arms": arms}
    learning, control = counters.get(LEARNING_ARM, {}), counters.get(CONTROL_ARM, {})
    for name, key in (("ctr", "clicks"), ("conversion_rate", "conversions")):
        lift, ci = lift_interval(_rate(learning.get(key, 0.0), _shown(learning)),
                                 _rate(control.get(key, 0.0), _shown(control)))
        out[f"{name}_lift"], out[f"{name}_lift_ci95"] = lift, ci
    return out


async def _segment_sizes(svc: Services) -> dict[str, Any]:
    sizes = {s.id: 0 for s in svc.config.segments}
    scanned = profiles = 0

    async def count(keys: list[str]) -> None:
        nonlocal profiles
        keys = [k for k in keys if k.endswith("}")]  # profiles, not their :aliases / :dec sets
        if keys:
            pipe = svc.redis.pipeline(transaction=False)
            for k in keys:
                pipe.hget(k, SEGMENTS_FIELD)
            for value in await pipe.execute():
                profiles += 1
                for name in (value or "").split(","):
                    if name in sizes:
                        sizes[name] += 1

    if is_cluster(svc.redis):  # every master's keys, SCAN by SCAN (redis-py's cluster scan_iter)
        batch: list[str] = []
        complete = True
        async for key in svc.redis.scan_iter(match="p:{*}", count=1000):
            batch.append(cast(str, key))
            if len(batch) == 1000:
                await count(batch)
                scanned, batch = scanned + 1000, []
                if scanned >= SEGMENT_SCAN_KEYS:
                    complete = False
                    break
        await count(batch)
        return {"sizes": sizes, "profiles_scanned": profiles, "complete": complete}
    cursor: int | str = 0
    while True:
        cursor, keys = await svc.redis.scan(cursor=int(cursor), match="p:{*}", count=1000)
        await count(cast(list[str], keys))
        scanned += 1000
        if int(cursor) == 0 or scanned >= SEGMENT_SCAN_KEYS:
            break
    return {"sizes": sizes, "profiles_scanned": profiles, "complete": int(cursor) == 0}


async def _lag(settings: Settings) -> dict[str, Any]:
    """The stream group's lag per topic (cached; one admin and one consumer connection per refresh)."""
    async with _lag_lock:
        if _lag_cache and time.monotonic() - _lag_cache["at"] < LAG_CACHE_S:
            return cast(dict[str, Any], _lag_cache["value"])
        group = settings.worker_stream_group or f"{settings.worker_app_id}-stream"
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                    **settings.kafka_security.client_kwargs())
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                    **settings.kafka_security.client_kwargs())
        value: dict[str, Any]
        try:
            async with asyncio.timeout(LAG_TIMEOUT_S):
                await admin.start()
                await consumer.start()
                topics = [settings.events_topic, settings.decisions_topic]
                parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
                ends = await consumer.end_offsets(parts) if parts else {}
                committed = await admin.list_consumer_group_offsets(group)
                by_topic = {t: 0 for t in topics}
                for tp in parts:
                    done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0
                    by_topic[tp.topic] += max(0, ends[tp] - done)
                value = {"group": group, "by_topic": by_topic, "total": sum(by_topic.values())}
        except Exception as exc:  # Kafka away or slow: the dashboard says so, the rest of the summary stands
            value = {"group": group, "by_topic": None, "total": None, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            for close in (consumer.stop, admin.close):
                try:
                    await close()
                except Exception:  # noqa: S110  # a client that never started
                    pass
        _lag_cache.update(at=time.monotonic(), value=value)
        return value


@router.get("/v1/reports/summary", summary="What the dashboard shows: decisions, experiments, attribution, ...")
async def summary(request: Request) -> Response:
    svc: Services = request.app.state.services
    placements = list(svc.config.placements)
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S * 4):
        arms = [await svc.learning.arm_counters(p) for p in placements]
        rows, totals = await AttributionStore(svc.redis, svc.config.attribution).counters()
        worker = await svc.store.read_worker_counters()
        segments = await _segment_sizes(svc)
    lag = await _lag(svc.settings)
    attribution = report(svc.config, rows, totals)
    revenue: dict[str, dict[str, float]] = {}
    for row, m in rows.items():
        per = revenue.setdefault(row.placement, {})
        per[row.arm] = per.get(row.arm, 0.0) + m.get("revenue:linear", 0.0)
    h = svc.metrics.decide_latency
    body = {
        "time": time.time(),
        "decisions": {
            "total": sum(c.get("impressions", 0.0) for a in arms for c in a.values()),
            "by_placement": {p: sum(c.get("impressions", 0.0) for c in a.values())
                             for p, a in zip(placements, arms, strict=True)},
            "latency": {"count": h.count, "sum": h.sum, "p50": quantile(h, 0.5), "p95": quantile(h, 0.95),
                        "p99": quantile(h, 0.99),
                        "buckets": [[le, c] for le, c in zip(h.buckets, h.counts, strict=False)]},
        },
        "experiments": {p: experiment(a, revenue.get(p, {}), svc.config.placements[p].learning.holdout_share)
                        for p, a in zip(placements, arms, strict=True)},
        "attribution": attribution,
        "segments": segments,
        "worker": {k: float(v) for k, v in worker.items()},
        "lag": lag,
    }
    return Response(orjson.dumps(body), media_type="application/json")
