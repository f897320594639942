"""The Segment/RudderStack HTTP API: ``POST /v1/batch``, ``/v1/track``, ``/v1/page``, ``/v1/identify``,
``/v1/screen``, ``/v1/alias`` and ``/v1/group``, as the Segment and RudderStack SDKs send them, so that a site
switches to pulse by changing its SDK's host (docs/segment.md).

The write key is the HTTP Basic user (what the server SDKs send), or ``writeKey`` in the body (what
analytics.js sends, as ``text/plain`` to spare a CORS preflight); a public key gives the browser trust level,
a server key the server level, as on ``POST /v1/events`` (``engine/trust.py``). A body may be gzipped
(``Content-Encoding: gzip``, the RudderStack SDKs' default).

What the door refuses, with a 4xx that says why (``code`` and ``message``, the members the SDKs read): a body
over ``COLLECTOR_MAX_BODY_BYTES`` read or once decompressed (413), another content encoding (415), a body
that is not JSON or not calls, or more than ``max_events_per_request`` messages (400). A message is never
refused: each is mapped (``schemas/segment.py``: the e-commerce spec's names onto the Pulse types, any other
track name kept as a generic ``track`` event), and one that is malformed, over the bounds of
``schemas/limits.py``, or of a type its key may not send (a browser's Order Completed) is dead-lettered with
the reason (the events' dead-letter topic, ``dlq.stage`` = ``api``) and listed in the answer: a batch is
never failed for one message, and a resend of a batch would fail the same way. The answer is 200
``{"success": true, ...}``, or 503 with ``Retry-After`` when Kafka does not confirm (the SDKs retry; the
stream applies an event delivered twice once).

``receivedAt`` is this server's clock; with the message's ``sentAt`` (else the batch's) it corrects the
client's clock (``schemas.segment.corrected_timestamp``). A message without ``messageId`` gets one derived
from its content, so that an SDK's retry is de-duplicated.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from engine import trust
from schemas.events import InvalidEvent, dumps_event, parse_event
from schemas.limits import EventLimits, check_event
from serving import auth, collector
from serving.asgi import BodyTooLarge, read_limited
from serving.services import Services

router = APIRouter()
#: path -> the Segment call its body is (``None``: a batch of calls, each with its ``type``)
ROUTES: dict[str, str | None] = {"/v1/batch": None, "/v1/track": "track", "/v1/page": "page",
                                 "/v1/identify": "identify", "/v1/screen": "screen", "/v1/alias": "alias",
                                 "/v1/group": "group"}
#: ``dlq.stage`` of what this door dead-letters (the worker's stages are validate, prepare, apply...)
STAGE = "api"


class DoorError(Exception):
    """The request as a whole cannot be taken: its status and why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(slots=True)
class Body:
    """The decoded body, read once by the key guard (the key may be in it) and used by the route."""

    value: Any = None
    error: DoorError | None = None


def decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding``; never more than ``limit`` bytes are inflated.

    >>> import gzip
    >>> decompress(gzip.compress(b'{"batch": []}'), "gzip", 100)
    b'{"batch": []}'
    >>> decompress(gzip.compress(b"x" * 1000), "gzip", 100)
    Traceback (most recent call last):
        ...
    serving.segment_api.DoorError: body: larger than 100 bytes once decompressed (COLLECTOR_MAX_BODY_BYTES)
    >>> decompress(b"abc", "br", 100)
    Traceback (most recent call last):
        ...
    serving.segment_api.DoorError: Content-Encoding: br is not supported (gzip, deflate or identity)
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise DoorError(415, "unsupported_encoding",
                        f"Content-Encoding: {encoding} is not supported (gzip, deflate or identity)")
    # gzip: a gzip header; deflate: a zlib stream (RFC 9110), which 32 + MAX_WBITS also detects
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding != "deflate" else 32 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise DoorError(400, "invalid_encoding", f"body: not valid {encoding} ({exc})") from None
    if len(out) > limit:
        raise DoorError(413, "body_too_large",
                        f"body: larger than {limit} bytes once decompressed (COLLECTOR_MAX_BODY_BYTES)")
    if not inflater.eof:
        raise DoorError(400, "invalid_encoding", f"body: truncated {encoding} stream")
    return out


