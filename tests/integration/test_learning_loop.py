"""The learning loop on real Kafka and Redis: decisions -> rewards -> model -> serving."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from infra import local
from infra.processes import Stack, api_process, free_port, wait_http_ready, wait_until, worker_process
from tests.support import cluster_mode, read_topic, with_store

pytestmark = pytest.mark.integration
CONFIG = str(Path(__file__).parent / "config" / "learning.toml")


@pytest.fixture(scope="module", params=["one process", "ingest + learner"])
def loop_stack(request: pytest.FixtureRequest, kafka: local.KafkaService, redis_server: local.RedisService,
               log_dir: Path) -> Iterator[tuple]:
    """The whole loop with one worker process running every role, then with the roles split into an
    ``ingest`` process and a ``learner`` process (how it runs under load)."""
    # a Redis database per variant: the second must not start from the first one's models. A cluster has
    # database 0 alone: there the second variant starts from emptied masters instead
    if cluster_mode():
        url = redis_server.url
        if request.param != "one process":
            with_store(url, lambda store: store.redis.flushall())
    else:
        url = f"{redis_server.url.rsplit('/', 1)[0]}/{0 if request.param == 'one process' else 11}"
    stack = Stack(kafka.bootstrap, url)
    stack.create_topics()
    env = {"ENGINE_CONFIG": CONFIG}
    if request.param == "one process":
        workers = [worker_process(stack, log_dir, name=f"learn-worker-{stack.tag}", **env).start()]
    else:
        workers = [worker_process(stack, log_dir, name=f"ingest-{stack.tag}", command="ingest", **env).start(),
                   worker_process(stack, log_dir, name=f"learner-{stack.tag}", command="learner", **env).start()]
    port = free_port()
    api = api_process(stack, log_dir, port, **env).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(base, api)
        yield stack, base, workers[-1]
    finally:
        api.stop()
        for w in workers:
            w.stop()


def decide(base: str, placement: str, visitor: str) -> dict:
    r = httpx.post(f"{base}/v1/decide", json={"anonymous_id": visitor, "placement": placement})
    assert r.status_code == 200, r.text
    return r.json()


def click(base: str, visitor: str, decision: dict, event_id: str | None = None) -> None:
    ev = {"event_id": event_id or uuid.uuid4().hex, "type": "click", "timestamp": int(time.time() * 1000),
          "anonymous_id": visitor, "properties": {"decision_id": decision["decision_id"],
                                                  "action_id": decision["actions"][0]["action_id"]}}
    assert httpx.post(f"{base}/v1/events", json=ev).status_code == 202


def experiment(base: str, placement: str) -> dict:
    return httpx.get(f"{base}/v1/experiments/{placement}").json()


def learning_examples(stack: Stack, decision_ids: set[str], timeout: float = 30.0) -> list[dict]:
    """The examples of these decisions, once all are there and 1.5 s longer (a second copy would show up)."""
    found = read_topic(stack.bootstrap, stack.learning_topic,
                       lambda got: {orjson.loads(m.value)["decision_id"] for m in got} >= decision_ids, timeout,
                       keep=lambda m: orjson.loads(m.value).get("decision_id") in decision_ids, linger=1.5)
    return [orjson.loads(m.value) for m in found]


def test_rewards_raise_the_model_version_and_move_serving_toward_the_rewarded_action(loop_stack: tuple) -> None:
    stack, base, worker = loop_stack
    target = "offer-c"
    start_version = experiment(base, "offers")["model_versions"]["linucb"]
    shown = []
    for i in range(60):
        visitor = f"v-{stack.tag}-{i}"
        d = decide(base, "offers", visitor)
        shown.append(d["actions"][0]["action_id"])
        assert d["policy"] == "linucb" and 0 < d["propensity"] <= 1
        if d["actions"][0]["action_id"] == target:
            click(base, visitor, d)
        time.sleep(0.05)
    assert len(set(shown)) > 1, "the policy never explored"
    wait_until(lambda: experiment(base, "offers")["model_versions"]["linucb"] > start_version, timeout=30,
               what=f"a newer model in serving\n{worker.log_tail()}")
    time.sleep(2.5)  # let the unrewarded decisions' windows end and the last snapshot load

    def mostly_target() -> bool:
        tops = [decide(base, "offers", f"probe-{uuid.uuid4().hex[:6]}")["actions"][0]["action_id"]
                for _ in range(20)]
        return tops.count(target) >= 14
    wait_until(mostly_target, timeout=30, interval=1.0, what="serving to prefer the rewarded action")
    arms = experiment(base, "offers")["arms"]["learning"]
    assert arms["impressions"] >= 60 and arms["clicks"] >= 1 and arms["settled"] >= 1


def test_default_reward_is_learned_when_the_window_expires(loop_stack: tuple) -> None:
    stack, base, _ = loop_stack
    visitor = f"quiet-{stack.tag}"
    d = decide(base, "offers", visitor)  # never rewarded
    (example,) = learning_examples(stack, {d["decision_id"]})
    assert example["defaulted"] is True and example["reward"] == 0.0
    assert example["action_id"] == d["actions"][0]["action_id"]
    assert example["context"]["bias"] == 1.0  # the context as logged at decision time


def test_a_duplicated_reward_is_learned_once(loop_stack: tuple) -> None:
    stack, base, _ = loop_stack
    visitor = f"dup-{stack.tag}"
    before = experiment(base, "summed")["arms"].get("learning", {}).get("clicks", 0)
    d = decide(base, "summed", visitor)
    event_id = uuid.uuid4().hex
    click(base, visitor, d, event_id)
    click(base, visitor, d, event_id)  # a producer retry: same event_id
    examples = learning_examples(stack, {d["decision_id"]})
    assert len(examples) == 1
    assert examples[0]["reward"] == 1.0 and examples[0]["defaulted"] is False  # summed once, not twice
    assert experiment(base, "summed")["arms"]["learning"]["clicks"] == before + 1
