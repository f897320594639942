"""A Redis Cluster and a replicated Kafka on loopback, for the cluster tests and benchmarks.

``start_redis_cluster()`` runs ``infra/redis-cluster.sh`` (three masters, one replica each: six
``redis-server`` processes of Debian's package) and ``start_kafka_cluster()`` runs ``infra/kafka-cluster.sh``
(three KRaft nodes, replication factor 3, ``min.insync.replicas=2``), each on free loopback ports with a
throw-away data directory. Handles work like :mod:`infra.local`'s: ``start()``, ``stop()`` (data kept),
``close()`` (data removed), context managers, closed at exit; and they can kill one node the way a crash
would (SIGKILL), to test failover.

    with start_redis_cluster() as redis, start_kafka_cluster() as kafka:
        redis.url              # a seed node: REDIS_CLUSTER=1 REDIS_URL=<this>
        kafka.bootstrap        # every broker, comma-separated
        redis.kill_master_of("p:{c:42}")
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from infra.handles import LOOPBACK, InfraError, wait_until
from infra.local import _ScriptProcess

__all__ = ["KafkaCluster", "RedisCluster", "start_kafka_cluster", "start_redis_cluster"]

INFRA_DIR = Path(__file__).resolve().parent
#: a Redis Cluster node also listens on its port + 10000 (the cluster bus)
BUS_OFFSET = 10000


def _port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_node_ports(count: int, bus_offset: int = BUS_OFFSET, host: str = LOOPBACK) -> list[int]:
    """``count`` ports free on ``host`` whose ``port + bus_offset`` is free too (Redis Cluster's bus)."""
    rng = random.Random()
    out: list[int] = []
    for _ in range(2000):
        p = rng.randrange(20000, 65535 - bus_offset)
        if p not in out and p + bus_offset not in out and _port_free(p, host) and _port_free(p + bus_offset, host):
            out.append(p)
            if len(out) == count:
                return out
    raise InfraError(f"no {count} free port pairs (port, port + {bus_offset}) on {host}")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class RedisCluster(_ScriptProcess):
    """``masters`` masters with ``replicas`` replicas each, by ``infra/redis-cluster.sh``."""

    script = INFRA_DIR / "redis-cluster.sh"
    name = "redis-cluster"

    def __init__(self, masters: int = 3, replicas: int = 1, *, host: str = LOOPBACK,
                 node_timeout_ms: int = 2000) -> None:
        self.host = host
        self.ports = free_node_ports(masters * (replicas + 1), host=host)
        data = Path(tempfile.mkdtemp(prefix=f"pulse-redis-cluster-{self.ports[0]}-"))
        env = {"REDIS_HOST": host, "REDIS_CLUSTER_PORTS": " ".join(map(str, self.ports)),
               "REDIS_CLUSTER_MASTERS": str(masters), "REDIS_CLUSTER_REPLICAS": str(replicas),
               "REDIS_CLUSTER_DIR": str(data), "REDIS_CLUSTER_NODE_TIMEOUT": str(node_timeout_ms)}
        super().__init__(env, data, True)

    @property
    def url(self) -> str:
        """A seed node's URL; the cluster client discovers the rest."""
        return f"redis://{self.host}:{self.ports[0]}/0"

    @property
    def seeds_url(self) -> str:
        """Every node as a seed (``REDIS_URL`` with ``REDIS_CLUSTER=1``): the client starts while one is down."""
        return "redis://" + ",".join(f"{self.host}:{p}" for p in self.ports)

    @property
    def urls(self) -> list[str]:
        return [f"redis://{self.host}:{p}/0" for p in self.ports]

    def node_pid(self, port: int) -> int | None:
        return _pid(self.data_dir / str(port) / "redis.pid")

    def nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by a live node: address, flags, master id, slots."""
        for port in self.ports:
            try:  # redis-cli gives the raw text (redis-py parses it into its own shape)
                out = subprocess.run(["redis-cli", "-h", self.host, "-p", str(port), "cluster", "nodes"],
                                     capture_output=True, text=True, timeout=5, check=False)
            except subprocess.TimeoutExpired:
                continue
            if out.returncode != 0 or not out.stdout.strip() or "ERR" in out.stdout[:10]:
                continue
            rows = []
            for line in out.stdout.splitlines():
                f = line.split()
                rows.append({"id": f[0], "addr": f[1].split("@")[0], "flags": f[2], "master": f[3],
                             "slots": " ".join(f[8:])})
            return rows
        raise InfraError("no node of the cluster answers")

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        import redis

        slot = -1
        for port in self.ports:  # any live node computes the slot
            try:
                with redis.Redis(host=self.host, port=port, socket_timeout=2) as r:
                    slot = int(r.execute_command("CLUSTER KEYSLOT", key))
                break
            except redis.RedisError:
                continue
        for row in self.nodes():
            if "master" in row["flags"] and "fail" not in row["flags"]:
                for part in row["slots"].split():
                    lo, _, hi = part.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(row["addr"].rsplit(":", 1)[1])
        raise InfraError(f"no live master serves slot {slot}")

    def kill_master_of(self, key: str, timeout: float = 30.0) -> int:
        """SIGKILL the master of ``key``'s slot, wait until its replica took the slot over; its port."""
        port = self.master_of(key)
        pid = self.node_pid(port)
        if pid is None:
            raise InfraError(f"no pid file for node {port}")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: self._served_elsewhere(key, port), timeout=timeout, interval=0.2,
                   what=f"a replica to take over from {port}")
        return port

    def _served_elsewhere(self, key: str, dead: int) -> bool:
        try:
            return self.master_of(key) != dead
        except InfraError:
            return False

    def restart_node(self, port: int) -> None:
        """Start a killed node again (it rejoins as a replica of whoever took its slots)."""
        env = {**self._env, "REDIS_CLUSTER_NODE": "1", "REDIS_PORT": str(port),
               "REDIS_DATA_DIR": str(self.data_dir / str(port))}
        result = subprocess.run(["bash", str(INFRA_DIR / "redis.sh"), "start"], env=env, capture_output=True,
                                text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise InfraError(f"redis.sh start of node {port} failed:\n{result.stderr}")

    def __repr__(self) -> str:
        return f"RedisCluster(ports={self.ports!r}, data_dir={str(self.data_dir)!r})"


class KafkaCluster(_ScriptProcess):
    """Three (``nodes``) KRaft brokers with replication factor 3 and ``min.insync.replicas`` 2."""

    script = INFRA_DIR / "kafka-cluster.sh"
    name = "kafka-cluster"

    def __init__(self, nodes: int = 3, *, host: str = LOOPBACK, replication: int = 3, min_isr: int = 2,
                 partitions: int | None = None) -> None:
        from infra.handles import free_ports

        self.host = host
        ports = free_ports(2 * nodes, host)
        self.pairs = [(ports[2 * i], ports[2 * i + 1]) for i in range(nodes)]
        data = Path(tempfile.mkdtemp(prefix=f"pulse-kafka-cluster-{ports[0]}-"))
        env = {"KAFKA_HOST": host, "KAFKA_CLUSTER_PORTS": " ".join(f"{b}:{c}" for b, c in self.pairs),
               "KAFKA_CLUSTER_DIR": str(data), "KAFKA_REPLICATION": str(replication),
               "KAFKA_MIN_ISR": str(min_isr)}
        if partitions is not None:
            env["KAFKA_NUM_PARTITIONS"] = str(partitions)
        super().__init__(env, data, True)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{b}" for b, _ in self.pairs)

    def broker_pid(self, node_id: int) -> int | None:
        return _pid(self.data_dir / str(node_id) / "kafka.pid")

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL broker ``node_id`` (1-based), as a crash would."""
        pid = self.broker_pid(node_id)
        if pid is None:
            raise InfraError(f"no pid file for broker {node_id}")
        os.kill(pid, signal.SIGKILL)

    def __repr__(self) -> str:
        return f"KafkaCluster(bootstrap={self.bootstrap!r}, data_dir={str(self.data_dir)!r})"


def start_redis_cluster(masters: int = 3, replicas: int = 1) -> RedisCluster:
    return RedisCluster(masters, replicas).start()


def start_kafka_cluster(nodes: int = 3, partitions: int | None = None) -> KafkaCluster:
    return KafkaCluster(nodes, partitions=partitions).start()
