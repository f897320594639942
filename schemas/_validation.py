"""Loading and compiling the JSON Schema files, and turning validation errors into precise reasons.

Private module: import the public names from :mod:`schemas`.

The JSON files in ``schemas/json/`` are the contract. They reference each other by ``$id``
(``https://schemas.pulse.example/<file>``); :func:`compile_schema` inlines those references from
the local files, so compiling never touches the network.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import fastjsonschema
import orjson
from fastjsonschema import JsonSchemaValueException

SCHEMA_DIR = Path(__file__).resolve().parent / "json"
BASE_URI = "https://schemas.pulse.example/"
ENVELOPE_SCHEMA = "envelope.v1.schema.json"

Validator = Callable[[Any], Any]


class InvalidEvent(ValueError):
    """An event (or decision record) that does not follow its schema.

    ``reason`` is human readable and names the offending field first, e.g.
    ``"properties.item_id: is required for add_to_cart"``. ``event_id`` is set when the payload
    carried one, so dead-letter records can be traced back to the producer.

    >>> err = InvalidEvent("timestamp: is required", event_id="e-1")
    >>> err.reason, err.event_id, str(err)
    ('timestamp: is required', 'e-1', 'timestamp: is required')
    """

    def __init__(self, reason: str, *, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id

    def __reduce__(self) -> tuple[Any, ...]:
        return _make_invalid_event, (self.reason, self.event_id)


def _make_invalid_event(reason: str, event_id: str | None) -> InvalidEvent:
    return InvalidEvent(reason, event_id=event_id)


# Public home of the class (re-exported by the package): reprs, tracebacks and pickles say
# ``schemas.InvalidEvent``.
InvalidEvent.__module__ = "schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed JSON Schema file ``schemas/json/<name>`` (cached; do not mutate it).

    >>> load_schema("envelope.v1.schema.json")["$id"]
    'https://schemas.pulse.example/envelope.v1.schema.json'
    """
    path = SCHEMA_DIR / name
    if path.parent != SCHEMA_DIR or not path.is_file():
        raise FileNotFoundError(f"no schema file named {name!r} in {SCHEMA_DIR}")
    schema: dict[str, Any] = orjson.loads(path.read_bytes())
    return schema


def _resolve_ref(uri: str) -> dict[str, Any]:
    """fastjsonschema ``handlers`` hook: map our schema ids onto the local files, refuse the rest."""
    if not uri.startswith(BASE_URI):
        raise ValueError(f"refusing to resolve $ref outside {BASE_URI}: {uri}")
    return load_schema(uri[len(BASE_URI) :])


def inline_refs(name: str) -> dict[str, Any]:
    """``schemas/json/<name>`` with every ``$ref`` replaced by the schema it points to.

    Our schemas are not recursive, so this terminates. Inlining lets fastjsonschema generate one
    flat function instead of one call per reference, which is measurably faster per event.
    Annotations next to a ``$ref`` (``description``) are dropped, as draft-07 ignores them.
    """
    inlined: dict[str, Any] = _inline(load_schema(name), BASE_URI + name, 0)
    return inlined


def _inline(node: Any, base: str, depth: int) -> Any:
    if depth > 32:
        raise ValueError(f"$ref nesting too deep (recursive schema?) under {base}")
    if isinstance(node, list):
        return [_inline(item, base, depth) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        document_uri, _, fragment = urljoin(base, ref).partition("#")
        target: Any = _resolve_ref(document_uri)
        for part in filter(None, fragment.split("/")):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return _inline(target, document_uri, depth + 1)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$id", "$schema", "definitions"):
            continue
        if key in ("properties", "patternProperties") and isinstance(value, dict):
            out[key] = {prop: _inline(sub, base, depth) for prop, sub in value.items()}
        elif key in ("enum", "const", "default", "examples", "required"):
            out[key] = value
        else:
            out[key] = _inline(value, base, depth)
    return out


def compile_schema(name: str, *, use_default: bool = True) -> Validator:
    """Compile ``schemas/json/<name>`` with fastjsonschema, ``$ref`` inlined from the local files.

    ``use_default=True`` makes the validator fill in ``default`` values in place. ``format`` is
    documentation only here: formats that matter (the timestamp) are also enforced by ``pattern``.
    """
    return fastjsonschema.compile(
        inline_refs(name),
        handlers={"https": _resolve_ref, "http": _resolve_ref},
        use_default=use_default,
        use_formats=False,
    )


# --------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------

_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}

_INDEX_RE = re.compile(r"\[\d+\]")

