"""Create the project's Kafka topics, idempotently.

    python -m infra.topics                 # uses KAFKA_BOOTSTRAP, EVENTS_PARTITIONS, *_TOPIC env vars
    python -m infra.topics --bootstrap 127.0.0.1:19092 --partitions 4 events decisions

Topics: ``events`` (EVENTS_TOPIC), ``events.dlq`` (DLQ_TOPIC), ``decisions`` (DECISIONS_TOPIC),
``learning`` (LEARNING_TOPIC, training examples keyed by placement), ``segments`` (SEGMENTS_TOPIC, segment
entries and exits keyed by profile) and ``erasures`` (ERASURES_TOPIC: a tombstone per erased id,
``cleanup.policy=compact``), all with EVENTS_PARTITIONS partitions so one customer's events, dead letters and
decisions share a partition number. Existing
topics are left untouched (adding partitions later would remap keys to partitions); a partition-count
mismatch is reported as a warning. The connection's security comes from ``KAFKA_SECURITY_PROTOCOL`` and
``KAFKA_SASL_*`` like every client's (``engine.kafka_client``); creating topics needs a user the brokers
allow to (compose: ``admin``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from engine.kafka_client import kafka_client_kwargs

log = logging.getLogger("infra.topics")

DEFAULT_TOPIC_ENV = (
    ("EVENTS_TOPIC", "events"),
    ("DLQ_TOPIC", "events.dlq"),
    ("DECISIONS_TOPIC", "decisions"),
    ("LEARNING_TOPIC", "learning"),
    ("SEGMENTS_TOPIC", "segments"),
    ("ERASURES_TOPIC", "erasures"),
)
#: Topic configurations by the environment variable of the topic's name (others: the broker's defaults).
TOPIC_CONFIGS = {"ERASURES_TOPIC": {"cleanup.policy": "compact"}}


def topic_configs(name: str) -> dict[str, str]:
    """The configuration a topic is created with: ``erasures`` (or ERASURES_TOPIC, or a name starting with
    ``erasures``, as the tests' per-run names do) is compacted."""
    for var, default in DEFAULT_TOPIC_ENV:
        if var in TOPIC_CONFIGS and (name == os.environ.get(var, default) or name.startswith(default)):
            return dict(TOPIC_CONFIGS[var])
    return {}


def default_topic_names() -> list[str]:
    """Topic names from the same environment variables ``engine.settings`` reads."""
    return [os.environ.get(var, default) for var, default in DEFAULT_TOPIC_ENV]


async def _start_admin(bootstrap: str, connect_timeout: float, kafka_kwargs: Mapping[str, Any]) -> AIOKafkaAdminClient:
    deadline = time.monotonic() + connect_timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="pulse-topics", request_timeout_ms=15000,
                                    **kafka_kwargs)
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            if time.monotonic() >= deadline:
                raise
            log.info("kafka at %s not reachable yet, retrying", bootstrap)
            await asyncio.sleep(1.0)


async def ensure_topics(
    bootstrap: str,
    partitions: int,
    names: Sequence[str] | None = None,
    *,
    replication_factor: int = 1,
    connect_timeout: float = 60.0,
    kafka_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Create every topic in ``names`` (default: events, events.dlq, decisions, learning, segments, erasures)
    that is missing.

    Safe to call concurrently and repeatedly. Waits up to ``connect_timeout`` seconds for the broker.
    ``kafka_kwargs``: the connection's security (default: the environment's ``KAFKA_SECURITY_PROTOCOL`` and
    ``KAFKA_SASL_*``, ``engine.kafka_client``).
    """
    wanted = list(dict.fromkeys(names if names is not None else default_topic_names()))
    if not wanted:
        return
    admin = await _start_admin(bootstrap, connect_timeout,
                               kafka_client_kwargs() if kafka_kwargs is None else kafka_kwargs)
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(name, partitions, replication_factor, topic_configs=topic_configs(name))
                 for name in missing], timeout_ms=30000
            )
            for topic, code, *rest in response.topic_errors:
                if code == 0 or code == TopicAlreadyExistsError.errno:
                    continue
                message = rest[0] if rest else None
                raise for_code(code)(f"creating topic {topic!r}: {message or ''}".strip())
            log.info("created topics %s with %d partitions on %s", missing, partitions, bootstrap)
        present = [name for name in wanted if name in existing]
        if present:
            for info in await admin.describe_topics(present):
                count = len(info.get("partitions", []))
                if count != partitions:
                    log.warning(
                        "topic %r already exists with %d partitions (wanted %d); left unchanged",
                        info.get("topic"),
                        count,
                        partitions,
                    )
    finally:
        await admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.topics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="topics to create (default: events, events.dlq, decisions, "
                        "learning, segments, erasures)")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--partitions", type=int, default=int(os.environ.get("EVENTS_PARTITIONS", "8")))
    parser.add_argument("--replication-factor", type=int, default=int(os.environ.get("TOPIC_REPLICATION_FACTOR", "1")))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the broker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(
            ensure_topics(
                args.bootstrap,
                args.partitions,
                args.names or None,
                replication_factor=args.replication_factor,
                connect_timeout=args.timeout,
            )
        )
    except KafkaError as exc:
        log.error("could not ensure topics on %s: %r", args.bootstrap, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
