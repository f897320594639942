"""Identity that cannot be claimed and erasure that is complete and durable, on the real worker, API, Kafka and
Redis (issue 15, items 2 and 4; docs/security.md).

* the hijack (an identify whose anonymous id is a victim's customer id) leaves the victim untouched, from a
  public key and even with a valid proof for the attacker's own id; a server key and a browser with a valid
  ``user_hash`` merge, an invalid ``user_hash`` links nothing;
* ``DELETE /v1/profiles/{id}`` empties every family of ``engine.layout.PERSON_FAMILIES``, publishes tombstones
  on the compacted erasures topic, survives a replay of the events topic from the beginning by a fresh
  worker (a new consumer group from earliest), and a retry finishes an erasure interrupted halfway;
* ``GET /v1/profiles/{id}/export`` returns the profiles, the identities and the consent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from engine.erasure import ErasureStore
from engine.identity import identity_proof
from engine.kafka_client import kafka_client_kwargs
from engine.layout import (
    PERSON_FAMILIES,
    SEGMENTS_FIELD,
    aliases_key,
    anonymous_profile_key,
    erasure_marker_key,
    erasure_pending_key,
    identity_key,
    profile_key,
)
from serving.auth import PUBLIC, SERVER
from tests.support import (
    TEST_KEYS,
    TEST_ORIGIN,
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce,
    profile_of,
    redis_client,
    wait_http_ready,
    wait_until,
    with_key,
    with_store,
    without_key,
    worker_process,
)

pytestmark = pytest.mark.integration

SECRET = "identity-secret-for-the-tests-0123456789"
PROOFS = {"IDENTITY_PROOFS": "true", "IDENTITY_SECRET": SECRET}


@pytest.fixture(scope="module")
def pworker(stack: Stack, log_dir: Path) -> Iterator[object]:
    proc = worker_process(stack, log_dir, name=f"worker-ident-{stack.tag}", **PROOFS).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def papi(stack: Stack, log_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = api_process(stack, log_dir, port, **keys_env(), **PROOFS).start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base, proc)
    yield with_key(base)  # admin
    proc.stop()


def send(api: str, role: str, events: list[dict[str, Any]]) -> None:
    headers = {"Authorization": f"Bearer {TEST_KEYS[role]}", **({"Origin": TEST_ORIGIN} if role == PUBLIC else {})}
    r = httpx.post(f"{without_key(api)}/v1/events", json=events, headers=headers, timeout=10)
    assert r.status_code == 202, r.text


def identify(anon: str, customer: str, **props: Any) -> dict[str, Any]:
    ev = event("identify", anon, **props)
    ev["customer_id"] = customer
    return ev


def raw_hash(redis_url: str, key: str) -> dict[str, str]:
    """A profile hash without its segments field (the segment tracker writes it after the events)."""
    r = redis_client(redis_url, decode_responses=True)
    try:
        held = cast(dict[str, str], r.hgetall(key))  # a decoding client
        return {k: v for k, v in held.items() if k != SEGMENTS_FIELD}
    finally:
        r.close()


def keys_matching(redis_url: str, *ids: str) -> list[str]:
    r = redis_client(redis_url, decode_responses=True)
    try:
        return sorted({k for i in ids for k in r.scan_iter(match=f"*{i}*", count=1000)})
    finally:
        r.close()


def families(redis_url: str, person: str) -> dict[str, list[str]]:
    return with_store(redis_url, lambda store: ErasureStore(store.redis, store.config, 3600).family_keys(person))


def counted(redis_url: str, visitor: str, kind: str, n: int, *, customer: bool | None = None) -> Any:
    return wait_until(lambda: (lambda p: p if p.counts.get(kind) == n else None)(
        profile_of(redis_url, visitor, customer=customer)), timeout=60, what=f"{n} {kind} for {visitor}")


def test_the_hijack_leaves_the_victim_untouched(stack: Stack, pworker: object, papi: str) -> None:
    tag = uuid.uuid4().hex[:6]
    victim, attacker = f"cust-victim-{tag}", f"cust-attacker-{tag}"
    produce(stack.bootstrap, stack.events_topic,  # the victim's own history (the site's back end)
            [event("page_view", victim, customer=True, category="jewellery") for _ in range(3)]
            + [event("purchase", victim, customer=True, order_id=f"o-{tag}", value=950.0,
                     items=[{"item_id": "ring-1"}])])
    counted(stack.redis_url, victim, "purchase", 1, customer=True)
    before = raw_hash(stack.redis_url, profile_key(victim))
    # 1. from a public key without a proof: recorded on the anonymous id named like the victim, links nothing
    send(papi, PUBLIC, [identify(victim, attacker)])
    counted(stack.redis_url, victim, "identify", 1, customer=False)
    assert raw_hash(stack.redis_url, profile_key(victim)) == before
    assert not profile_of(stack.redis_url, attacker, customer=True).exists
    # 2. with a valid proof for the attacker's own id (a logged-in attacker): it merges that anonymous hash
    # (the attacker's own identify of step 1) and never the customer's
    send(papi, PUBLIC, [identify(victim, attacker, user_hash=identity_proof(SECRET.encode(), attacker))])
    counted(stack.redis_url, attacker, "identify", 2, customer=True)
    assert raw_hash(stack.redis_url, profile_key(victim)) == before  # untouched, field for field
    stolen = profile_of(stack.redis_url, attacker, customer=True)
    assert stolen.monetary == 0 and "purchase" not in stolen.counts and "page_view" not in stolen.counts
    assert "jewellery" not in stolen.affinities["category"]
    # the victim's later events still go to the victim; a decide for the victim reads the victim's profile
    produce(stack.bootstrap, stack.events_topic, [event("click", victim, customer=True, category="jewellery")])
    counted(stack.redis_url, victim, "click", 1, customer=True)
    assert profile_of(stack.redis_url, victim, customer=True).monetary == 950.0


def test_a_verified_identify_merges_and_an_invalid_proof_does_not(stack: Stack, pworker: object, papi: str) -> None:
    tag = uuid.uuid4().hex[:6]
    by_server, by_proof, by_forgery = (f"anon-{k}-{tag}" for k in ("srv", "proof", "forged"))
    customers = {a: f"cust-{a}" for a in (by_server, by_proof, by_forgery)}
    send(papi, PUBLIC, [event("page_view", a, category="hats") for a in customers for _ in range(2)])
    for a in customers:
        counted(stack.redis_url, a, "page_view", 2, customer=False)
    send(papi, SERVER, [identify(by_server, customers[by_server])])
    send(papi, PUBLIC, [identify(by_proof, customers[by_proof],
                                 user_hash=identity_proof(SECRET.encode(), customers[by_proof]))])
    wrong = identity_proof(SECRET.encode(), customers[by_proof])  # a valid proof, for another customer
    send(papi, PUBLIC, [identify(by_forgery, customers[by_forgery], user_hash=wrong)])
    for a in (by_server, by_proof):
        merged = counted(stack.redis_url, customers[a], "identify", 1, customer=True)
        assert merged.counts["page_view"] == 2 and "hats" in merged.affinities["category"]
        assert not raw_hash(stack.redis_url, anonymous_profile_key(a))  # merged away
    counted(stack.redis_url, by_forgery, "identify", 1, customer=False)  # recorded on the anonymous id
    assert profile_of(stack.redis_url, by_forgery, customer=False).counts["page_view"] == 2
    assert not profile_of(stack.redis_url, customers[by_forgery], customer=True).exists
    r = redis_client(stack.redis_url, decode_responses=True)
    try:
        assert r.get(identity_key(by_server)) == customers[by_server]
        assert r.get(identity_key(by_proof)) == customers[by_proof]
        assert r.get(identity_key(by_forgery)) is None and not r.exists(aliases_key(customers[by_forgery]))
    finally:
        r.close()


def _tombstones(bootstrap: str, topic: str, keys: set[str]) -> dict[str, bytes | None]:
    async def read() -> dict[str, bytes | None]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                    **kafka_client_kwargs())
        await consumer.start()
        try:
            got: dict[str, bytes | None] = {}
            deadline = time.monotonic() + 30
            while not keys <= set(got) and time.monotonic() < deadline:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    got.update({m.key.decode(): m.value for m in msgs if m.key is not None})
            return got
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _topic_config(bootstrap: str, topic: str) -> str | None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    def find(node: Any) -> str | None:  # the (name, value, ...) entry in the nested response tuples
        if isinstance(node, tuple | list):
            if len(node) >= 2 and node[0] == "cleanup.policy":
                return str(node[1])
            for child in node:
                if (hit := find(child)) is not None:
                    return hit
        return None

    async def go() -> str | None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_client_kwargs())
        await admin.start()
        try:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            return find([r.resources for r in responses])
        finally:
            await admin.close()

    return asyncio.run(go())


def _caught_up(bootstrap: str, group: str, topics: list[str], partitions: int) -> bool:
    """Whether the consumer group has committed every partition of these topics up to their end now."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> bool:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    **kafka_client_kwargs())
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_client_kwargs())
        await consumer.start()
        await admin.start()
        try:
            parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
            ends = await consumer.end_offsets(parts)
            committed = await admin.list_consumer_group_offsets(group)
            return all(tp in committed and committed[tp].offset >= ends[tp] for tp in parts if ends[tp] > 0)
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(go())


