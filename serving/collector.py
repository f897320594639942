"""``POST /v1/events``: the collector. Validates, publishes to Kafka with acks=all, and answers 202
only after every event of the request was delivered. A request with any invalid event is rejected
whole (422, a reason per event) so that a client can fix and resend it without creating duplicates.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from schemas.events import InvalidEvent, dumps_event, parse_event
from serving import auth
from serving.services import Services

router = APIRouter()
MAX_BATCH = 500


def _answer(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


EVENTS_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One event, a list of events, or a Segment-style batch {\"batch\": [...]}. "
                       "Event JSON Schemas: schemas/json/*.schema.json.",
        "content": {"application/json": {"schema": {"oneOf": [
            {"type": "object"}, {"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH},
        ]}}},
    },
    "responses": {
        "202": {"description": "all events delivered to Kafka"},
        "400": {"description": "body is not JSON or too large"},
        "401": {"description": "no API key, or an unknown one"},
        "403": {"description": "a public key sent an event type only a server key may send, or from an origin "
                               "the key does not list; none were published"},
        "422": {"description": "some events are invalid; none were published; reasons per event"},
        "503": {"description": "Kafka did not confirm delivery; retry"},
    },
}


@router.post("/v1/events", status_code=202, openapi_extra=EVENTS_OPENAPI, summary="Collect events")
async def collect(request: Request, caller: auth.PublicCaller) -> Response:
    svc: Services = request.app.state.services
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return _answer(400, {"error": f"body is not valid JSON: {exc}"})
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        items = body["batch"]
    elif isinstance(body, list):
        items = body
    else:
        items = [body]
    if not items:
        return _answer(400, {"error": "no events in the body"})
    if len(items) > MAX_BATCH:
        return _answer(400, {"error": f"at most {MAX_BATCH} events per request, got {len(items)}"})
    svc.metrics.events_in.inc(n=len(items))

    events, errors = [], []
    for i, item in enumerate(items):
        try:
            events.append(parse_event(item))
        except InvalidEvent as exc:
            eid = item.get("event_id") or item.get("messageId") if isinstance(item, dict) else None
            errors.append({"index": i, "event_id": eid, "reason": exc.reason})
    if errors:
        svc.metrics.events_rejected.inc(n=len(errors))
        return _answer(422, {"accepted": 0, "errors": errors})
    refused = auth.refuse_event_types(caller, [ev.type for ev in events])
    if refused is not None:
        return Response(refused.body, status_code=refused.status, media_type="application/json")

    topic = svc.settings.events_topic
    headers = auth.source_headers(caller)  # who sent it, for the stream (engine/trust.py)
    try:
        # send() enqueues and returns a delivery future; awaiting them all pipelines the batch
        futures = [
            await svc.producer.send(topic, value=dumps_event(ev), key=ev.visitor_id.encode(), headers=headers)
            for ev in events
        ]
        await asyncio.gather(*futures)
    except Exception as exc:
        svc.metrics.errors.inc("collector_publish")
        return _answer(503, {"error": f"Kafka did not confirm delivery: {exc!r}; retry the request"})
    svc.metrics.events_out.inc(n=len(events))
    return _answer(202, {"accepted": len(events), "event_ids": [ev.event_id for ev in events]})
