"""The real pipeline (worker and API processes, ``REDIS_CLUSTER=1``) on a 3-master Redis Cluster and a 3-broker
Kafka: events in, the profile read by decide, a decision joined, and an erasure that leaves none of the
person's keys on any node."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import redis

from engine.config import load_config
from engine.erasure import ErasureStore
from engine.layout import customer_subject, decisions_index_key
from engine.redis_connection import make_redis
from infra.cluster import RedisCluster
from tests.support import CONFIG_PATH, ManagedProcess, Stack, event, produce, profile_of, wait_until, with_store


def node_keys(cluster: RedisCluster, pattern: str) -> dict[int, list[str]]:
    """The keys matching ``pattern`` on every node (masters and replicas), by port."""
    out = {}
    for port in cluster.ports:
        with redis.Redis(host=cluster.host, port=port, decode_responses=True, socket_timeout=5) as r:
            out[port] = sorted(r.scan_iter(match=pattern, count=1000))
    return out


def family_keys(seeds_url: str, person: str) -> dict[str, list[str]]:
    async def run() -> dict[str, list[str]]:
        client = make_redis(seeds_url, cluster=True, decode_responses=True)
        try:
            return await ErasureStore(client, load_config(CONFIG_PATH), 86400).family_keys(person)
        finally:
            await client.aclose()
    return asyncio.run(run())


def test_events_profile_decide_and_erasure_on_the_cluster(
        redis_cluster: RedisCluster, cstack: Stack, cworker: ManagedProcess, capi: str) -> None:
    tag = uuid.uuid4().hex[:6]
    customer, anon = f"cust-{tag}", f"anon-{tag}"
    # visitors spread over the three masters; the person browses anonymously, identifies, then clicks
    others = [f"v-{tag}-{i}" for i in range(30)]
    events = [event("page_view", v, category="books", item_id=f"sku-{i}") for i, v in enumerate(others)]
    events += [event("page_view", anon, category="hats", item_id="sku-hat-2") for _ in range(3)]
    produce(cstack.bootstrap, cstack.events_topic, events)
    wait_until(lambda: profile_of(cstack.redis_url, anon, customer=False).counts.get("page_view") == 3,
               timeout=90, what="the anonymous profile")
    identify = event("identify", customer, customer=True)
    identify["anonymous_id"] = anon
    produce(cstack.bootstrap, cstack.events_topic,
            [identify, *(event("click", customer, customer=True, category="hats", item_id="sku-hat-1")
                         for _ in range(2))])
    p = wait_until(lambda: (lambda q: q if q.counts.get("click") == 2 else None)(
        profile_of(cstack.redis_url, customer, customer=True)), timeout=60, what="the customer's clicks")
    assert p.counts["page_view"] == 3  # merged from the anonymous profile (another slot, another node maybe)
    for v in others:
        assert profile_of(cstack.redis_url, v, customer=False).counts == {"page_view": 1}

    # the hot single keys are sharded: every master takes some of the popularity writes (by partition), the
    # worker counters go to random shards and are summed on read
    masters = [int(n["addr"].rsplit(":", 1)[1]) for n in redis_cluster.nodes()
               if "master" in n["flags"] and "fail" not in n["flags"]]
    held = {port: keys for port, keys in node_keys(redis_cluster, "pop:{global*}").items() if port in masters}
    assert all(held.values()), held
    counters = with_store(cstack.redis_url, lambda store: store.read_worker_counters())
    assert int(counters["events_received"]) == len(events) + 3, counters

    body = {"customer_id": customer, "placement": "home_hero", "n": 3}
    answer = wait_until(lambda: (lambda a: a if a["actions"][0]["action_id"] == "promo-sun-hats" else None)(
        httpx.post(f"{capi}/v1/decide", json=body, timeout=10).json()), timeout=30, what="a personalised decision")
    assert answer["personalised"] is True and answer["degraded"] is False
    # the decision record goes through Kafka to the worker's reward join, indexed under the person
    seeds = cstack.redis_url
    client = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        wait_until(lambda: client.sismember(decisions_index_key(customer_subject(customer)),
                                            answer["decision_id"]), timeout=60, what="the decision indexed")
    finally:
        client.close()
    assert family_keys(seeds, customer)["reward_join"], "the decision's join state exists before the erasure"

    r = httpx.delete(f"{capi}/v1/profiles/{customer}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == [customer, anon]
    assert all(not keys for keys in family_keys(seeds, customer).values())
    time.sleep(1.0)  # replicas follow their masters asynchronously
    for pattern in (f"*{customer}*", f"*{anon}*"):
        left = {port: [k for k in keys if not k.startswith("erased:")]  # the markers stay, on purpose
                for port, keys in node_keys(redis_cluster, pattern).items()}
        assert all(not keys for keys in left.values()), left
    # the others are untouched, and a new event of the erased person is refused
    assert profile_of(cstack.redis_url, others[0], customer=False).counts == {"page_view": 1}