# (field name, failed keyword) -> message, for the mistakes producers actually make.
_SPECIAL: dict[tuple[str, str], str] = {
    ("timestamp", "pattern"): (
        "not RFC3339 (expected a date-time with a timezone, from the year 2000, e.g. '2024-05-01T12:00:00Z') "
        "nor epoch milliseconds"
    ),
    ("timestamp", "maximum"): "must be epoch milliseconds before year 10000",
    ("currency", "pattern"): "must be a 3-letter upper-case ISO 4217 code such as 'EUR'",
    ("locale", "pattern"): "must be a BCP 47 language tag such as 'en-GB'",
    ("ip", "pattern"): "must be an IPv4 or IPv6 address",
}


def json_type(value: Any) -> str:
    """JSON type name of a decoded value (``'object'``, ``'array'``, ...)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def reason_from(
    exc: JsonSchemaValueException,
    *,
    subject: str | None = None,
    envelope_required: tuple[str, ...] = (),
) -> str:
    """Translate a fastjsonschema error into ``"<field path>: <what is wrong>"``.

    ``subject`` (the event type) is appended to "is required" messages that come from the
    type-specific schema: ``"properties.item_id: is required for add_to_cart"``.
    """
    name = exc.name or "data"
    path = name[5:] if name.startswith("data.") else ("" if name == "data" else name)
    field = _INDEX_RE.sub("", path).rsplit(".", 1)[-1]
    rule = exc.rule or ""
    value = exc.value
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    ruledef: Any = definition.get(rule)

    if rule == "required" and isinstance(value, dict):
        missing = next((k for k in ruledef if k not in value), ruledef[0])
        suffix = "" if (subject is None or (not path and missing in envelope_required)) else f" for {subject}"
        return f"{_join(path, missing)}: is required{suffix}"
    if rule == "anyOf" and not path and "anonymous_id" in str(definition.get("anyOf")):
        return "anonymous_id or customer_id: at least one is required (a non-empty string)"
    if rule == "anyOf" and isinstance(ruledef, list) and all(
            isinstance(b, dict) and len(b.get("required", ())) == 1 for b in ruledef):
        names = ", ".join(b["required"][0] for b in ruledef)
        return f"{path or 'event'}: at least one of {names} is required" + (f" for {subject}" if subject else "")
    if rule == "additionalProperties" and isinstance(value, dict):
        known = definition.get("properties", {})
        extra = sorted(k for k in value if k not in known)
        where = "top-level field" if not path else "field"
        hint = "; custom data belongs in properties or context" if not path else ""
        return f"{_join(path, ', '.join(extra) or '?')}: unknown {where}{hint}"

    label = path or "event"
    special = _SPECIAL.get((field, rule))
    if special:
        return f"{label}: {special}, got {_short(value)}"
    if rule == "type":
        expected = " or ".join(ruledef) if isinstance(ruledef, list) else ruledef
        return f"{label}: must be {expected}, got {json_type(value)}"
    if rule == "enum":
        if path == "type":
            return f"type: unknown event type {_short(value)} (expected one of: {', '.join(ruledef)})"
        return f"{label}: must be one of {', '.join(map(str, ruledef))}, got {_short(value)}"
    if rule == "const":
        return f"{label}: must be {ruledef!r}, got {_short(value)}"
    if rule == "minimum":
        if field == "timestamp":
            if 1e8 <= value < 1e11:
                return f"timestamp: must be epoch milliseconds, {value!r} looks like epoch seconds (x1000)"
            return f"timestamp: must be epoch milliseconds >= {ruledef} (2000-01-01), got {_short(value)}"
        return f"{label}: must be >= {ruledef}, got {_short(value)}"
    if rule == "exclusiveMinimum":
        return f"{label}: must be > {ruledef}, got {_short(value)}"
    if rule == "maximum":
        return f"{label}: must be <= {ruledef}, got {_short(value)}"
    if rule == "minLength":
        if ruledef == 1:
            return f"{label}: must not be empty"
        return f"{label}: must be at least {ruledef} characters"
    if rule == "maxLength":
        return f"{label}: must be at most {ruledef} characters, got {len(value)}"
    if rule == "pattern":
        return f"{label}: must match {ruledef}, got {_short(value)}"
    if rule == "minItems":
        return f"{label}: must have at least {ruledef} item(s)"
    if rule == "maxItems":
        return f"{label}: must have at most {ruledef} items, got {len(value)}"
    if rule == "uniqueItems":
        return f"{label}: items must be unique"
    # Anything else: fastjsonschema's own message, with our path instead of "data...".
    message = exc.message
    if message.startswith(name):
        message = message[len(name) :].strip()
    return f"{label}: {message}"