async def read(request: Request, limits: EventLimits) -> Body:
    """Read, inflate and decode the body within the bounds; the error is kept for the route to answer."""
    try:
        raw = await read_limited(request.scope, request.receive, limits.max_body_bytes)
    except BodyTooLarge as exc:
        return Body(error=DoorError(413, "body_too_large", f"{exc} (COLLECTOR_MAX_BODY_BYTES)"))
    try:
        raw = decompress(raw, request.headers.get("content-encoding", ""), limits.max_body_bytes)
        return Body(orjson.loads(raw))
    except DoorError as exc:
        return Body(error=exc)
    except orjson.JSONDecodeError as exc:
        return Body(error=DoorError(400, "invalid_json", f"body: not valid JSON ({exc})"))


class WriteKeyGuard(auth.Guard):
    """A public key or higher, from ``Authorization`` or else from the body's ``writeKey``."""

    def __init__(self) -> None:
        super().__init__(auth.PUBLIC)

    async def __call__(self, request: Request) -> auth.ApiKey | None:
        svc: Services = request.app.state.services
        body = request.state.segment_body = await read(request, svc.settings.event_limits)
        if request.headers.get("authorization"):
            return await super().__call__(request)
        key = body.value.get("writeKey") if isinstance(body.value, dict) else None
        presented = "Basic " + base64.b64encode(f"{key}:".encode()).decode() if isinstance(key, str) and key else None
        ring: auth.KeyRing = request.app.state.keyring
        result = ring.check(presented, request.headers.get("origin"), self.role)
        if isinstance(result, auth.Denial):
            raise auth.AuthError(result)
        return result


WriteKeyCaller = Annotated[auth.ApiKey | None, Depends(WriteKeyGuard())]


def messages_of(body: Any, call: str | None, limits: EventLimits) -> list[Any]:
    """The messages of a decoded body: a batch's, or the one call of a single-call route (its ``type`` set
    from the route). The batch's ``context`` and ``integrations`` are each message's defaults.

    >>> from schemas.limits import DEFAULT_LIMITS
    >>> messages_of({"batch": [{"type": "page", "context": {"ip": "1"}}], "context": {"locale": "en"}},
    ...             None, DEFAULT_LIMITS)
    [{'type': 'page', 'context': {'locale': 'en', 'ip': '1'}}]
    >>> messages_of({"event": "Signed Up", "type": "page"}, "track", DEFAULT_LIMITS)
    [{'event': 'Signed Up', 'type': 'track'}]
    >>> messages_of([], "track", DEFAULT_LIMITS)
    Traceback (most recent call last):
        ...
    serving.segment_api.DoorError: body: a track call is a JSON object, got a list
    """
    if call is not None:
        if not isinstance(body, dict):
            raise DoorError(400, "invalid_request", f"body: a {call} call is a JSON object, got {_kind(body)}")
        return [{**body, "type": call}]
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise DoorError(400, "invalid_request", f"body: a batch is a JSON object with a list named batch, got "
                                                f"{_kind(body)}")
    items = body["batch"]
    if len(items) > limits.max_events_per_request:
        raise DoorError(400, "too_many_messages", f"batch: at most {limits.max_events_per_request} messages per "
                                                  f"request, got {len(items)}")
    shared = {k: body[k] for k in ("context", "integrations") if isinstance(body.get(k), dict)}
    if not shared:
        return list(items)
    out = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            for k, v in shared.items():
                own = item.get(k)
                item[k] = {**v, **own} if isinstance(own, dict) else (v if own is None else own)
        out.append(item)
    return out


def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), "a " + type(value).__name__)


