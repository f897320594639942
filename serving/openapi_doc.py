"""The OpenAPI description the API serves, made truthful: every status each operation can answer, the media
type of each answer, and the request bodies with the bounds the code enforces.

The routes declare what FastAPI can infer; :func:`document` then sets, per operation, the full list of
responses (FastAPI would document a 422 "validation error" no route here returns, and no 404 or 413), the
events body as the project's own event schemas (``schemas/json/``, refs inlined) with the limits of
``schemas/limits.py``, and the decide body with the configuration's placements and action ids.
``tests/integration/test_schemathesis.py`` holds the API to it.
"""

from __future__ import annotations

from typing import Any

from engine.config import EngineConfig
from schemas._validation import inline_refs
from schemas.events import EVENT_TYPES
from schemas.limits import EventLimits
from serving import segment_api
from serving.admin import documented_responses
from serving.collector import BATCH_MEMBERS
from serving.decide import document_decide

_ERROR = {"application/json": {"schema": {"type": "object", "required": ["error"],
                                          "properties": {"error": {"type": "string"}}}}}
_REFUSED_EVENTS = {"application/json": {"schema": {
    "type": "object", "required": ["errors"],
    "properties": {"accepted": {"type": "integer"}, "delivered": {"type": "array", "items": {"type": "string"}},
                   "errors": {"type": "array", "items": {
                       "type": "object", "required": ["index", "field", "reason"],
                       "properties": {"index": {"type": "integer"}, "event_id": {"type": ["string", "null"]},
                                      "field": {"type": "string"}, "reason": {"type": "string"}}}}}}}}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}


def _r(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if content is not None:
        out["content"] = content
    return out


_AUTH = {"401": _r("no API key, or an unknown one", _ERROR),
         "403": _r("the key's role is too low, or its origins do not list the page's Origin", _ERROR)}


def _responses(config: EngineConfig, limits: EventLimits) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("get", "/healthz"): {"200": _r("alive", _JSON_OBJECT)},
        ("get", "/readyz"): {"200": _r("Kafka and Redis reachable", _JSON_OBJECT),
                             "503": _r("Kafka or Redis unreachable", _JSON_OBJECT)},
        ("get", "/metrics"): {"200": _r("Prometheus text exposition format",
                                        {"text/plain": {"schema": {"type": "string"}}}), **_AUTH},
        ("get", "/v1/profiles/{person_id}"): {"200": _r("the profile", _JSON_OBJECT),
                                               "404": _r("no profile for this id", _ERROR), **_AUTH},
        ("get", "/v1/profiles/{person_id}/export"): {
            "200": _r("everything held about the person", _JSON_OBJECT),
            "404": _r("nothing is held for this id (the empty document, with an error)", _JSON_OBJECT), **_AUTH},
        ("delete", "/v1/profiles/{person_id}"): {
            "200": _r("erased (erasing an unknown id is harmless)", _JSON_OBJECT),
            "503": _r("erased, but Kafka did not confirm the learner's erasure request; repeat", _JSON_OBJECT),
            **_AUTH},
        ("get", "/v1/experiments/{placement}"): {"200": _r("per-arm counters", _JSON_OBJECT),
                                                  "404": _r("unknown placement", _ERROR), **_AUTH},
        ("get", "/v1/reports/attribution"): {"200": _r("attribution by action, channel, placement", _JSON_OBJECT),
                                              **_AUTH},
        ("get", "/v1/reports/summary"): {"200": _r("what the dashboard shows", _JSON_OBJECT), **_AUTH},
        ("post", "/v1/events"): {
            "202": _r("all events delivered to Kafka", {"application/json": {"schema": {
                "type": "object", "required": ["accepted", "event_ids"],
                "properties": {"accepted": {"type": "integer"},
                               "event_ids": {"type": "array", "items": {"type": "string"}}}}}}),
            "400": _r(f"body not JSON, not events, or more than {limits.max_events_per_request} events", _ERROR),
            **_AUTH,
            "413": _r(f"body larger than COLLECTOR_MAX_BODY_BYTES (default {limits.max_body_bytes} bytes), refused "
                      "while read; none were published", _ERROR),
            "422": _r("some events are invalid: index, field and reason of each; none were published (or Kafka "
                      "refused one for good, too large: the delivered ones are listed)", _REFUSED_EVENTS),
            "503": _r("Kafka did not confirm delivery; retry (events are de-duplicated by event_id)", _ERROR),
        },
        **documented_responses(_r, _AUTH, _ERROR, _JSON_OBJECT),  # the catalogue's admin API
        ("get", "/v1/admin/clusters"): {"200": _r("the behavioural clusters described", _JSON_OBJECT), **_AUTH},
    }


def events_body_schema(limits: EventLimits) -> tuple[dict[str, Any], dict[str, Any]]:
    """``POST /v1/events``: an event, a list of them, or a Segment-style batch; and the list's schema."""
    event = {"oneOf": [{"$ref": f"#/components/schemas/event_{t}"} for t in EVENT_TYPES]}
    events = {"type": "array", "minItems": 1, "maxItems": limits.max_events_per_request, "items": event}
    batch = {"type": "object", "required": ["batch"], "additionalProperties": False,
             "properties": {m: ({"$ref": "#/components/schemas/events"} if m == "batch" else {})
                            for m in sorted(BATCH_MEMBERS)}}
    return {"oneOf": [event, {"$ref": "#/components/schemas/events"}, batch]}, events


def document(doc: dict[str, Any], config: EngineConfig, limits: EventLimits) -> dict[str, Any]:
    """Set every operation's responses, and the events and decide request bodies, in ``doc`` (returned)."""
    paths = doc.get("paths", {})
    documented = _responses(config, limits)
    for path, item in paths.items():  # the rest: what FastAPI inferred, without its unreachable 422
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op and (method, path) not in documented:
                op["responses"].pop("422", None)
    for (method, path), responses in documented.items():
        op = paths.get(path, {}).get(method)
        if op is None:  # a route renamed here but not in the app: its real statuses would go undocumented
            raise KeyError(f"responses documented for {method.upper()} {path}, which the app does not serve")
        op["responses"] = responses
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    body, events = events_body_schema(limits)
    schemas["events"] = events
    for t in EVENT_TYPES:
        schemas[f"event_{t}"] = inline_refs(f"{t}.v1.schema.json")
    op = paths.get("/v1/events", {}).get("post")
    if op is not None:
        op["requestBody"] = {
            "required": True,
            "description": (
                "One event, a list of events, or a Segment-style batch {\"batch\": [...]}, at most "
                f"{limits.max_body_bytes} bytes and {limits.max_events_per_request} events. Each event follows "
                "its schema (schemas/json/), is at most "
                f"{limits.max_event_bytes} bytes once serialised, and its timestamp is at most "
                f"{limits.max_future_s:.0f} s after the server's clock (EVENT_MAX_FUTURE_S): the limits that "
                "no JSON Schema can state (docs/limits.md). Segment track/page/identify payloads (recognised by "
                "messageId, or anonymousId/userId) are also accepted and mapped onto these schemas."),
            "content": {"application/json": {"schema": body}},
        }
    document_decide(doc, config)
    segment_api.document(doc, limits)  # the Segment/RudderStack routes
    return doc
