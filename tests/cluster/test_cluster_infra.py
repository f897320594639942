"""The local cluster infrastructure does what the failover tests rely on: a killed Redis master's replica
takes its slots with the data it had acknowledged, and a 3-broker Kafka with ``min.insync.replicas=2`` keeps
accepting and serving every acknowledged record with one broker down."""

from __future__ import annotations

import asyncio

import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import ClusterDownError

from engine.kafka_client import kafka_client_kwargs
from infra.cluster import KafkaCluster, RedisCluster
from infra.handles import wait_until


def test_redis_cluster_has_three_masters_with_a_replica_each(redis_cluster: RedisCluster) -> None:
    nodes = redis_cluster.nodes()
    masters = [n for n in nodes if "master" in n["flags"]]
    replicas = [n for n in nodes if "slave" in n["flags"]]
    assert len(masters) == 3 and len(replicas) == 3
    assert {r["master"] for r in replicas} == {m["id"] for m in masters}  # one replica per master


def test_a_killed_master_is_replaced_by_its_replica_with_the_acknowledged_writes(
        redis_cluster: RedisCluster) -> None:
    client = ClusterClient.from_url(redis_cluster.url, decode_responses=True)
    keys = [f"p:{{c:{i}}}" for i in range(300)]  # the profile key family's hash tags, spread over the slots
    for k in keys:
        client.hset(k, mapping={"cv": 1, "id": k})
    # replication is asynchronous: WAIT on every master is the "acknowledged by a replica" point
    for node in client.get_primaries():
        assert client.execute_command("WAIT", 1, 5000, target_nodes=node) >= 1
    victim = keys[0]
    dead = redis_cluster.kill_master_of(victim)
    assert redis_cluster.master_of(victim) != dead

    seed = next(p for p in redis_cluster.ports if p != dead)
    fresh = ClusterClient(host=redis_cluster.host, port=seed, decode_responses=True)

    def all_readable() -> bool:
        try:
            return all(fresh.hget(k, "id") == k for k in keys)
        except (redis.ConnectionError, ClusterDownError, redis.TimeoutError):
            return False

    assert wait_until(all_readable, timeout=30, interval=0.5, what="every key readable after the failover")
    # the killed node comes back as a replica of the node that took its slots
    redis_cluster.restart_node(dead)
    wait_until(lambda: any(n["addr"].endswith(f":{dead}") and "slave" in n["flags"]
                           for n in redis_cluster.nodes()), timeout=30, what=f"{dead} back as a replica")
    client.close()
    fresh.close()


def test_kafka_keeps_every_acknowledged_record_with_a_broker_down(kafka_cluster: KafkaCluster) -> None:
    async def scenario() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap, **kafka_client_kwargs())
        await admin.start()
        try:
            await admin.create_topics([NewTopic("events-rf3", num_partitions=4, replication_factor=3)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_cluster.bootstrap, acks="all",
                                    enable_idempotence=True, request_timeout_ms=15000,
                                    **kafka_client_kwargs())
        await producer.start()
        acked = []
        try:
            for i in range(200):
                await producer.send_and_wait("events-rf3", str(i).encode(), key=str(i % 8).encode())
                acked.append(i)
            kafka_cluster.kill_broker(2)
            for i in range(200, 400):
                await producer.send_and_wait("events-rf3", str(i).encode(), key=str(i % 8).encode())
                acked.append(i)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer("events-rf3", bootstrap_servers=kafka_cluster.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                                    **kafka_client_kwargs())
        await consumer.start()
        seen: set[int] = set()
        try:
            while len(seen) < len(acked):
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 60)
                for records in batch.values():
                    seen.update(int(r.value) for r in records)
        finally:
            await consumer.stop()
        assert seen == set(acked)

    asyncio.run(scenario())
