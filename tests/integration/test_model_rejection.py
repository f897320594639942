"""A running API on real Kafka and Redis keeps its last good model when a bad snapshot is written to Redis:
forged (another key), a replay (an older blob re-published), mislabelled (another placement's blob) or a
pickle in the old format; each is counted in ``pulse_model_rejected_total{reason}`` once, and a good
snapshot after them is loaded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from engine.learning_store import LearningStore
from engine.policies import Candidate, LinearThompson
from engine.settings import load_settings
from engine.snapshots import dump_model
from infra import local
from infra.processes import Stack, api_process, free_port, wait_http_ready, wait_until
from tests.test_snapshots import _old_format_blob

pytestmark = pytest.mark.integration
PLACEMENT, POLICY = "product_recs", "linear_thompson"
NAME = f"{PLACEMENT}/{POLICY}"
KEY = load_settings().model_signing_key.encode()  # what the API process inherits
DB = 12  # a database of its own: no other test's learner publishes here


@pytest.fixture(scope="module")
def api_on_db(kafka: local.KafkaService, redis_server: local.RedisService, log_dir: Path) -> Iterator[tuple[str, str]]:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{DB}"
    stack = Stack(kafka.bootstrap, url)
    stack.create_topics()
    asyncio.run(_flush(url))
    port = free_port()
    proc = api_process(stack, log_dir, port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(base, proc)
        yield base, url
    finally:
        proc.stop()
        asyncio.run(_flush(url))


async def _flush(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def _publish(url: str, version: int, blob: bytes, name: str = NAME) -> None:
    async def go() -> None:
        client = aioredis.from_url(url, decode_responses=True)
        try:
            await LearningStore(client).publish_model(name, version, blob)
        finally:
            await client.aclose()
    asyncio.run(go())


def _served_version(base: str) -> int:
    return int(httpx.get(f"{base}/v1/experiments/{PLACEMENT}").json()["model_versions"][POLICY])


def _rejected(base: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("pulse_model_rejected_total{"):
            labels, value = line.rsplit(" ", 1)
            if reason := labels.split('"')[1]:  # (no rejection yet renders one line with an empty label)
                out[reason] = float(value)
    return out


def _trained(n: int, seed: int) -> LinearThompson:
    policy = LinearThompson(shared_dims=0, epsilon=0.05)
    rng = random.Random(seed)
    for _ in range(n):
        policy.learn_one({"aff_category:shoes": rng.random()}, Candidate(f"rec-shoe-{rng.randint(1, 2)}"),
                         float(rng.random() < 0.3))
    return policy


def test_serving_keeps_the_last_good_model_and_counts_every_refused_snapshot(api_on_db: tuple[str, str]) -> None:
    base, url = api_on_db
    good = _trained(50, seed=1)
    v1 = dump_model(good, 1, KEY, name=NAME)
    _publish(url, 1, v1)
    wait_until(lambda: _served_version(base) == 1, timeout=20, what="v1 loaded")
    assert _rejected(base) == {}

    bad = [
        ("signature", 2, dump_model(_trained(80, seed=2), 2, b"an-attacker-key-that-is-long-enough", name=NAME)),
        ("replay", 3, v1),  # the old, genuine blob re-published under a newer version
        ("name", 4, dump_model(_trained(80, seed=3), 4, KEY, name=f"home_hero/{POLICY}")),
        ("format", 5, _old_format_blob(_trained(80, seed=4), KEY)),  # a pickle, even correctly signed
    ]
    for n, (reason, version, blob) in enumerate(bad, start=1):
        _publish(url, version, blob)
        def counted(r: str = reason) -> bool:
            return _rejected(base).get(r) == 1

        wait_until(counted, timeout=20, what=f"a {reason} rejection counted")
        assert _served_version(base) == 1  # the last good model stays
        decided = httpx.post(f"{base}/v1/decide", json={"anonymous_id": f"v-{n}", "placement": PLACEMENT})
        assert decided.status_code == 200 and decided.json()["actions"]
    assert _rejected(base) == {"signature": 1, "replay": 1, "name": 1, "format": 1}  # once per publication

    _publish(url, 6, dump_model(_trained(120, seed=5), 6, KEY, name=NAME))
    wait_until(lambda: _served_version(base) == 6, timeout=20, what="a good v6 loaded after the bad ones")
    assert _rejected(base) == {"signature": 1, "replay": 1, "name": 1, "format": 1}
