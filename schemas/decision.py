"""The decision record: what serving decided, as published on the ``decisions`` topic.

The contract is ``schemas/json/decision.v1.schema.json``. Besides the schema, a record must be
internally consistent: every shown action is one of the ``candidates``.

>>> record = {
...     "decision_id": "d-1", "customer_id": "c-1", "placement": "home_hero",
...     "context": {"recency_s": 12.0, "views_7d": 3},
...     "candidates": ["a-1", "a-2"], "actions": [{"action_id": "a-2", "score": 0.8}],
...     "propensity": 0.9, "policy": "linucb", "model_version": "home_hero-42",
...     "holdout_arm": "learning", "degraded": False, "timestamp": 1714564800000,
... }
>>> validate_decision(record)
>>> validate_decision({**record, "propensity": 0})
Traceback (most recent call last):
    ...
schemas.InvalidEvent: propensity: must be > 0, got 0
"""

from __future__ import annotations

from typing import Any

from fastjsonschema import JsonSchemaValueException

from schemas._validation import InvalidEvent, compile_schema, json_type, reason_from

__all__ = ["DECISION_SCHEMA", "validate_decision"]

#: File name of the decision record schema in ``schemas/json/``.
DECISION_SCHEMA = "decision.v1.schema.json"

# use_default=False: validating must not modify the caller's record.
_VALIDATE = compile_schema(DECISION_SCHEMA, use_default=False)


def validate_decision(record: dict[str, Any]) -> None:
    """Raise :class:`InvalidEvent` (with a precise ``reason``) unless ``record`` is a valid decision.

    >>> validate_decision({"decision_id": "d-1"})
    Traceback (most recent call last):
        ...
    schemas.InvalidEvent: anonymous_id or customer_id: at least one is required (a non-empty string)
    """
    if type(record) is not dict:
        raise InvalidEvent(f"decision: must be an object, got {json_type(record)}")
    try:
        _VALIDATE(record)
    except JsonSchemaValueException as exc:
        decision_id = record.get("decision_id")
        raise InvalidEvent(reason_from(exc), event_id=decision_id if type(decision_id) is str else None) from None
    candidates = set(record["candidates"])
    for index, action in enumerate(record["actions"]):
        if action["action_id"] not in candidates:
            raise InvalidEvent(
                f"actions[{index}].action_id: {action['action_id']!r} is not among candidates",
                event_id=record["decision_id"],
            )
