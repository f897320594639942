"""The locked-down infrastructure, for real: a Kafka broker whose listener takes SASL/SCRAM-SHA-256 only and
a Redis whose default user is off, with an ACL user per service (infra/redis/users.acl.template).

The ingest worker, the learner and the API run in production mode (``PULSE_ENV=prod``) through them, each
with its own Kafka and Redis user: an event produced with credentials is applied and a decision works. A
client without credentials, or with a wrong password, is refused by both, and each Redis user is refused
what its service does not need."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from engine.layout import MODEL_VERSION, model_key
from engine.production import EXIT_CONFIG
from engine.recommend.signal import COVISIT_MODEL
from infra import local
from infra.probe import SaslLogin, kafka_ready
from serving.auth import ADMIN, SERVER
from tests.support import (
    TEST_KEYS,
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce,
    start_or_fail,
    wait_http_ready,
    wait_until,
    worker_process,
)

pytestmark = pytest.mark.integration

SERVICES = ("api", "worker", "learner")
KAFKA_USERS = {"admin": secrets.token_urlsafe(18), **{s: secrets.token_urlsafe(18) for s in SERVICES}}
REDIS_USERS = {"admin": secrets.token_urlsafe(18), **{s: secrets.token_urlsafe(18) for s in SERVICES}}
PRODUCTION = {"PULSE_ENV": "prod", "MODEL_SIGNING_KEY": secrets.token_hex(32), "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[Any, Any]]:
    kafka = start_or_fail("Kafka with SASL/SCRAM", lambda: local.start_kafka(sasl_users=KAFKA_USERS, backend="local"))
    try:
        redis = start_or_fail("Redis with ACL users", lambda: local.start_redis(acl_passwords=REDIS_USERS,
                                                                                  backend="local"))
    except BaseException:
        kafka.close()
        raise
    yield kafka, redis
    redis.close()
    kafka.close()


def as_service(kafka: Any, redis: Any, service: str) -> dict[str, str]:
    """The environment of one service: its Kafka user and its Redis user, production mode."""
    return {**kafka.client_env(service), "REDIS_URL": redis.url_for(service), **PRODUCTION}


@pytest.fixture(scope="module")
def pipeline(services: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    kafka, redis = services
    log_dir = tmp_path_factory.mktemp("secured")
    stack = Stack(kafka.bootstrap, redis.url_for("worker"), kafka_env=kafka.client_env("admin"))
    stack.create_topics()
    port = free_port()
    procs = [
        worker_process(stack, log_dir, name="ingest", command="ingest", **as_service(kafka, redis, "worker")),
        worker_process(stack, log_dir, name="learner", command="learner", **as_service(kafka, redis, "learner")),
        api_process(stack, log_dir, port, **as_service(kafka, redis, "api"), **keys_env()),
    ]
    for proc in procs:
        proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(base, procs[2], timeout=60)
        yield stack, base
        for proc in procs:  # every process ran within its users' rights
            assert proc.proc is not None and proc.proc.poll() is None, f"{proc.name} exited:\n{proc.log_tail()}"
            for refused in ("NOPERM", "NOAUTH", "SaslAuthenticationFailed", "WRONGPASS"):
                assert refused not in proc.log_path.read_text(errors="replace"), f"{proc.name}:\n{proc.log_tail()}"
    finally:
        for proc in procs:
            proc.stop()


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_KEYS[role]}"}


def test_events_with_credentials_are_applied_and_decisions_work(services: tuple[Any, Any],
                                                                pipeline: tuple[Stack, str]) -> None:
    kafka, _ = services
    stack, base = pipeline
    visitor = f"sec-{uuid.uuid4().hex[:8]}"
    # a site's back end writing to the topic with its Kafka credentials ...
    produce(stack.bootstrap, stack.events_topic, [event("page_view", visitor, category="hats", item_id="sku-hat-1")],
            kafka_kwargs=kafka.client_kwargs("admin"))
    # ... and the collector, whose producer authenticates as the api user
    clicked = event("click", visitor, category="hats", item_id="sku-hat-1")
    assert httpx.post(f"{base}/v1/events", json=clicked, headers=bearer(SERVER)).status_code == 202

    def profile() -> dict[str, Any] | None:
        answer = httpx.get(f"{base}/v1/profiles/{visitor}", headers=bearer(ADMIN), timeout=5)
        body = answer.json() if answer.status_code == 200 else {}
        counts = body.get("counts", {})
        return body if counts.get("page_view") == 1 and counts.get("click") == 1 else None

    held = wait_until(profile, timeout=60, interval=0.25, what="the worker to apply both events")
    assert held["affinities"]
    # the learner (Faust, as the learner Kafka user) took the interactions and published co-visitation as the
    # learner Redis user
    admin = _redis(services[1], "admin")
    wait_until(lambda: admin.hget(model_key(COVISIT_MODEL), MODEL_VERSION), timeout=60, interval=0.5,
               what="the learner's co-visitation snapshot")
    decision = httpx.post(f"{base}/v1/decide", headers=bearer(ADMIN), json={
        "anonymous_id": visitor, "placement": "home_hero", "n": 3, "context": {"channel": "web"}}, timeout=10)
    assert decision.status_code == 200, decision.text
    body = decision.json()
    assert body["personalised"] and not body["degraded"] and body["actions"]
    # erasure and export as the api Redis user (markers, progress record, pending decisions) and Kafka user
    assert httpx.get(f"{base}/v1/profiles/{visitor}/export", headers=bearer(ADMIN), timeout=10).status_code == 200
    erased = httpx.delete(f"{base}/v1/profiles/{visitor}", headers=bearer(ADMIN), timeout=10)
    assert erased.status_code == 200, erased.text


async def _start_producer(bootstrap: str, **kafka_kwargs: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, **kafka_kwargs)
    try:
        await asyncio.wait_for(producer.start(), 30)
        await asyncio.wait_for(producer.send_and_wait("events", b"{}"), 10)
    finally:
        await producer.stop()


def test_the_api_runs_in_production_behind_keys(pipeline: tuple[Stack, str]) -> None:
    _, base = pipeline
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers=bearer(ADMIN)).status_code == 200


def test_kafka_refuses_clients_without_the_right_credentials(services: tuple[Any, Any]) -> None:
    kafka, _ = services
    for kwargs in ({},  # PLAINTEXT: no SASL handshake at all
                   {**kafka.client_kwargs("api"), "sasl_plain_password": "wrong"},
                   {**kafka.client_kwargs("api"), "sasl_plain_username": "nobody"}):
        with pytest.raises((KafkaError, asyncio.TimeoutError, OSError)):
            asyncio.run(_start_producer(kafka.bootstrap, **kwargs))
    assert not kafka_ready(kafka.bootstrap)  # an unauthenticated Metadata request gets no answer
    assert not kafka_ready(kafka.bootstrap, sasl=SaslLogin("SCRAM-SHA-256", "api", "wrong"))
    assert kafka_ready(kafka.bootstrap, sasl=SaslLogin("SCRAM-SHA-256", "api", KAFKA_USERS["api"]))
    assert kafka_ready(kafka.bootstrap, sasl=SaslLogin("SCRAM-SHA-512", "worker", KAFKA_USERS["worker"]))


def _redis(redis: Any, user: str | None, password: str | None = None) -> redis_sync.Redis:
    return redis_sync.Redis(host=redis.host, port=redis.port, username=user,
                            password=password if password is not None else REDIS_USERS.get(user or ""),
                            socket_timeout=5)


def test_redis_refuses_clients_without_the_right_credentials(services: tuple[Any, Any]) -> None:
    _, redis = services
    with pytest.raises(redis_sync.AuthenticationError):  # the default user is off
        _redis(redis, None, "").ping()
    with pytest.raises(redis_sync.AuthenticationError):
        _redis(redis, "api", "wrong").ping()
    with pytest.raises(redis_sync.AuthenticationError):
        redis_sync.Redis(host=redis.host, port=redis.port, password="anything").ping()  # no password of default
    assert _redis(redis, "admin").ping()


@pytest.mark.parametrize(("user", "command", "allowed"), [
    ("api", ("HGETALL", "p:{someone}"), True),
    ("api", ("DEL", "p:{someone}"), True),  # erasure
    ("api", ("HSET", "model:{home_hero}", "blob", "x"), False),  # serving never writes a model
    ("api", ("HGETALL", "dec:{00}:d-1"), False),  # the reward join's keys are the worker's
    ("api", ("DEL", "dec:{00}:d-1"), True),  # erasure deletes a person's pending decisions, never reads them
    ("api", ("SET", "erased:{c:someone}", "1"), True),  # the erasure marker
    ("worker", ("GET", "erased:{c:someone}"), True),  # which the worker honours
    ("api", ("FLUSHALL",), False),
    ("api", ("KEYS", "*"), False),  # @read, but @dangerous too
    ("api", ("INFO", "memory"), True),  # /metrics
    ("worker", ("HSET", "p:{someone}", "cv", "1"), True),
    ("worker", ("HSET", "model:{home_hero}", "blob", "x"), False),
    ("worker", ("KEYS", "*"), False),
    ("worker", ("CONFIG", "GET", "maxmemory"), False),
    ("worker", ("SCRIPT", "FLUSH"), False),
    ("learner", ("HSET", "model:{home_hero}", "version", "0"), True),
    ("learner", ("HGETALL", "p:{someone}"), False),  # the learner never reads a profile
    ("admin", ("CONFIG", "GET", "maxmemory"), True),
    ("api", ("HSET", "cat:{catalogue}:actions", "a", "{}"), True),  # the catalogue's admin API
    ("api", ("HSET", "p:{someone}", "cv", "1"), False),  # ... and no other hash
    ("worker", ("HGETALL", "cat:{catalogue}:actions"), True),  # the workers follow the catalogue
    ("worker", ("HSET", "cat:{catalogue}:actions", "a", "{}"), False),
    ("learner", ("GET", "cat:{catalogue}:version"), True),
])
def test_each_redis_user_gets_what_its_service_needs_only(services: tuple[Any, Any], user: str,
                                                          command: tuple[str, ...], allowed: bool) -> None:
    _, redis = services
    client = _redis(redis, user)
    if allowed:
        client.execute_command(*command)
    else:
        with pytest.raises(redis_sync.exceptions.NoPermissionError):
            client.execute_command(*command)


def test_outside_dev_the_api_refuses_a_redis_url_without_a_password(services: tuple[Any, Any],
                                                                    tmp_path: Path) -> None:
    import subprocess

    kafka, redis = services
    stack = Stack(kafka.bootstrap, f"redis://{redis.host}:{redis.port}/0", kafka_env=kafka.client_env("api"))
    proc = api_process(stack, tmp_path, free_port(), **PRODUCTION, **keys_env(), **kafka.client_env("api"))
    out = subprocess.run(proc.argv, env=proc.env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == EXIT_CONFIG, out.stderr[-2000:]
    assert "REDIS_URL carries no password" in out.stderr
