"""Helpers for integration tests: real worker and API processes, producing and waiting."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from engine.kafka_client import kafka_client_kwargs
from engine.settings import REPO_ROOT
from infra.processes import (  # noqa: F401 - re-exported for the tests
    ManagedProcess,
    Stack,
    api_process,
    free_port,
    wait_http_ready,
    wait_until,
    worker_process,
)
from serving.auth import ADMIN, PUBLIC, ROLES, SERVER, new_key


async def produce_async(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]],
                        kafka_kwargs: Mapping[str, Any] | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                **(kafka_client_kwargs() if kafka_kwargs is None else kafka_kwargs))
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def read_topic(bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout: float = 30.0, *,
               keep: Callable[[Any], bool] = lambda m: True, linger: float = 0.0,
               kafka_kwargs: Mapping[str, Any] | None = None) -> list[Any]:
    """The records of ``topic`` from its start that ``keep`` accepts, once ``done(records)`` holds (or after
    ``timeout`` s: the caller's assertion says what is missing); then ``linger`` s more, so that a record that
    must not come (a second copy) would show up."""
    from aiokafka import AIOKafkaConsumer

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                    **(kafka_client_kwargs() if kafka_kwargs is None else kafka_kwargs))
        await consumer.start()
        got: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            until: float | None = None
            while time.monotonic() < (until or deadline):
                for msgs in (await consumer.getmany(timeout_ms=300)).values():
                    got += [m for m in msgs if keep(m)]
                if until is None and done(got):
                    if not linger:
                        break
                    until = time.monotonic() + linger
            return got
        finally:
            await consumer.stop()

    return asyncio.run(read())


def produce(bootstrap: str, topic: str, events: Iterable[dict[str, Any] | bytes], *,
            kafka_kwargs: Mapping[str, Any] | None = None) -> None:
    """Publish events keyed by visitor id (raw bytes are published unkeyed); ``kafka_kwargs``: the connection's
    security (default: the environment's)."""
    items: list[tuple[bytes | None, bytes]] = []
    for e in events:
        if isinstance(e, bytes):
            items.append((None, e))
        else:
            key = (e.get("customer_id") or e.get("anonymous_id") or "").encode() or None
            items.append((key, orjson.dumps(e)))
    asyncio.run(produce_async(bootstrap, topic, items, kafka_kwargs))


def event(type_: str, visitor: str, *, customer: bool = False, ts_ms: int | None = None,
          **properties: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": uuid.uuid4().hex, "type": type_,
        "timestamp": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "context": {"channel": "web"}, "properties": properties,
    }
    e["customer_id" if customer else "anonymous_id"] = visitor
    return e


CONFIG_PATH = REPO_ROOT / "config" / "engine.toml"

#: The API keys of the integration tests' API (``api`` fixture), one per role, new for each test session.
TEST_KEYS = {role: new_key(role) for role in ROLES}
#: The browser origin the public test key allows.
TEST_ORIGIN = "https://shop.test"


def keys_env() -> dict[str, str]:
    """``API_KEYS`` for an API process with :data:`TEST_KEYS`."""
    return {"API_KEYS": f"{PUBLIC}:{TEST_KEYS[PUBLIC]}:{TEST_ORIGIN},{SERVER}:{TEST_KEYS[SERVER]},"
                        f"{ADMIN}:{TEST_KEYS[ADMIN]}"}


def with_key(base_url: str, role: str = ADMIN) -> str:
    """``http://<key>:@host:port``: httpx sends the key as HTTP Basic user name (as the Segment SDKs do)."""
    scheme, _, rest = base_url.partition("://")
    return f"{scheme}://{TEST_KEYS[role]}:@{rest.rpartition('@')[2]}"


def without_key(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def cluster_mode() -> bool:
    """``REDIS_CLUSTER`` set: the suite's Redis is a Redis Cluster (``tests/integration/conftest.py``)."""
    import os

    return os.environ.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes", "on")


def redis_client(redis_url: str, **kwargs: Any) -> Any:
    """A synchronous client of the suite's Redis: a ``redis.RedisCluster`` seeded by every node of ``redis_url``
    when ``REDIS_CLUSTER`` is set, else ``redis.Redis.from_url``."""
    import redis
    from redis.cluster import ClusterNode

    from engine.redis_connection import cluster_seeds

    if not cluster_mode():
        return redis.Redis.from_url(redis_url, **kwargs)
    seeds, _ = cluster_seeds(redis_url)
    return redis.RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds], **kwargs)


def aredis_client(redis_url: str, **kwargs: Any) -> Any:
    """An asyncio client of the suite's Redis, as the processes make theirs (``engine.redis_connection``)."""
    from engine.redis_connection import make_redis

    return make_redis(redis_url, cluster=cluster_mode(), **kwargs)


def with_store(redis_url: str, fn: Callable[[Any], Any]) -> Any:
    """Run ``await fn(store)`` against a fresh client (clients are bound to one event loop); a Redis Cluster's
    when ``REDIS_CLUSTER`` is set (``redis_url``: its seed nodes)."""
    from engine.config import load_config
    from engine.profile_store import ProfileStore

    async def run() -> Any:
        client = aredis_client(redis_url, decode_responses=True)
        try:
            return await fn(ProfileStore(client, load_config(CONFIG_PATH)))
        finally:
            await client.aclose()

    return asyncio.run(run())


def profile_of(redis_url: str, visitor: str, *, customer: bool | None = None) -> Any:
    """The decoded profile of a visitor: the customer ``visitor`` (``customer=True``), the anonymous id
    ``visitor`` (``False``), or (None) the customer's if it exists, else the anonymous id's (the two live in
    separate key spaces, ``engine.layout``)."""
    from engine.features import decode

    async def read(store: Any) -> Any:
        raw = await store.read_raw(visitor) if customer is not False else None
        if raw is None or (customer is None and not raw.exists):
            raw = await store.read_anonymous(visitor)
        return decode(visitor, raw, store.config, time.time())

    return with_store(redis_url, read)


def start_or_fail(kind: str, starter: Callable[[], Any]) -> Any:
    """Start a real service; with ``CI=true`` a failure fails the run, elsewhere it skips the test."""
    import os

    import pytest

    try:
        return starter()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"could not start {kind} (CI=true: failing, not skipping): {exc}") from exc
        pytest.skip(f"{kind} could not be started here: {exc}")
