"""Liveness and readiness (open to anyone: they say only ok or not, no addresses or errors), and metrics
(the admin role's)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client.utils import floatToGoString

from engine.redis_connection import is_cluster
from serving import auth
from serving.services import Services

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", summary="Kafka and Redis are reachable")
async def readyz(request: Request) -> Response:
    svc: Services = request.app.state.services
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(svc.redis.ping(), timeout=1.0)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = "unreachable"
        log.warning("readiness: Redis unreachable: %r", exc)
    try:
        await asyncio.wait_for(svc.producer.client.fetch_all_metadata(), timeout=2.0)
        checks["kafka"] = "ok"
    except Exception as exc:
        checks["kafka"] = "unreachable"
        log.warning("readiness: Kafka unreachable: %r", exc)
    ready = all(v == "ok" for v in checks.values())
    return Response(orjson.dumps({"ready": ready, "checks": checks}), status_code=200 if ready else 503,
                    media_type="application/json")


@router.get("/metrics", summary="Prometheus metrics", dependencies=[auth.require(auth.ADMIN)])
async def metrics(request: Request) -> PlainTextResponse:
    svc: Services = request.app.state.services
    # this process's own metrics only: each stream worker serves its own (WORKER_METRICS_PORT), so that a sum
    # over API replicas does not multiply them. What follows is global state read from Redis (the same in
    # every replica): aggregate it with max(), not sum()
    text = svc.metrics.render()
    try:
        for placement in svc.config.placements:
            counters = await asyncio.wait_for(svc.learning.arm_counters(placement), 0.5)
            text += render_arm_counters(placement, counters)
    except Exception:
        svc.metrics.errors.inc("metrics_arm_counters")
    try:  # alert on the ratio: at 1 (noeviction) Redis refuses writes and the worker's ingest pauses
        text += render_redis_memory(await asyncio.wait_for(_memory_info(svc), 0.5))
    except Exception:
        svc.metrics.errors.inc("metrics_redis_memory")
    for name, model in svc.models.models.items():
        text += f'pulse_model_version{{model="{name}"}} {model.version}\n'
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def render_arm_counters(placement: str, counters: dict[str, dict[str, float]]) -> str:
    """Each arm's counters, every digit kept (``floatToGoString``, as ``prometheus_client`` prints).

    >>> print(render_arm_counters("home", {"learning": {"impressions": 12_345_678}}), end="")
    pulse_experiment_impressions_total{placement="home",arm="learning"} 1.2345678e+07
    """
    lines = []
    for arm, values in sorted(counters.items()):
        for counter, v in sorted(values.items()):
            lines.append(f'pulse_experiment_{counter}_total{{placement="{placement}",arm="{arm}"}} '
                         f'{floatToGoString(v)}')
    return "\n".join(lines) + ("\n" if lines else "")


async def _memory_info(svc: Services) -> dict[str, object]:
    """INFO memory; on a Redis Cluster the master nearest its limit's (the first to refuse writes)."""
    if not is_cluster(svc.redis):
        return cast(dict[str, object], await svc.redis.info("memory"))
    from redis.asyncio.cluster import RedisCluster

    per_node = await svc.redis.info("memory", target_nodes=RedisCluster.PRIMARIES)

    def ratio(info: dict[str, Any]) -> float:
        return int(info.get("used_memory", 0)) / (int(info.get("maxmemory", 0)) or 1 << 62)

    return cast(dict[str, object], max(per_node.values(), key=ratio))


def render_redis_memory(info: dict[str, object]) -> str:
    """Redis memory in use, its limit and their ratio (0 when no limit is set).

    >>> print(render_redis_memory({"used_memory": 512, "maxmemory": 1024}), end="")
    # TYPE pulse_redis_used_memory_bytes gauge
    pulse_redis_used_memory_bytes 512
    # TYPE pulse_redis_maxmemory_bytes gauge
    pulse_redis_maxmemory_bytes 1024
    # TYPE pulse_redis_memory_used_ratio gauge
    pulse_redis_memory_used_ratio 0.5
    """
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))  # type: ignore[call-overload]
    ratio = used / limit if limit else 0.0
    return (f"# TYPE pulse_redis_used_memory_bytes gauge\npulse_redis_used_memory_bytes {used}\n"
            f"# TYPE pulse_redis_maxmemory_bytes gauge\npulse_redis_maxmemory_bytes {limit}\n"
            f"# TYPE pulse_redis_memory_used_ratio gauge\npulse_redis_memory_used_ratio {floatToGoString(ratio)}\n")