def iso(ts: float) -> str:
    """An RFC 3339 UTC time with milliseconds, as Segment writes ``receivedAt``.

    >>> iso(1714564800.25)
    '2024-05-01T12:00:00.250Z'
    """
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamped(message: dict[str, Any], sent_at: Any, received_at: str) -> dict[str, Any]:
    """The message with what the door adds: a ``messageId`` from its content if it has none (a retry of the
    same message gets the same one), the batch's ``sentAt`` if it has none, and ``receivedAt``.

    >>> m = stamped({"type": "page", "anonymousId": "a"}, "2024-05-01T12:00:00Z", "2024-05-01T12:00:01Z")
    >>> m["messageId"][:6], m["sentAt"], m["receivedAt"]
    ('pulse-', '2024-05-01T12:00:00Z', '2024-05-01T12:00:01Z')
    """
    out = dict(message)
    if out.get("messageId") is None:
        digest = hashlib.sha256(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()
        out["messageId"] = f"pulse-{digest[:32]}"
    if out.get("sentAt") is None and sent_at is not None:
        out["sentAt"] = sent_at
    out["receivedAt"] = received_at
    return out


@dataclass(slots=True)
class Sorted:
    """The messages of a request: those to publish (event, bytes) and those to dead-letter (why)."""

    ready: list[tuple[Any, bytes]]
    #: the message (as stamped) of each of ``ready``
    ready_messages: list[dict[str, Any]]
    #: (index in the request, message as stamped, reason)
    dead: list[tuple[int, Any, str]]


def sort_messages(messages: list[Any], sent_at: Any, caller: auth.ApiKey | None, limits: EventLimits,
                  now: float) -> Sorted:
    """Map and check each message: published, or dead-lettered with the reason (never the request refused)."""
    out = Sorted([], [], [])
    received_at = iso(now)
    public = caller.name if caller is not None and not caller.allows(auth.SERVER) else None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.dead.append((i, message, f"message: must be a JSON object, got {_kind(message)}"))
            continue
        message = stamped(message, sent_at, received_at)
        try:
            ev = parse_event(message)
            value = dumps_event(ev)
            check_event(ev, len(value), now, limits)
        except InvalidEvent as exc:
            out.dead.append((i, message, exc.reason))
            continue
        if public is not None and ev.type not in trust.PUBLIC_EVENT_TYPES:
            out.dead.append((i, message, f"type: a {ev.type} needs a server key; key {public!r} is public "
                                         f"(it may send {', '.join(sorted(trust.PUBLIC_EVENT_TYPES))})"))
            continue
        out.ready.append((ev, value))
        out.ready_messages.append(message)
    return out


def _visitor_key(message: Any) -> bytes | None:
    if isinstance(message, dict):
        for k in ("userId", "anonymousId", "previousId"):
            v = message.get(k)
            if isinstance(v, str | int) and not isinstance(v, bool):
                return str(v).encode()
    return None


async def dead_letter(svc: Services, path: str, dead: list[tuple[int, Any, str]],
                      headers: list[tuple[str, bytes]]) -> None:
    """Publish each refused message (as stamped: a replay through ``/v1/events`` maps it the same way) to the
    dead-letter topic with why, where and who; raises ``TimeoutError`` when Kafka does not confirm."""
    source = f"api:{path}".encode()
    async with asyncio.timeout(collector.PUBLISH_TIMEOUT_S):
        futures = [await svc.producer.send(svc.settings.dlq_topic, value=orjson.dumps(message),
                                           key=_visitor_key(message),
                                           headers=[("dlq.reason", reason[:1000].encode()),
                                                    ("dlq.stage", STAGE.encode()), ("dlq.source", source),
                                                    *headers])
                   for _, message, reason in dead]
        await asyncio.gather(*(asyncio.shield(f) for f in futures))


def _error(exc: DoorError) -> Response:
    message = str(exc)
    return Response(orjson.dumps({"success": False, "code": exc.code, "message": message, "error": message}),
                    status_code=exc.status, media_type="application/json")


async def take(request: Request, caller: auth.ApiKey | None, call: str | None) -> Response:
    svc: Services = request.app.state.services
    limits = svc.settings.event_limits
    body: Body = request.state.segment_body
    try:
        if body.error is not None:
            raise body.error
        messages = messages_of(body.value, call, limits)
    except DoorError as exc:
        if exc.status == 413:
            svc.metrics.errors.inc("collector_body_too_large")
        return _error(exc)
    svc.metrics.events_in.inc(n=len(messages))
    sent_at = body.value.get("sentAt") if call is None else None
    result = sort_messages(messages, sent_at, caller, limits, time.time())
    headers = auth.source_headers(caller)
    dead = [{"index": i, "message_id": m.get("messageId") if isinstance(m, dict) else None, "reason": reason}
            for i, m, reason in result.dead]
    if result.dead:
        svc.metrics.events_rejected.inc(n=len(result.dead))
        try:
            await dead_letter(svc, request.url.path, result.dead, headers)
        except Exception as exc:  # nothing valid was published yet: the whole request may be resent
            svc.metrics.errors.inc("segment_dead_letter")
            return collector._retry_later({"error": f"Kafka did not confirm the dead letters ({exc!r}); retry the "
                                                    f"request after {collector.RETRY_AFTER_S} s", "delivered": []})
    extra = {"success": True, "dead_lettered": dead}
    if not result.ready:
        return Response(orjson.dumps({**extra, "accepted": 0, "event_ids": []}), media_type="application/json")
    return await collector.publish(svc, result.ready_messages, result.ready, headers, status=200, extra=extra)


def _route(call: str | None) -> Any:
    async def route(request: Request, caller: WriteKeyCaller) -> Response:
        return await take(request, caller, call)

    route.__name__ = f"segment_{call or 'batch'}"
    return route


for _path, _call in ROUTES.items():
    router.add_api_route(_path, _route(_call), methods=["POST"], status_code=200,
                         summary=f"Segment/RudderStack {_call or 'batch'} call", tags=["segment"])


def document(doc: dict[str, Any], limits: EventLimits) -> None:
    """The OpenAPI operations of these routes: each body (a message is any object: one that is malformed is
    dead-lettered, never refused) and every answer (``serving/openapi_doc.py`` calls this)."""
    error = {"application/json": {"schema": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "error": {"type": "string"}}}}}
    auth_error = {"application/json": {"schema": {"type": "object", "required": ["error"],
                                                  "properties": {"error": {"type": "string"}}}}}
    ok = {"application/json": {"schema": {"type": "object", "required": ["success", "accepted", "dead_lettered"],
                                          "properties": {
        "success": {"const": True}, "accepted": {"type": "integer"},
        "event_ids": {"type": "array", "items": {"type": "string"}},
        "dead_lettered": {"type": "array", "items": {"type": "object", "required": ["index", "reason"],
                                                     "properties": {"index": {"type": "integer"},
                                                                    "message_id": {},
                                                                    "reason": {"type": "string"}}}}}}}}
    responses = {
        "200": {"description": "taken: the events delivered to Kafka, the malformed or refused messages "
                               "dead-lettered (listed with why)", "content": ok},
        "400": {"description": "body not JSON, not calls, or more than "
                               f"{limits.max_events_per_request} messages", "content": error},
        "401": {"description": "no write key, or an unknown one", "content": auth_error},
        "403": {"description": "the key's origins do not list the page's Origin", "content": auth_error},
        "413": {"description": f"body larger than {limits.max_body_bytes} bytes, read or once decompressed "
                               "(COLLECTOR_MAX_BODY_BYTES)", "content": error},
        "415": {"description": "a Content-Encoding other than gzip, deflate or identity", "content": error},
        "422": {"description": "Kafka refused an event for good (too large); the delivered ones are listed",
                "content": {"application/json": {"schema": {"type": "object"}}}},
        "503": {"description": "Kafka did not confirm delivery; retry (events are de-duplicated by messageId)",
                "content": {"application/json": {"schema": {"type": "object"}}}},
    }
    message = {"type": "object", "description": "A Segment call (docs/segment.md): messageId, anonymousId "
               "or userId, timestamp, context, properties/traits..."}
    for path, call in ROUTES.items():
        op = doc.get("paths", {}).get(path, {}).get("post")
        if op is None:
            raise KeyError(f"POST {path} is not served")
        op["responses"] = responses
        schema = message if call is not None else {
            "type": "object", "required": ["batch"],
            "properties": {"batch": {"type": "array", "maxItems": limits.max_events_per_request,
                                     # a call is an object; anything else is dead-lettered, never refused
                                     "items": {"description": message["description"]}},
                           "sentAt": {}, "context": {}, "integrations": {},
                           # the key when no Authorization header is sent; ignored (whatever it is) otherwise
                           "writeKey": {}}}
        op["requestBody"] = {"required": True, "description": (
            f"At most {limits.max_body_bytes} bytes (gzip allowed). The write key as HTTP Basic user, or "
            "writeKey in the body."), "content": {"application/json": {"schema": schema}}}
