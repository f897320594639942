"""``GET /v1/profiles/{id}`` (the features held for a customer) and ``DELETE`` (right to be
forgotten)."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.features import decode
from serving.services import REDIS_CALL_TIMEOUT_S, Services

router = APIRouter()


@router.get("/v1/profiles/{customer_id}", summary="Features held for a customer")
async def get_profile(customer_id: str, request: Request) -> Response:
    svc: Services = request.app.state.services
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        resolved = (await svc.store.resolve([customer_id])).get(customer_id, customer_id)
        raw = await svc.store.read_raw(resolved)
    if not raw.exists:
        return Response(orjson.dumps({"error": f"no profile for {customer_id!r}"}), status_code=404,
                        media_type="application/json")
    profile = decode(resolved, raw, svc.config, time.time())
    return Response(orjson.dumps(profile.to_dict()), media_type="application/json")


@router.delete("/v1/profiles/{customer_id}", summary="Erase a customer (right to be forgotten)")
async def erase_profile(customer_id: str, request: Request) -> Response:
    svc: Services = request.app.state.services
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        deleted = await svc.store.erase(customer_id)
    return Response(orjson.dumps({"customer_id": customer_id, "keys_deleted": deleted}),
                    media_type="application/json")
