"""Kafka taken away: stopped during ingest and during reward expiry, and the API SIGKILLed with decision
records buffered. Each scenario runs on its own broker (it stops it) and its own Redis (worker counters are
per Redis), so the session's shared services are untouched.

The outage lasts ``CHAOS_KAFKA_OUTAGE_S`` seconds: 15 in ``make test``, 60 in ``make chaos``."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from infra import local
from tests.support import (
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    profile_of,
    start_or_fail,
    wait_http_ready,
    wait_until,
    with_key,
    with_store,
    worker_process,
)

pytestmark = pytest.mark.integration
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
