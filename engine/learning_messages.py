"""The messages of the ``learning`` topic other than settled decisions, built in one place for both sides.

The topic is the learner's only input (so an erasure is ordered with the interactions before it). Its
contract is ``schemas/json/learning.v1.schema.json``: a settled decision carries no ``kind``
(``streams.rewards.learning_example``), the two others say theirs.

>>> interactions_message([["anon-1", "sku-1", 0.5, 1714564800.0]])
b'{"kind":"interactions","rows":[["anon-1","sku-1",0.5,1714564800.0]]}'
>>> forget_message(["cust-1", "anon-1"])
b'{"kind":"forget","visitors":["cust-1","anon-1"]}'
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

__all__ = ["FORGET", "INTERACTIONS", "PROFILES", "forget_message", "interactions_message", "profiles_message"]

#: ``kind`` of a batch of co-visitation interactions: ``rows`` of ``[visitor, item, weight, epoch seconds]``.
INTERACTIONS = "interactions"
#: ``kind`` of an erasure's request to drop the histories held under ``visitors``.
FORGET = "forget"
#: ``kind`` of a batch of profile vectors for the behavioural clusters: ``rows`` of ``[vector, monetary value]``.
PROFILES = "profiles"


def interactions_message(rows: Sequence[Sequence[object]]) -> bytes:
    return orjson.dumps({"kind": INTERACTIONS, "rows": rows})


def forget_message(visitors: Sequence[str]) -> bytes:
    return orjson.dumps({"kind": FORGET, "visitors": visitors})


def profiles_message(rows: Sequence[Sequence[object]]) -> bytes:
    """
    >>> profiles_message([[{"log_click": 0.2}, 0.0]])
    b'{"kind":"profiles","rows":[[{"log_click":0.2},0.0]]}'
    """
    return orjson.dumps({"kind": PROFILES, "rows": rows})
