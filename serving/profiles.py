"""The admin's view of one person: ``GET /v1/profiles/{id}`` (the features held), ``GET .../export`` (everything
held, portability) and ``DELETE`` (right to be forgotten, ``engine/erasure.py``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.erasure import ErasureStore
from engine.features import decode
from engine.learning_messages import forget_message
from engine.recommend.signal import COVISIT_KEY
from serving import auth
from serving.services import REDIS_CALL_TIMEOUT_S, Services

#: every route here is the admin's (routes added later included)
router = APIRouter(dependencies=[auth.require(auth.ADMIN)])


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def erasures(svc: Services) -> ErasureStore:
    return ErasureStore(svc.redis, svc.config, svc.settings.erasure_retention_days * 86400)


@router.get("/v1/profiles/{person_id}", summary="Features held for a customer or an anonymous id")
async def get_profile(person_id: str, request: Request) -> Response:
    """The customer's profile if ``person_id`` is a customer id; else the anonymous id's, or the customer's it
    is linked to."""
    svc: Services = request.app.state.services
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        raw = await svc.store.read_raw(person_id)
        if not raw.exists:
            linked = (await svc.store.resolve([person_id])).get(person_id)
            raw = await (svc.store.read_raw(linked) if linked else svc.store.read_anonymous(person_id))
    if not raw.exists:
        return _json({"error": f"no profile for {person_id!r}"}, 404)
    now = time.time()
    profile = decode(person_id, raw, svc.config, now)
    cluster = svc.models.cluster_segment(profile, now)  # behavioural clusters (engine/clusters.py)
    segments = svc.segments.members(profile, now) + ([cluster] if cluster else [])
    return _json({**profile.to_dict(), "segments": segments})


@router.get("/v1/profiles/{person_id}/export", summary="Everything held about a person (portability)")
async def export_profile(person_id: str, request: Request) -> Response:
    """One JSON document: the profiles of the customer id and of the anonymous ids merged into it (features
    and raw fields), the identities, consent, pending decisions. 404 when nothing is held."""
    svc: Services = request.app.state.services
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        doc = await erasures(svc).export(person_id)
    if not doc["profiles"] and not doc["identities"]["anonymous_ids"] and not doc["pending_decisions"] \
            and doc["identities"]["anonymous_id_linked_to"] is None:
        return _json({"error": f"nothing held for {person_id!r}", **doc}, 404)
    return _json(doc)


@router.delete("/v1/profiles/{person_id}", summary="Erase a person (right to be forgotten)")
async def erase_profile(person_id: str, request: Request) -> Response:
    """Erases the customer ``person_id``, every anonymous id merged into it and the anonymous id
    ``person_id`` (``engine/erasure.py``: markers first, then every family of keys), then publishes a
    tombstone on the compacted erasures topic (key: the id; downstream systems forget too) and asks the
    co-visitation learner to drop the histories it holds under each id (through ``learning``, its only input,
    so the request is ordered after the interactions before it). 200 only once Kafka confirmed both; else 503
    and the same call finishes the job (what it needs to know is kept until then)."""
    svc: Services = request.app.state.services
    store = erasures(svc)
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        erased = await store.erase(person_id)
    answer: dict[str, Any] = {"id": person_id, "customer_id": person_id, "keys_deleted": erased.keys_deleted,
                              "ids": erased.visitors}
    try:
        async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
            sends = [svc.producer.send_and_wait(svc.settings.erasures_topic, key=v.encode(), value=None)
                     for v in erased.visitors]
            if svc.config.collaborative.enabled:
                sends.append(svc.producer.send_and_wait(
                    svc.settings.learning_topic, key=COVISIT_KEY,
                    value=forget_message(erased.visitors)))
            await asyncio.gather(*sends)
    except Exception as exc:
        svc.metrics.errors.inc("erase_publish")
        answer["error"] = (f"the profile was erased, but Kafka did not confirm the tombstone or the learner's "
                           f"erasure request: {exc!r}; repeat the request")
        return _json(answer, 503)
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        await store.finish(person_id)
    answer["tombstones"] = len(erased.visitors)
    if svc.config.collaborative.enabled:
        answer["learner_histories"] = "erasure requested"
    return _json(answer)