def test_erasure_empties_every_family_publishes_tombstones_and_survives_a_replay(
    stack: Stack, pworker: object, papi: str, log_dir: Path,
) -> None:
    tag = uuid.uuid4().hex[:6]
    customer, anons = f"cust-erase-{tag}", [f"anon-erase-{tag}-{i}" for i in range(2)]
    produce(stack.bootstrap, stack.events_topic,
            [event("page_view", a, item_id="sku-e", category="hats") for a in anons]
            + [event("purchase", customer, customer=True, order_id=f"o-{tag}", value=12.0,
                     items=[{"item_id": "sku-e"}])])
    for a in anons:
        counted(stack.redis_url, a, "page_view", 1, customer=False)
    produce(stack.bootstrap, stack.events_topic, [identify(a, customer) for a in anons]  # direct: trusted
            + [event("consent", customer, customer=True, personalisation=True, marketing={"email": True})])
    counted(stack.redis_url, customer, "identify", 2, customer=True)
    wait_until(lambda: profile_of(stack.redis_url, customer, customer=True).consent.get("marketing_email"),
               timeout=60, what="the customer's consent")
    # decisions waiting in the reward join, made for the customer and for one of its anonymous ids
    for body in ({"customer_id": customer}, {"anonymous_id": anons[0]}):
        assert httpx.post(f"{papi}/v1/decide", json={**body, "placement": "home_hero"}).status_code == 200
    held = wait_until(lambda: (lambda f: f if f["reward_join"] and len(f["decisions"]) == 2 else None)(
        families(stack.redis_url, customer)), timeout=60, what="the decisions indexed under the person")
    assert held["profile"] and held["aliases"] and len(held["identity"]) == 2

    export = httpx.get(f"{papi}/v1/profiles/{customer}/export")
    assert export.status_code == 200, export.text
    doc = export.json()
    assert doc["profiles"][f"c:{customer}"]["features"]["counts"]["purchase"] == 1
    assert sorted(doc["identities"]["anonymous_ids"]) == sorted(anons)
    assert doc["consent"][f"c:{customer}"]["marketing_email"] is True
    assert len(doc["pending_decisions"]) == 2

    r = httpx.delete(f"{papi}/v1/profiles/{customer}")
    assert r.status_code == 200, r.text
    assert r.json()["keys_deleted"] > 0 and sorted(r.json()["ids"]) == sorted([customer, *anons])
    left = families(stack.redis_url, customer)
    assert set(left) == set(PERSON_FAMILIES) and all(v == [] for v in left.values()), left
    markers = {erasure_marker_key(f"c:{customer}"), *(erasure_marker_key(f"a:{a}") for a in anons)}
    assert set(keys_matching(stack.redis_url, customer, *anons)) == markers | {erasure_marker_key(f"a:{customer}")}
    assert httpx.get(f"{papi}/v1/profiles/{customer}/export").status_code == 404

    # tombstones (null values, one per id) on the compacted erasures topic
    assert _topic_config(stack.bootstrap, stack.erasures_topic) == "compact"
    tombstones = _tombstones(stack.bootstrap, stack.erasures_topic, {customer, *anons})
    assert {k: tombstones.get(k, b"missing") for k in (customer, *anons)} == dict.fromkeys((customer, *anons))

    # a fresh worker (a new consumer group) replays the whole events and decisions topics from the beginning
    group = f"replay-{tag}"
    fresh = worker_process(stack, log_dir, name=f"worker-replay-{tag}", command="ingest", WORKER_STREAM_GROUP=group,
                           WORKER_APP_ID=group, WORKER_DATA_DIR=f"/tmp/pulse-faust-{group}", **PROOFS).start()
    try:
        wait_until(lambda: _caught_up(stack.bootstrap, group, [stack.events_topic, stack.decisions_topic],
                                          stack.partitions),
                   timeout=120, interval=1.0, what="the fresh worker to replay both topics to their ends")
    finally:
        fresh.stop()
    left = families(stack.redis_url, customer)
    assert all(v == [] for v in left.values()), left
    assert set(keys_matching(stack.redis_url, customer, *anons)) == markers | {erasure_marker_key(f"a:{customer}")}


