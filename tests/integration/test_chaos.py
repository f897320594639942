"""Kafka taken away: stopped during ingest and during reward expiry, and the API SIGKILLed with decision
records buffered. Each scenario runs on its own broker (it stops it) and its own Redis (worker counters are
per Redis), so the session's shared services are untouched.

The outage lasts ``CHAOS_KAFKA_OUTAGE_S`` seconds: 15 in ``make test``, 60 in ``make chaos``."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from engine.kafka_client import kafka_client_kwargs
from engine.layout import arms_key, decision_key
from infra import local
from tests.integration.test_faults import redis_call
from tests.support import (
    ManagedProcess,
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce,
    profile_of,
    read_topic,
    start_or_fail,
    wait_http_ready,
    wait_until,
    with_key,
    with_store,
    worker_process,
)

pytestmark = pytest.mark.integration
LEARNING_CONFIG = str(Path(__file__).parent / "config" / "learning.toml")
OUTAGE_S = float(os.environ.get("CHAOS_KAFKA_OUTAGE_S", "15"))


@pytest.fixture
def own_kafka() -> Iterator[local.KafkaService]:
    svc = start_or_fail("Kafka", local.start_kafka)
    yield svc
    svc.close()


@pytest.fixture
def own_redis() -> Iterator[local.RedisService]:
    svc = start_or_fail("Redis", local.start_redis)
    yield svc
    svc.close()


def counts_of(redis_url: str, visitors: list[str]) -> list[int]:
    return [profile_of(redis_url, v).counts.get("page_view", 0) for v in visitors]


def worker_counters(url: str) -> dict[str, float]:
    return {k: float(v) for k, v in with_store(url, lambda store: store.read_worker_counters()).items()}


@dataclass
class Client:
    """A collector client as a site's SDK would be: it resends a refused request, unchanged (same event
    ids), after the Retry-After it was given, until the collector takes it with 202."""

    url: str
    visitors: list[str]
    per_request: int = 10
    pause: float = 0.05
    accepted: dict[str, int] = field(default_factory=dict)  # per visitor, events answered 202
    answers: list[tuple[float, float, int, str | None]] = field(default_factory=list)  # (start, end, status, RA)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        i = 0
        with httpx.Client(timeout=60) as http:
            while not self.stop.is_set():
                visitor = self.visitors[i % len(self.visitors)]
                i += 1
                body = [event("page_view", visitor, category="books") for _ in range(self.per_request)]
                while True:
                    t0 = time.monotonic()
                    try:
                        r = http.post(f"{self.url}/v1/events", json=body)
                    except httpx.HTTPError as exc:  # the API itself must stay up
                        self.errors.append(repr(exc))
                        time.sleep(0.5)
                        continue
                    self.answers.append((t0, time.monotonic(), r.status_code, r.headers.get("retry-after")))
                    if r.status_code == 202:
                        self.accepted[visitor] = self.accepted.get(visitor, 0) + len(body)
                        break
                    if r.status_code != 503:
                        self.errors.append(f"{r.status_code}: {r.text[:300]}")
                        break
                    time.sleep(min(float(r.headers.get("retry-after") or 1), 1.0))
                time.sleep(self.pause)


def test_kafka_stopped_during_ingest_pauses_and_resumes_with_exact_counts(
    own_kafka: local.KafkaService, own_redis: local.RedisService, log_dir: Path
) -> None:
    stack = Stack(own_kafka.bootstrap, own_redis.url)
    stack.create_topics()
    visitors = [f"outage-{stack.tag}-{i}" for i in range(20)]
    worker = worker_process(stack, log_dir, name=f"outage-worker-{stack.tag}", WORKER_BATCH_SIZE="50",
                            WORKER_COMMIT_INTERVAL="5").start()
    port = free_port()
    api = api_process(stack, log_dir, port, **keys_env()).start()
    base = f"http://127.0.0.1:{port}"
    client = Client(with_key(base), visitors)
    sender = threading.Thread(target=client.run, daemon=True)
    try:
        wait_http_ready(base, api, timeout=60)
        sender.start()
        wait_until(lambda: sum(counts_of(stack.redis_url, visitors)) >= 200, timeout=90,
                   what=f"ingest to run\n{worker.log_tail()}")
        own_kafka.stop()  # mid-stream: the client keeps sending, the worker has uncommitted batches
        stopped = time.monotonic()
        time.sleep(OUTAGE_S)
        restart = time.monotonic()
        own_kafka.start()
        time.sleep(5.0)  # ingest after the outage too
        client.stop.set()
        sender.join(120)
        assert not sender.is_alive(), (client.answers[-5:], len(client.answers), api.log_tail())
        assert not client.errors, client.errors[:5]
        during = [(t1 - t0, st, ra) for t0, t1, st, ra in client.answers if t0 > stopped and t1 < restart]
        assert during, "no request was answered during the outage"
        assert all(st == 503 and ra is not None for _, st, ra in during), during[:5]
        wanted = [client.accepted.get(v, 0) for v in visitors]
        wait_until(lambda: counts_of(stack.redis_url, visitors) == wanted, timeout=120, interval=0.5,
                   what=f"every accepted event applied once\n{worker.log_tail()}")
        time.sleep(2.0)  # anything applied twice would show now
        assert counts_of(stack.redis_url, visitors) == wanted
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        # the pause: logged, counted (a commit of the batches applied just before the outage waited for it)
        wait_until(lambda: worker_counters(stack.redis_url).get("kafka_pauses", 0) >= 1, timeout=10,
                   what=f"the pause to be counted\n{worker.log_tail()}")
        log = worker.log_path.read_text(errors="replace")
        assert "kafka unavailable" in log and "resumed" in log, worker.log_tail()
        paused = worker_counters(stack.redis_url).get("kafka_pause_seconds", 0)
        print(f"outage {OUTAGE_S:.0f}s: {sum(wanted)} events accepted, {len(during)} answers 503 during it, "
              f"worker paused {paused:.1f}s")
    finally:
        client.stop.set()
        api.stop()
        worker.stop()


def decision_record(decision_id: str, visitor: str, ts: float) -> dict[str, Any]:
    return {"decision_id": decision_id, "placement": "offers", "context": {"bias": 1.0},
            "candidates": ["offer-a", "offer-b"], "actions": [{"action_id": "offer-a", "score": 1.0}],
            "propensity": 0.5, "policy": "linucb", "model_version": "0", "holdout_arm": "learning",
            "degraded": False, "timestamp": int(ts * 1000), "anonymous_id": visitor}


def learning_examples(bootstrap: str, topic: str, wanted: set[str], timeout: float = 60.0) -> list[dict]:
    """The examples of ``wanted`` decisions on the learning topic (from its start), once all are there
    and a little longer (a second copy would show up then)."""
    found = read_topic(bootstrap, topic, lambda got: {orjson.loads(m.value)["decision_id"] for m in got} >= wanted,
                       timeout, keep=lambda m: orjson.loads(m.value).get("decision_id") in wanted, linger=2.0)
    return [orjson.loads(m.value) for m in found]


def test_kafka_stopped_while_reward_windows_expire_sends_every_example_once(
    own_kafka: local.KafkaService, own_redis: local.RedisService, log_dir: Path
) -> None:
    stack = Stack(own_kafka.bootstrap, own_redis.url)
    stack.create_topics()
    # a lease shorter than the outage: the expiry finds the unsettled decisions due again while Kafka is away
    env = {"ENGINE_CONFIG": LEARNING_CONFIG, "REWARD_SETTLE_LEASE_S": "4"}
    rewarded = [uuid.uuid4().hex for _ in range(10)]  # clicked before the outage: learned at once
    expiring = [uuid.uuid4().hex for _ in range(40)]  # never rewarded: their windows end during the outage
    ids = rewarded + expiring

    def state(field: str) -> list[str | None]:
        return redis_call(stack.redis_url, lambda r: asyncio.gather(*(r.hget(decision_key(d), field) for d in ids)))

    worker = worker_process(stack, log_dir, name=f"expiry-outage-worker-{stack.tag}", **env).start()
    try:
        sentinel = f"sentinel-{stack.tag}"
        produce(stack.bootstrap, stack.events_topic, [event("page_view", sentinel)])
        wait_until(lambda: counts_of(stack.redis_url, [sentinel]) == [1], timeout=90,
                   what=f"the worker to start\n{worker.log_tail()}")
        now = time.time()
        produce(stack.bootstrap, stack.decisions_topic,
                [decision_record(d, f"v-{i}", now + 15.0) for i, d in enumerate(rewarded)]
                + [decision_record(d, f"w-{i}", now + 15.0) for i, d in enumerate(expiring)])
        produce(stack.bootstrap, stack.events_topic,
                [event("click", f"v-{i}", decision_id=d, action_id="offer-a") for i, d in enumerate(rewarded)])
        wait_until(lambda: all(state("record")), timeout=30, what=f"the decisions to be joined\n{worker.log_tail()}")
        wait_until(lambda: all(state("settled")[:len(rewarded)]), timeout=30,
                   what=f"the clicked decisions to be learned\n{worker.log_tail()}")
        assert not any(state("final")[len(rewarded):]), "a window ended before the outage: the test proves nothing"
        own_kafka.stop()
        stopped = time.monotonic()
        wait_until(lambda: all(v == "1" for v in state("final")), timeout=30,
                   what=f"the expiry to fix the rewards while Kafka is away\n{worker.log_tail()}")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        assert not any(state("settled")[len(rewarded):]), "settled before Kafka acknowledged the examples"
        own_kafka.start()
        examples = learning_examples(stack.bootstrap, stack.learning_topic, set(ids))
        by_id = Counter(e["decision_id"] for e in examples)
        assert by_id == Counter(ids), {d: n for d, n in by_id.items() if n != 1}  # each once: none lost, none twice
        assert all(e["defaulted"] and e["reward"] == 0.0 for e in examples if e["decision_id"] in set(expiring))
        wait_until(lambda: all(v == "1" for v in state("settled")), timeout=30, what="settlement")
        learned = redis_call(stack.redis_url, lambda r: r.hget(arms_key("offers"), "learning:learned"))
        assert int(learned) == len(ids)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        wait_until(lambda: worker_counters(stack.redis_url).get("kafka_pauses", 0) >= 1, timeout=10,
                   what=f"the pause to be counted\n{worker.log_tail()}")
        print(f"reward expiry, Kafka stopped {OUTAGE_S:.0f}s: {len(ids)} examples, each once")
    finally:
        worker.stop()


def topic_ids(bootstrap: str, topic: str, idle: float = 4.0) -> Counter[str]:
    """How many times each decision id is on ``topic``, read from its start until nothing came for ``idle`` s."""
    async def read() -> Counter[str]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                    **kafka_client_kwargs())
        await consumer.start()
        found: Counter[str] = Counter()
        try:
            last = time.monotonic()
            while time.monotonic() - last < idle:
                for msgs in (await consumer.getmany(timeout_ms=300)).values():
                    found.update(orjson.loads(m.value)["decision_id"] for m in msgs)
                    last = time.monotonic()
            return found
        finally:
            await consumer.stop()
    return asyncio.run(read())


def unacked_records(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith("pulse_decision_log_unacknowledged "):
            return float(line.split()[1])
    raise AssertionError("no pulse_decision_log_unacknowledged in /metrics")


def decide(http: httpx.Client, base: str, visitor: str) -> str:
    r = http.post(f"{base}/v1/decide", json={"anonymous_id": visitor, "placement": "home_hero"})
    assert r.status_code == 200, r.text
    return str(r.json()["decision_id"])


#: the API's bound on unacknowledged decision records in this test (DECISION_LOG_MAX_BUFFERED)
MAX_UNACKED = 300


def test_an_api_killed_with_decision_records_buffered_loses_at_most_its_bound(
    own_kafka: local.KafkaService, own_redis: local.RedisService, log_dir: Path
) -> None:
    stack = Stack(own_kafka.bootstrap, own_redis.url)
    stack.create_topics()

    def start_api(name: str) -> tuple[ManagedProcess, str]:
        port = free_port()
        proc = api_process(stack, log_dir, port, DECISION_LOG_MAX_BUFFERED=str(MAX_UNACKED), **keys_env())
        proc.name = name
        proc.log_path = log_dir / f"{name}-{stack.tag}.log"
        proc.start()
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(base, proc, timeout=60)
        return proc, with_key(base)

    # 1. Kafka stopped: every decision answered stays unacknowledged, so the kill loses exactly what the gauge
    # showed, and that can never pass the bound
    api, url = start_api("api-held")
    try:
        with httpx.Client(timeout=10) as http:
            warm = [decide(http, url, f"warm-{i}") for i in range(20)]
            wait_until(lambda: unacked_records(url) == 0, timeout=30, what="the warm-up records acknowledged")
            own_kafka.stop()
            held = [decide(http, url, f"held-{i}") for i in range(200)]
            shown = unacked_records(url)
        api.kill()
    finally:
        api.kill()
        own_kafka.start()
    on_topic = topic_ids(stack.bootstrap, stack.decisions_topic)
    assert all(on_topic[d] == 1 for d in warm)
    lost_held = sum(1 for d in held if d not in on_topic)
    assert shown == len(held) and lost_held == shown <= MAX_UNACKED, (shown, lost_held)

    # 2. Kafka healthy, the API killed under load: it loses the records of its last few milliseconds
    api, url = start_api("api-loaded")
    answered: list[str] = []
    stop = threading.Event()

    def load(n: int) -> None:
        with httpx.Client(timeout=10) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    answered.append(decide(http, url, f"load-{n}-{i % 50}"))
                except httpx.HTTPError:
                    return  # the API is gone
    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(answered) >= 1500, timeout=60, what="decisions under load")
        api.kill()
    finally:
        stop.set()
        api.kill()
        for t in threads:
            t.join(15)
    on_topic = topic_ids(stack.bootstrap, stack.decisions_topic)
    lost = sum(1 for d in answered if d not in on_topic)
    assert lost <= MAX_UNACKED, lost
    assert all(on_topic[d] <= 1 for d in answered)
    print(f"API SIGKILLed: Kafka stopped {lost_held}/{len(held)} lost (gauge {shown:.0f}); under load "
          f"{lost}/{len(answered)} lost; bound {MAX_UNACKED}")


def test_a_worker_killed_between_reward_expiry_and_the_kafka_flush_loses_no_learning_example(
    own_kafka: local.KafkaService, own_redis: local.RedisService, log_dir: Path
) -> None:
    kafka = own_kafka
    stack = Stack(kafka.bootstrap, own_redis.url)
    stack.create_topics()
    env = {"ENGINE_CONFIG": LEARNING_CONFIG, "REWARD_SETTLE_LEASE_S": "3"}
    n = 20
    ids = [uuid.uuid4().hex for _ in range(n)]

    def state(field: str) -> list[Any]:
        return redis_call(stack.redis_url, lambda r: asyncio.gather(*(r.hget(decision_key(d), field) for d in ids)))

    worker = worker_process(stack, log_dir, name=f"expiry-worker-{stack.tag}", **env).start()
    try:
        sentinel = f"sentinel-{stack.tag}"
        produce(stack.bootstrap, stack.events_topic, [event("page_view", sentinel)])
        wait_until(lambda: counts_of(stack.redis_url, [sentinel]) == [1], timeout=90,
                   what=f"the worker to start\n{worker.log_tail()}")
        # decisions whose reward windows end once Kafka is stopped, never rewarded: the expiry fixes each one's
        # default reward and sends its example, which Kafka cannot acknowledge
        produce(stack.bootstrap, stack.decisions_topic,
                [decision_record(d, f"v-{i}", time.time() + 15.0) for i, d in enumerate(ids)])
        wait_until(lambda: all(state("record")), timeout=30, what=f"the decisions to be joined\n{worker.log_tail()}")
        kafka.stop()  # the examples the expiry sends now cannot be acknowledged
        try:
            wait_until(lambda: all(v == "1" for v in state("final")), timeout=30,
                       what=f"the expiry to fix the rewards\n{worker.log_tail()}")
            worker.kill()  # between the expiry and the flush
            assert not any(state("settled")), "settled before Kafka had the examples"
        finally:
            kafka.start()
        worker = worker_process(stack, log_dir, name=f"expiry-worker2-{stack.tag}", **env).start()
        examples = learning_examples(stack.bootstrap, stack.learning_topic, set(ids))
        assert sorted(e["decision_id"] for e in examples) == sorted(ids)  # each once: none lost, none twice
        assert all(e["defaulted"] and e["reward"] == 0.0 for e in examples)
        wait_until(lambda: all(v == "1" for v in state("settled")), timeout=30, what="settlement")
        learned = redis_call(stack.redis_url, lambda r: r.hget(arms_key("offers"), "learning:learned"))
        assert int(learned) == n
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    finally:
        worker.stop()
