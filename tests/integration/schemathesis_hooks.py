"""Schemathesis hooks for ``test_schemathesis.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

One bound of the events body is relative to the server's clock, which no JSON Schema can state: a timestamp
at most ``EVENT_MAX_FUTURE_S`` after it (documented in the OpenAPI's description and docs/limits.md). A
generated timestamp later than that is moved to now before the request is sent; schemathesis then
re-validates the case, so a case stays positive or negative for what else it carries.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import schemathesis

from schemas import load_schema
from schemas.limits import DEFAULT_LIMITS

_RFC3339 = re.compile(load_schema("envelope.v1.schema.json")["definitions"]["timestamp"]["pattern"])


def _too_late(ts: Any, latest: float) -> bool:
    if isinstance(ts, bool):
        return False
    if isinstance(ts, int | float):
        return ts / 1000.0 > latest
    if isinstance(ts, str) and _RFC3339.match(ts):
        try:
            return datetime.fromisoformat(ts.upper()).timestamp() > latest
        except ValueError:
            return False
    return False


def _events(body: Any) -> list[Any]:
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        return list(body["batch"])
    return list(body) if isinstance(body, list) else [body]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    if case.operation.path != "/v1/events" or case.method.upper() != "POST":
        return
    now = time.time()
    latest = now + DEFAULT_LIMITS.max_future_s - 30  # margin: the request reaches the server a moment later
    for event in _events(case.body):
        if isinstance(event, dict) and _too_late(event.get("timestamp"), latest):
            event["timestamp"] = int(now * 1000)
