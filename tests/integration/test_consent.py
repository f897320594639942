"""Consent from its owner, in ``opt_in`` mode, on the real worker, API, Kafka and Redis (issue 15, item 3):

* a visitor who has not consented leaves zero keys in Redis, gets non-personalised answers and no decision
  record; once they consent, they are personalised;
* a consent for a customer id from a public key without an identity proof applies to the anonymous id only;
* on a merge the newer consent wins: an anonymous withdrawal newer than the customer's consent wipes the
  customer's profile and keeps the withdrawal.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from engine.kafka_client import kafka_client_kwargs
from engine.layout import anonymous_profile_key, profile_key
from engine.settings import REPO_ROOT
from serving.auth import PUBLIC
from tests.support import (
    TEST_KEYS,
    TEST_ORIGIN,
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce,
    produce_async,
    profile_of,
    redis_client,
    wait_http_ready,
    wait_until,
    with_key,
    without_key,
    worker_process,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def opt_in_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("config") / "opt_in.toml"
    path.write_text(f'include = ["{REPO_ROOT / "config" / "engine.toml"}"]\n\n[privacy]\nconsent_mode = "opt_in"\n')
    return str(path)


@pytest.fixture(scope="module")
def oworker(stack: Stack, log_dir: Path, opt_in_config: str) -> Iterator[object]:
    proc = worker_process(stack, log_dir, name=f"worker-optin-{stack.tag}", ENGINE_CONFIG=opt_in_config).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def oapi(stack: Stack, log_dir: Path, opt_in_config: str) -> Iterator[str]:
    port = free_port()
    proc = api_process(stack, log_dir, port, **keys_env(), ENGINE_CONFIG=opt_in_config).start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base, proc)
    yield with_key(base)
    proc.stop()


def keys_of(redis_url: str, visitor: str) -> list[str]:
    r = redis_client(redis_url, decode_responses=True)
    try:
        return sorted(r.scan_iter(match=f"*{visitor}*", count=1000))
    finally:
        r.close()


def decide(api: str, **who: str) -> dict[str, Any]:
    r = httpx.post(f"{api}/v1/decide", json={**who, "placement": "home_hero", "n": 3})
    assert r.status_code == 200, r.text
    return r.json()


def decision_visitors(stack: Stack, until: str) -> set[str]:
    """The visitors of the decision records on the topic, read until one for ``until`` arrived."""
    async def read() -> set[str]:
        consumer = AIOKafkaConsumer(stack.decisions_topic, bootstrap_servers=stack.bootstrap,
                                    auto_offset_reset="earliest", group_id=None,
                                    **kafka_client_kwargs())
        await consumer.start()
        try:
            seen: set[str] = set()
            deadline = time.monotonic() + 30
            while until not in seen and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        rec = orjson.loads(m.value)
                        seen.add(rec.get("customer_id") or rec.get("anonymous_id"))
            return seen
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_an_opt_in_visitor_leaves_nothing_until_consent_then_is_personalised(
    stack: Stack, oworker: object, oapi: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    visitor, sentinel = f"anon-optin-{tag}", f"anon-sentinel-{tag}"
    events = [event("click", visitor, category="hats", item_id="sku-hat-1") for _ in range(3)]
    events += [event("consent", visitor, analytics=False, marketing=False)]  # refusing stores nothing either
    # the sentinel consents, on the visitor's partition after its events: once it is stored, they were processed
    granted = event("consent", sentinel, personalisation=True)
    asyncio.run(produce_async(stack.bootstrap, stack.events_topic,
                              [(visitor.encode(), orjson.dumps(e)) for e in [*events, granted]]))
    wait_until(lambda: keys_of(stack.redis_url, sentinel), timeout=60, what="the sentinel's consent")
    assert keys_of(stack.redis_url, visitor) == []
    answer = decide(oapi, anonymous_id=visitor)
    assert answer["personalised"] is False
    decide(oapi, anonymous_id=sentinel)
    assert visitor not in decision_visitors(stack, until=sentinel)  # no decision record without consent
    assert keys_of(stack.redis_url, visitor) == []

    # consent arrives (from the browser: an anonymous id's own choice), then behaviour is stored
    produce(stack.bootstrap, stack.events_topic, [event("consent", visitor, personalisation=True)]
            + [event("click", visitor, category="hats", item_id="sku-hat-1") for _ in range(2)])
    p = wait_until(lambda: (lambda q: q if q.counts.get("click") == 2 else None)(
        profile_of(stack.redis_url, visitor, customer=False)), timeout=60, what="clicks after consent")
    assert p.consent["personalisation"] is True and "hats" in p.affinities["category"]
    after = wait_until(lambda: (lambda a: a if a["personalised"] else None)(decide(oapi, anonymous_id=visitor)),
                       timeout=30, what="a personalised answer after consent")
    assert after["actions"][0]["action_id"] == "promo-sun-hats"


def test_a_customers_consent_needs_a_trusted_source_and_the_newer_consent_wins_on_a_merge(
    stack: Stack, oworker: object, oapi: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    customer, anon, claimed = f"cust-c-{tag}", f"anon-c-{tag}", f"cust-claimed-{tag}"
    t0 = int(time.time() * 1000) - 60_000
    # the customer consented (server side) and has history; their browser withdraws later, anonymously
    produce(stack.bootstrap, stack.events_topic,
            [event("consent", customer, customer=True, ts_ms=t0, personalisation=True)]
            + [event("click", customer, customer=True, ts_ms=t0 + 1000, category="hats") for _ in range(2)])
    wait_until(lambda: profile_of(stack.redis_url, customer, customer=True).counts.get("click") == 2, timeout=60,
               what="the customer's history")
    # a public key's consent naming a customer id without a proof: the anonymous id's choice only (given, then
    # withdrawn: in opt_in mode a refusal alone stores nothing)
    claim = event("consent", anon, ts_ms=t0 + 2000, personalisation=False)
    claim["customer_id"] = claimed
    produce(stack.bootstrap, stack.events_topic, [event("consent", anon, ts_ms=t0 + 1500, personalisation=True)])
    wait_until(lambda: profile_of(stack.redis_url, anon, customer=False).consent.get("personalisation") is True,
               timeout=60, what="the anonymous consent")
    r = httpx.post(f"{without_key(oapi)}/v1/events", json=[claim],
                   headers={"Authorization": f"Bearer {TEST_KEYS[PUBLIC]}", "Origin": TEST_ORIGIN})
    assert r.status_code == 202, r.text
    wait_until(lambda: profile_of(stack.redis_url, anon, customer=False).consent.get("personalisation") is False,
               timeout=60, what="the withdrawal on the anonymous id")
    assert keys_of(stack.redis_url, claimed) == []
    # the site's back end links them (trusted): the anonymous withdrawal is newer, so it wins
    ident = event("identify", anon, ts_ms=t0 + 3000)
    ident["customer_id"] = customer
    produce(stack.bootstrap, stack.events_topic, [ident])
    wait_until(lambda: profile_of(stack.redis_url, customer, customer=True).consent.get("personalisation") is False,
               timeout=60, what="the newer consent to win")
    merged = profile_of(stack.redis_url, customer, customer=True)
    assert merged.counts == {} and merged.affinities["category"] == {}  # wiped, the withdrawal kept
    assert decide(oapi, customer_id=customer)["personalised"] is False
    r2 = redis_client(stack.redis_url, decode_responses=True)
    try:
        assert not r2.exists(anonymous_profile_key(anon)) and r2.hget(profile_key(customer), "kp") == "0"
    finally:
        r2.close()
