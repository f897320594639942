"""End-to-end fuzz: nothing stops the stream, and every event is accounted for.

Events generated from ``schemas/json/`` (hypothesis-jsonschema) and mutations of them outside the schemas
(``fuzz_cases.py``) go through the collector (HTTP, server key) and straight to the events topic. Afterwards:
every request was refused with a 4xx that says why, or accepted whole; every accepted event (202 or on the
topic) was applied or dead-lettered with a reason (``accepted == applied + dead-lettered``, from the worker's
counters in Redis, and the dead-letter topic holds exactly the dead-lettered ones); each schema-valid event
was accepted at both doors; the worker is alive and a sentinel event is applied within seconds.

``make test`` runs ``FUZZ_CASES`` (default 3000) cases from fixed seeds; ``make fuzz`` a longer campaign with
a fresh seed (``FUZZ_SEED``, printed), e.g. ``make fuzz FUZZ_CASES=30000``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer

from engine.kafka_client import kafka_client_kwargs
from engine.layout import worker_stats_key
from infra import local
from tests.integration.fuzz_cases import Case, build_cases
from tests.support import (
    SERVER,
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce_async,
    profile_of,
    wait_http_ready,
    wait_until,
    with_key,
    worker_process,
)

pytestmark = pytest.mark.integration

FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "3000"))
FUZZ_SEED = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None
MUTATIONS_PER_EVENT = 19
#: a Redis database of its own: the worker's counters (and popularity) start from zero, apart from other tests
FUZZ_DB = 7


def read_dead_letters(stack: Stack, expect: int, timeout: float = 60.0) -> list[Any]:
    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(stack.dlq_topic, bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest",
                                    group_id=f"fuzz-dlq-{uuid.uuid4().hex[:6]}", max_partition_fetch_bytes=4 << 20,
                                    **kafka_client_kwargs())
        await consumer.start()
        try:
            got: list[Any] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(msgs)
                if len(got) >= expect:  # and a little longer: more than expected is a failure too
                    for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                        got.extend(msgs)
                    break
            return got
        finally:
            await consumer.stop()
    return asyncio.run(read())


def _event_ids(body: bytes) -> list[str]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    items = data if isinstance(data, list) else [data]
    return [i["event_id"] for i in items if isinstance(i, dict) and isinstance(i.get("event_id"), str)]


def _check_refusal(status: int, body: bytes) -> str | None:
    """A 4xx must say why: an ``error``, or per event an index, a field and a reason."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"{status} without a JSON body: {body[:200]!r}"
    if status == 422:
        errors = data.get("errors") or []
        if not errors or not all(isinstance(e.get("index"), int) and e.get("field") and e.get("reason")
                                 for e in errors):
            return f"422 without index/field/reason per event: {data}"
    elif not isinstance(data.get("error"), str) or not data["error"]:
        return f"{status} without an error: {data}"
    return None


