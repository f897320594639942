"""Idempotent aiokafka producers that survive a Kafka outage longer than their request timeout.

aiokafka (0.14) never expires an idempotent producer's batch while it is being retried, except in one
place: a batch still queued for a partition whose leader is unknown (the broker away, or just restarted and
electing leaders) fails with ``LeaderNotAvailableError`` once older than ``request_timeout_ms`` - and is
given a sequence number on its way out. The broker never saw that sequence, so every later batch of the
partition is refused with ``OutOfOrderSequenceNumber``, for good: after an outage of more than
``request_timeout_ms`` (10 s in the API) the collector answered 503 to every request until the API was
restarted, and the worker could no longer send a learning example (``tests/integration/test_chaos.py``).

:func:`keep_batches_until_delivered` makes such batches wait for the leader as every other batch of an
idempotent producer does; callers bound their own wait (the collector answers 503 with ``Retry-After``, the
worker pauses), and a batch delivered after its caller gave up is de-duplicated downstream (event ids,
decision ids).

>>> from aiokafka import AIOKafkaProducer
>>> async def made() -> float:
...     producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", enable_idempotence=True)
...     return keep_batches_until_delivered(producer)._message_accumulator._batch_ttl
>>> import asyncio; asyncio.run(made())
inf
"""

from __future__ import annotations

from typing import Any, TypeVar

P = TypeVar("P")


def keep_batches_until_delivered(producer: P) -> P:
    """Never fail a queued batch for its age (see the module docstring); returns ``producer``."""
    accumulator: Any = getattr(producer, "_message_accumulator", None)
    if accumulator is None or not hasattr(accumulator, "_batch_ttl"):  # an aiokafka that changed: fail loudly
        raise RuntimeError("aiokafka's MessageAccumulator has no _batch_ttl: check keep_batches_until_delivered")
    accumulator._batch_ttl = float("inf")
    return producer
