"""``GET /v1/reports/attribution``: conversions and revenue credited to actions, channels and placements
(``engine.attribution``), with rates, lift against the holdout and ROI (docs/attribution.md).

Per group (``actions``, ``channels``, ``placements``, and ``rows`` = action x channel x placement): impressions,
clicks, CTR with its Wilson interval, the cost of its impressions when one is configured, and per model the
conversions (fractional credit), revenue, conversion rate (Wilson interval), revenue per impression, ROI and the
lift of the learning arm over the control arm (delta-method interval of the ratio of the two arms' rates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.attribution import AttributionStore, Row
from engine.config import EngineConfig
from engine.decisions import CONTROL_ARM, LEARNING_ARM
from engine.stats import lift_interval, mean_and_variance, wilson
from serving import auth
from serving.services import REDIS_CALL_TIMEOUT_S, Services

router = APIRouter(dependencies=[auth.require(auth.ADMIN)])
#: The groupings of the report: its key -> the row fields that name a group.
GROUPS = {"actions": ("action",), "channels": ("channel",), "placements": ("placement",),
          "rows": ("action", "channel", "placement")}


def _add(into: dict[str, float], metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        into[k] = into.get(k, 0.0) + v


def _cost(config: EngineConfig, row: Row, impressions: float) -> float:
    a = config.attribution
    return impressions * (a.cost_per_impression_actions.get(row.action, 0.0)
                          + a.cost_per_impression_channels.get(row.channel, 0.0))


def _rate_lift(arms: dict[str, dict[str, float]], model: str) -> dict[str, Any]:
    """Lift of the learning arm over the control arm: conversion rate and revenue per impression."""
    out: dict[str, Any] = {}
    means = {}
    for arm in (LEARNING_ARM, CONTROL_ARM):
        m = arms.get(arm, {})
        n = m.get("impressions", 0.0)
        conv = min(m.get(f"conversions:{model}", 0.0), n)
        p = conv / n if n else 0.0
        rate = (p, p * (1 - p) / n if n else 0.0)  # a binomial proportion's variance
        revenue = mean_and_variance(m.get(f"revenue:{model}", 0.0), m.get(f"revenue_squares:{model}", 0.0), n)
        means[arm] = (rate, revenue, n)
    (lr, lv, ln), (cr, cv, cn) = means[LEARNING_ARM], means[CONTROL_ARM]
    out["learning_impressions"], out["control_impressions"] = ln, cn
    out["conversion_rate_lift"], out["conversion_rate_lift_ci95"] = lift_interval(lr, cr)
    out["revenue_per_impression_lift"], out["revenue_per_impression_lift_ci95"] = lift_interval(lv, cv)
    return out


def _entry(config: EngineConfig, name: dict[str, str], total: dict[str, float], cost: float,
           arms: dict[str, dict[str, float]]) -> dict[str, Any]:
    imp, clicks = total.get("impressions", 0.0), total.get("clicks", 0.0)
    entry: dict[str, Any] = {**name, "impressions": imp, "clicks": clicks, "ctr": clicks / imp if imp else 0.0,
                             "ctr_ci95": list(wilson(min(clicks, imp), imp)),
                             "cost": cost if cost > 0 else None, "models": {}}
    for model in config.attribution.models:
        conv, revenue = total.get(f"conversions:{model}", 0.0), total.get(f"revenue:{model}", 0.0)
        entry["models"][model] = {
            "conversions": round(conv, 9), "revenue": round(revenue, 9),
            "conversion_rate": conv / imp if imp else 0.0,
            "conversion_rate_ci95": list(wilson(min(conv, imp), imp)),
            "revenue_per_impression": revenue / imp if imp else 0.0,
            "roi": (revenue - cost) / cost if cost > 0 else None,
            "lift": _rate_lift(arms, model),
        }
    return entry


def report(config: EngineConfig, rows: dict[Row, dict[str, float]], totals: dict[str, float]) -> dict[str, Any]:
    """The report's document from the summed counters (``engine.attribution.read_counters``).

    >>> from engine.config import parse_config
    >>> cfg = parse_config({"attribution": {"enabled": True, "models": ["last_touch"],
    ...                     "cost_per_impression": {"channels": {"email": 0.5}}}})
    >>> doc = report(cfg, {Row("a1", "email", "home", "learning"): {"impressions": 4.0, "clicks": 1.0,
    ...                     "conversions:last_touch": 1.0, "revenue:last_touch": 10.0}}, {"conversions": 1.0})
    >>> a = doc["actions"][0]
    >>> m = a["models"]["last_touch"]
    >>> a["action"], a["ctr"], a["cost"], m["revenue_per_impression"], m["roi"]
    ('a1', 0.25, 2.0, 2.5, 4.0)
    """
    a = config.attribution
    out: dict[str, Any] = {"enabled": a.enabled, "window_hours": a.window_hours, "models": list(a.models),
                           "goals": ["purchase", *a.goals], "totals": {k: round(v, 9) for k, v in totals.items()}}
    for group, fields in GROUPS.items():
        sums: dict[tuple[str, ...], dict[str, float]] = {}
        costs: dict[tuple[str, ...], float] = {}
        by_arm: dict[tuple[str, ...], dict[str, dict[str, float]]] = {}
        for row, metrics in rows.items():
            k = tuple(getattr(row, f) for f in fields)
            _add(sums.setdefault(k, {}), metrics)
            costs[k] = costs.get(k, 0.0) + _cost(config, row, metrics.get("impressions", 0.0))
            _add(by_arm.setdefault(k, {}).setdefault(row.arm, {}), metrics)
        out[group] = [_entry(config, dict(zip(fields, k, strict=True)), sums[k], costs[k], by_arm[k])
                      for k in _ordered(sums)]
    return out


def _ordered(keys: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return sorted(keys)


@router.get("/v1/reports/attribution", summary="Conversions and revenue by action, channel and placement")
async def attribution(request: Request) -> Response:
    svc: Services = request.app.state.services
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        rows, totals = await AttributionStore(svc.redis, svc.config.attribution).counters()
    return Response(orjson.dumps(report(svc.config, rows, totals)), media_type="application/json")