def test_a_retry_finishes_an_erasure_interrupted_halfway(stack: Stack, pworker: object, papi: str) -> None:
    tag = uuid.uuid4().hex[:6]
    customer, anon = f"cust-retry-{tag}", f"anon-retry-{tag}"
    produce(stack.bootstrap, stack.events_topic, [event("page_view", anon, category="hats")])
    counted(stack.redis_url, anon, "page_view", 1, customer=False)
    produce(stack.bootstrap, stack.events_topic, [identify(anon, customer)])
    counted(stack.redis_url, customer, "identify", 1, customer=True)

    async def halfway(store: Any) -> None:
        # what the first attempt did before it failed: the markers, the record of the ids it covers, and the
        # aliases set deleted (the one place the alias could be found) - its identity entry and profile remain
        client = store.redis
        await client.set(erasure_marker_key(f"c:{customer}"), str(int(time.time() * 1000) + 3_600_000), ex=3600)
        await client.sadd(erasure_pending_key(f"c:{customer}"), anon)
        await client.delete(aliases_key(customer))

    with_store(stack.redis_url, halfway)
    assert families(stack.redis_url, customer)["identity"]  # still there: the erasure is unfinished
    r = httpx.delete(f"{papi}/v1/profiles/{customer}")  # the retry
    assert r.status_code == 200 and anon in r.json()["ids"], r.text
    left = families(stack.redis_url, customer)
    assert all(v == [] for v in left.values()), left
    assert not [k for k in keys_matching(stack.redis_url, customer, anon) if not k.startswith("erased:")]
