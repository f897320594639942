"""``GET /v1/experiments/{placement}``: the live holdout comparison (learning arm vs control)."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.models import learned_policies
from engine.stats import wilson
from serving import auth
from serving.services import REDIS_CALL_TIMEOUT_S, Services

#: every route here is the admin's (routes added later included)
router = APIRouter(dependencies=[auth.require(auth.ADMIN)])


def arm_summary(counters: dict[str, float]) -> dict[str, float | str | list[float]]:
    """One arm's figures. The CTR's denominator is the decisions actually shown (``impression`` events naming
    the decision and its placement: ``shown``) once there are any, else the decisions logged (``impressions``,
    for a site that sends no impression events); "nothing now" decisions (``nothing_now``) are counted apart.

    >>> s = arm_summary({"impressions": 10.0, "shown": 4.0, "clicks": 2.0, "nothing_now": 3.0})
    >>> s["ctr"], s["ctr_denominator"], s["nothing_now"], arm_summary({"impressions": 10.0, "clicks": 2.0})["ctr"]
    (0.5, 'shown', 3.0, 0.2)
    """
    decisions, shown = counters.get("impressions", 0.0), counters.get("shown", 0.0)
    imp = shown if shown else decisions
    clicks, conv = counters.get("clicks", 0.0), counters.get("conversions", 0.0)
    learned = counters.get("learned", 0.0)
    return {
        "impressions": decisions, "shown": shown, "ctr_denominator": "shown" if shown else "decisions",
        "nothing_now": counters.get("nothing_now", 0.0), "clicks": clicks, "conversions": conv,
        "ctr": clicks / imp if imp else 0.0, "ctr_ci95": list(wilson(clicks, imp)),
        "conversion_rate": conv / imp if imp else 0.0, "conversion_rate_ci95": list(wilson(conv, imp)),
        "settled": learned, "mean_reward": counters.get("reward_sum", 0.0) / learned if learned else 0.0,
        "late_rewards": counters.get("late_rewards", 0.0),
    }


@router.get("/v1/experiments/{placement}", summary="Per-arm impressions, CTR and conversions, live")
async def experiment(placement: str, request: Request) -> Response:
    svc: Services = request.app.state.services
    if placement not in svc.config.placements:
        return Response(orjson.dumps({"error": f"unknown placement {placement!r}"}), status_code=404,
                        media_type="application/json")
    learning = svc.config.placements[placement].learning
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        counters = await svc.learning.arm_counters(placement)
    body = {
        "placement": placement,
        "policy": learning.policy, "holdout_policy": learning.holdout_policy,
        "holdout_share": learning.holdout_share,
        "model_versions": {p: svc.models.get(placement, p).version for p in learned_policies(svc.config, placement)},
        "arms": {arm: arm_summary(c) for arm, c in sorted(counters.items())},
    }
    return Response(orjson.dumps(body), media_type="application/json")
