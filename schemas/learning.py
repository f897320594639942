"""The ``learning`` topic's messages: settled decisions, co-visitation interactions, forget requests.

The contract is ``schemas/json/learning.v1.schema.json`` (one of ``learning_example``,
``learning_interactions``, ``learning_forget``); producers are ``streams.rewards.learning_example`` and
:mod:`engine.learning_messages`. The learner trusts the topic (only the project writes it): this check is
for tests and for producers written elsewhere.

>>> validate_learning_message({"kind": "forget", "visitors": ["cust-1"]})
'forget'
>>> validate_learning_message({"kind": "forget", "visitors": "cust-1"})
Traceback (most recent call last):
    ...
schemas.InvalidEvent: learning message: visitors: must be array, got string
"""

from __future__ import annotations

from typing import Any

from fastjsonschema import JsonSchemaValueException

from schemas._validation import InvalidEvent, compile_schema, json_type, reason_from

__all__ = ["LEARNING_SCHEMA", "LEARNING_SCHEMAS", "validate_learning_message"]

LEARNING_SCHEMA = "learning.v1.schema.json"
#: ``kind`` (None: a settled decision) -> the schema of that message.
LEARNING_SCHEMAS: dict[str | None, str] = {
    None: "learning_example.v1.schema.json",
    "interactions": "learning_interactions.v1.schema.json",
    "forget": "learning_forget.v1.schema.json",
    "profiles": "learning_profiles.v1.schema.json",
}

_VALIDATE = {kind: compile_schema(name, use_default=False) for kind, name in LEARNING_SCHEMAS.items()}


def validate_learning_message(message: Any) -> str | None:
    """The message's ``kind`` (None for a settled decision), or :class:`InvalidEvent` saying what is wrong."""
    if type(message) is not dict:
        raise InvalidEvent(f"learning message: must be an object, got {json_type(message)}")
    kind = message.get("kind")
    validate = _VALIDATE.get(kind)
    if validate is None:
        raise InvalidEvent(f"learning message: kind: must be one of {sorted(k for k in _VALIDATE if k)} or absent, "
                           f"got {kind!r}")
    try:
        validate(message)
    except JsonSchemaValueException as exc:
        raise InvalidEvent(f"learning message: {reason_from(exc)}") from None
    return kind
