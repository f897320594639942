"""``GET /v1/profiles/{id}`` (the features held for a customer) and ``DELETE`` (right to be
forgotten)."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.features import decode
from engine.learning_messages import forget_message
from engine.recommend.signal import COVISIT_KEY
from serving import auth
from serving.services import REDIS_CALL_TIMEOUT_S, Services

#: every route here is the admin's (routes added later included)
router = APIRouter(dependencies=[auth.require(auth.ADMIN)])


@router.get("/v1/profiles/{customer_id}", summary="Features held for a customer")
async def get_profile(customer_id: str, request: Request) -> Response:
    svc: Services = request.app.state.services
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        resolved = (await svc.store.resolve([customer_id])).get(customer_id, customer_id)
        raw = await svc.store.read_raw(resolved)
    if not raw.exists:
        return Response(orjson.dumps({"error": f"no profile for {customer_id!r}"}), status_code=404,
                        media_type="application/json")
    now = time.time()
    profile = decode(resolved, raw, svc.config, now)
    return Response(orjson.dumps({**profile.to_dict(), "segments": svc.segments.members(profile, now)}),
                    media_type="application/json")


@router.delete("/v1/profiles/{customer_id}", summary="Erase a customer (right to be forgotten)")
async def erase_profile(customer_id: str, request: Request) -> Response:
    """Deletes the profile, its aliases and identity entries, then asks the co-visitation learner to drop the
    interaction histories it holds under each of those ids (through the ``learning`` topic, the learner's
    only input, so the request is ordered with the interactions before it). 200 only once Kafka confirmed
    that request; else 503 and the call can be repeated (erasing twice is harmless)."""
    svc: Services = request.app.state.services
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        erased = await svc.store.erase(customer_id)
    answer = {"customer_id": customer_id, "keys_deleted": erased.keys_deleted}
    if svc.config.collaborative.enabled:
        try:
            async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
                await svc.producer.send_and_wait(
                    svc.settings.learning_topic, key=COVISIT_KEY,
                    value=forget_message(erased.visitors))
        except Exception as exc:
            svc.metrics.errors.inc("erase_forget")
            answer["error"] = (f"the profile was erased, but Kafka did not confirm the learner's erasure request: "
                               f"{exc!r}; repeat the request")
            return Response(orjson.dumps(answer), status_code=503, media_type="application/json")
        answer["learner_histories"] = "erasure requested"
    return Response(orjson.dumps(answer), media_type="application/json")
