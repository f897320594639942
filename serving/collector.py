"""``POST /v1/events``: the collector. Validates, publishes to Kafka with acks=all, and answers 202
only after every event of the request was delivered. A request with any invalid event is rejected
whole (422, a reason per event, naming its index and field) so that a client can fix and resend it
without creating duplicates.

What the stream cannot take is refused here, in this order: a body over ``COLLECTOR_MAX_BODY_BYTES`` (413,
while it is read), a body that is not JSON or not events (400), more than ``max_events_per_request`` events
(400, before any is validated), then each event against its schema and the bounds of ``schemas/limits.py``
(size once serialised, timestamp within the clock's skew) - the same checks the worker applies to what it
reads from the topic, so an event published another way is dead-lettered for the same reason.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from fastapi import APIRouter, Request
from fastapi.responses import Response

from schemas.events import InvalidEvent, dumps_event, parse_event
from schemas.limits import DEFAULT_LIMITS, EventLimits, check_event
from serving import auth
from serving.asgi import BodyTooLarge, read_limited
from serving.services import Services

router = APIRouter()
MAX_BATCH = DEFAULT_LIMITS.max_events_per_request
#: Members a Segment-style batch body may carry besides ``batch`` (Segment's HTTP API sends these).
BATCH_MEMBERS = frozenset({"batch", "sentAt", "context", "integrations", "writeKey"})
#: Kafka errors that a retry cannot fix: the request is answered 422, never "retry".
PERMANENT_KAFKA_ERRORS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
#: How long a request waits for Kafka's acknowledgements before it is answered 503: a client must not hang
#: for the length of an outage (the idempotent producer keeps its batches until Kafka is back).
PUBLISH_TIMEOUT_S = 5.0
#: ``Retry-After`` of a 503 (seconds): about when a resend can be taken again
RETRY_AFTER_S = 2


def _answer(status: int, payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _denied(denial: auth.Denial) -> Response:
    return Response(denial.body, status_code=denial.status, media_type="application/json",
                    headers={k.decode(): v.decode() for k, v in denial.headers})


def _retry_later(payload: dict[str, Any]) -> Response:
    """503 with ``Retry-After``: Kafka is away or slow; the same events can be sent again."""
    return Response(orjson.dumps(payload), status_code=503, media_type="application/json",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def _error(index: int, item: Any, reason: str) -> dict[str, Any]:
    """One refused event: its index in the request, its id if it had one, the field the reason names."""
    eid = (item.get("event_id") or item.get("messageId")) if isinstance(item, dict) else None
    return {"index": index, "event_id": eid if isinstance(eid, str) else None,
            "field": reason.partition(": ")[0], "reason": reason}


def events_of(body: Any, limits: EventLimits) -> list[Any]:
    """The events of a decoded body (one event, a list, or a Segment batch); ``ValueError`` says why not.

    >>> events_of([{"type": "search"}], DEFAULT_LIMITS)
    [{'type': 'search'}]
    >>> events_of({"batch": [], "sentAt": "x", "extra": 1}, DEFAULT_LIMITS)
    Traceback (most recent call last):
        ...
    ValueError: extra: unknown member of a batch body (allowed: batch, context, integrations, sentAt, writeKey)
    """
    if isinstance(body, dict) and "batch" in body:
        extra = sorted(k for k in body if k not in BATCH_MEMBERS)
        if extra:
            raise ValueError(f"{', '.join(extra)}: unknown member of a batch body "
                             f"(allowed: {', '.join(sorted(BATCH_MEMBERS))})")
        items = body["batch"]
        if not isinstance(items, list):
            raise ValueError("batch: must be a list of events")
    elif isinstance(body, list):
        items = body
    elif isinstance(body, dict):
        items = [body]
    else:
        raise ValueError("body: must be an event object, a list of events or {\"batch\": [...]}")
    if not items:
        raise ValueError("body: no events")
    if len(items) > limits.max_events_per_request:
        raise ValueError(f"body: at most {limits.max_events_per_request} events per request, got {len(items)}")
    return items


def validate(items: list[Any], limits: EventLimits, now: float) -> tuple[list[tuple[Any, bytes]], list[dict[str, Any]]]:
    """Each event parsed, checked and serialised as it will be published; or the reasons, per event."""
    ready: list[tuple[Any, bytes]] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            ev = parse_event(item)
            value = dumps_event(ev)
            check_event(ev, len(value), now, limits)
        except InvalidEvent as exc:
            errors.append(_error(i, item, exc.reason))
            continue
        ready.append((ev, value))
    return ready, errors


EVENTS_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One event, a list of events, or a Segment-style batch {\"batch\": [...]}. "
                       "Event JSON Schemas: schemas/json/*.schema.json; bounds: docs/limits.md. Without an "
                       "Authorization header (navigator.sendBeacon cannot set one) the public key is taken from "
                       "the batch body's writeKey; a server or admin key there is refused (403). Any content "
                       "type is read as JSON (sendBeacon sends text/plain).",
        "content": {"application/json": {"schema": {"oneOf": [
            {"type": "object"}, {"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH},
        ]}}},
    },
    "responses": {
        "202": {"description": "all events delivered to Kafka"},
        "400": {"description": "body is not JSON, not events, or holds too many events"},
        "401": {"description": "no API key, or an unknown one"},
        "403": {"description": "a public key sent an event type only a server key may send, or from an origin "
                               "the key does not list; none were published"},
        "413": {"description": "body larger than COLLECTOR_MAX_BODY_BYTES (default 1 MiB); none were published"},
        "422": {"description": "some events are invalid, with the index, field and reason of each; none were "
                               "published (or Kafka refused one for good: too large; the delivered ones are listed)"},
        "503": {"description": "Kafka did not confirm delivery within 5 s (it is away); resend the same events "
                               "(same event_id) after Retry-After: events delivered twice are applied once",
                "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}},
    },
}


@router.post("/v1/events", status_code=202, openapi_extra=EVENTS_OPENAPI, summary="Collect events")
async def collect(request: Request, caller: auth.BodyKeyCaller) -> Response:
    svc: Services = request.app.state.services
    limits = svc.settings.event_limits
    try:
        raw = await read_limited(request.scope, request.receive, limits.max_body_bytes)
    except BodyTooLarge as exc:
        svc.metrics.errors.inc("collector_body_too_large")
        return _answer(413, {"error": f"{exc} (COLLECTOR_MAX_BODY_BYTES)"})
    # any content type: a page's sendBeacon sends text/plain (CORS-safelisted: no preflight)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if caller is auth.KEY_IN_BODY:  # who is asking is not known yet: say only what is missing
            missing = auth.check_body_key(request.app.state.keyring, None, None)
            assert isinstance(missing, auth.Denial)
            return _denied(missing)
        return _answer(400, {"error": f"body is not valid JSON: {exc}"})
    if caller is auth.KEY_IN_BODY:  # no Authorization header: the public key in the body (sendBeacon)
        key = body.get(auth.BODY_KEY_MEMBER) if isinstance(body, dict) else None
        found = auth.check_body_key(request.app.state.keyring, key, request.headers.get("origin"))
        if isinstance(found, auth.Denial):
            return _denied(found)
        caller = found
    try:
        items = events_of(body, limits)
    except ValueError as exc:
        return _answer(400, {"error": str(exc)})
    svc.metrics.events_in.inc(n=len(items))

    ready, errors = validate(items, limits, time.time())
    if errors:
        svc.metrics.events_rejected.inc(n=len(errors))
        return _answer(422, {"accepted": 0, "errors": errors})
    refused = auth.refuse_event_types(caller, [ev.type for ev, _ in ready])
    if refused is not None:
        return Response(refused.body, status_code=refused.status, media_type="application/json")
    return await publish(svc, items, ready, auth.source_headers(caller))


async def publish(svc: Services, items: list[Any], ready: list[tuple[Any, bytes]],
                  headers: list[tuple[str, bytes]], status: int = 202,
                  extra: dict[str, Any] | None = None) -> Response:
    """Send every event and wait for all acknowledgements: ``status`` (with ``extra`` in its body), or 422 for
    an event Kafka refuses for good (which a retry cannot fix), or 503 (retry: the worker de-duplicates the
    events delivered twice). ``items[i]`` is the request's item of ``ready[i]``."""
    topic = svc.settings.events_topic
    futures: list[asyncio.Future[Any]] = []
    failed: dict[int, BaseException] = {}
    try:
        # bounded: a client must not hang for an outage (the idempotent producer keeps its batches until Kafka
        # is back); the futures are waited for, never cancelled, and what Kafka takes later is applied once
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            # send() enqueues and returns a delivery future; awaiting them all pipelines the batch
            for i, (ev, value) in enumerate(ready):
                try:
                    futures.append(await svc.producer.send(topic, value=value, key=ev.visitor_id.encode(),
                                                           headers=headers))
                except Exception as exc:  # refused before sending (too large for the producer, not started...)
                    failed[i] = exc
                    break
            results = await asyncio.gather(*(asyncio.shield(f) for f in futures), return_exceptions=True)
    except TimeoutError:
        delivered = [ev.event_id for (ev, _), f in zip(ready, futures, strict=False)
                     if f.done() and not f.cancelled() and f.exception() is None]
        svc.metrics.events_out.inc(n=len(delivered))
        svc.metrics.errors.inc("collector_publish")
        return _retry_later({"error": f"Kafka did not confirm delivery within {PUBLISH_TIMEOUT_S:.0f} s; retry the "
                                      f"request (the same events, same event_id) after {RETRY_AFTER_S} s",
                             "delivered": delivered})
    for i, result in enumerate(results):
        if isinstance(result, BaseException):
            failed[i] = result
    if not failed:
        svc.metrics.events_out.inc(n=len(ready))
        return _answer(status, {**(extra or {}), "accepted": len(ready),
                                "event_ids": [ev.event_id for ev, _ in ready]})
    delivered = [ev.event_id for i, (ev, _) in enumerate(ready[:len(futures)]) if i not in failed]
    svc.metrics.events_out.inc(n=len(delivered))
    permanent = {i: exc for i, exc in failed.items() if isinstance(exc, PERMANENT_KAFKA_ERRORS)}
    if permanent:
        svc.metrics.errors.inc("collector_publish_refused")
        return _answer(422, {"accepted": len(delivered), "delivered": delivered, "errors": [
            _error(i, items[i], f"event: Kafka refused it for good ({type(exc).__name__}); do not retry as is")
            for i, exc in sorted(permanent.items())]})
    svc.metrics.errors.inc("collector_publish")
    first = next(iter(failed.values()))
    return _retry_later({"error": f"Kafka did not confirm delivery: {first!r}; retry the request (the same "
                                  f"events, same event_id) after {RETRY_AFTER_S} s", "delivered": delivered})