def test_fuzzed_events_are_refused_applied_or_dead_lettered_and_the_worker_goes_on(
    kafka: local.KafkaService, redis_server: local.RedisService, log_dir: Path
) -> None:
    redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/{FUZZ_DB}"
    with redis.Redis.from_url(redis_url) as r:
        r.flushdb()
    stack = Stack(kafka.bootstrap, redis_url)
    stack.create_topics()
    started = time.monotonic()
    cases = build_cases(max(1, FUZZ_CASES // (1 + MUTATIONS_PER_EVENT)), MUTATIONS_PER_EVENT, FUZZ_SEED)
    generated_s = time.monotonic() - started
    rng = random.Random(FUZZ_SEED if FUZZ_SEED is not None else 6)
    to_http = [c for c in cases if rng.random() < 0.6]
    http_ids = {id(c) for c in to_http}
    to_kafka = [c for c in cases if id(c) not in http_ids]

    worker = worker_process(stack, log_dir, name=f"fuzz-worker-{stack.tag}").start()
    port = free_port()
    api = api_process(stack, log_dir, port, **keys_env()).start()
    failures: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(base, api)
        accepted_http = 0
        with httpx.Client(base_url=with_key(base, SERVER), timeout=30) as client:
            i = 0
            while i < len(to_http):
                # a request of one to three cases: a refused one takes the others down with it (all or nothing)
                group: list[Case] = to_http[i:i + rng.choice([1, 1, 1, 2, 3])]
                i += len(group)
                body = group[0].body if len(group) == 1 else b"[" + b",".join(c.body for c in group) + b"]"
                resp = client.post("/v1/events", content=body, headers={"content-type": "application/json"})
                kinds = "+".join(sorted({c.kind for c in group}))
                outcomes[f"http {resp.status_code} {kinds if resp.status_code < 300 else ''}".strip()] += 1
                if resp.status_code == 202:
                    accepted_http += resp.json()["accepted"]
                elif resp.status_code in (400, 413, 422):
                    problem = _check_refusal(resp.status_code, resp.content)
                    if problem:
                        failures.append(problem)
                    if all(c.valid for c in group):
                        failures.append(f"schema-valid events refused ({resp.status_code}): {resp.text[:500]}")
                else:
                    failures.append(f"HTTP {resp.status_code} for {kinds}: {resp.text[:300]} body {body[:200]!r}")
        asyncio.run(produce_async(stack.bootstrap, stack.events_topic,
                                  [(rng.choice([None, b"fuzz-a", b"fuzz-b", b"fuzz-c"]), c.body) for c in to_kafka]))
        accepted = accepted_http + len(to_kafka)

        def counters() -> dict[str, int]:
            with redis.Redis.from_url(redis_url, decode_responses=True) as r:
                return {k: int(v) for k, v in r.hgetall(worker_stats_key()).items() if v.isdigit()}
        wait_until(lambda: counters().get("events_received", 0) >= accepted, timeout=max(120.0, accepted / 50),
                   what=f"the worker to read {accepted} events ({counters()})\n{worker.log_tail()}")
        time.sleep(1.0)  # an extra event read late would show below
        c = counters()
        dead = c.get("dead_letters", 0) + c.get("dead_letters_isolated", 0)
        assert c["events_received"] == accepted, (FUZZ_SEED, c)
        assert c.get("events_applied", 0) + dead == accepted, (FUZZ_SEED, c)

        letters = read_dead_letters(stack, dead)
        assert len(letters) == dead
        reasons: collections.Counter[str] = collections.Counter()
        valid_ids = {eid for case in cases if case.valid for eid in case.event_ids}
        for m in letters:
            headers = dict(m.headers)
            assert headers.get("dlq.reason") and headers.get("dlq.stage"), headers
            reasons[f"{headers['dlq.stage'].decode()}: {headers['dlq.reason'].decode().partition(':')[0]}"] += 1
            refused_valid = set(_event_ids(m.value)) & valid_ids
            if refused_valid:
                failures.append(f"schema-valid event dead-lettered: {headers['dlq.reason']!r}")

        # alive, and still applying: a sentinel event within seconds
        visitor = f"sentinel-{stack.tag}"
        with httpx.Client(base_url=with_key(base, SERVER), timeout=30) as client:
            assert client.post("/v1/events", json=event("page_view", visitor, category="s")).status_code == 202
        wait_until(lambda: profile_of(redis_url, visitor).counts.get("page_view") == 1, timeout=15,
                   what=f"the sentinel\n{worker.log_tail()}")
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        api.stop()
        worker.stop()
    print(f"\nfuzz: {len(cases)} cases (seed {FUZZ_SEED if FUZZ_SEED is not None else 'fixed'}), generated in "
          f"{generated_s:.1f} s; {len(to_http)} through the collector, {len(to_kafka)} straight to Kafka; "
          f"accepted {accepted}, applied {c.get('events_applied', 0)}, dead-lettered {dead}")
    print("collector:", dict(sorted(outcomes.items())))
    print("dead letters:", dict(reasons.most_common()))
    assert not failures, f"seed {FUZZ_SEED}: " + "\n".join(failures[:20])
