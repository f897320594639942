"""The decide request contract and its OpenAPI description, without infrastructure."""

from typing import Any

import orjson
import pytest

from engine.config import load_config
from engine.settings import REPO_ROOT
from serving.decide import DecideRequest, DecideRequestError, parse_decide_request

CFG = load_config(REPO_ROOT / "config" / "engine.toml")


def parse(body: dict[str, Any]) -> DecideRequest:
    return parse_decide_request(orjson.dumps(body), CFG)


def test_valid_request_defaults_n_to_the_placement() -> None:
    req = parse({"anonymous_id": "a", "placement": "home_hero", "context": {"channel": "web"}})
    assert req.n == CFG.placements["home_hero"].max_items and req.candidates is None


@pytest.mark.parametrize(("body", "reason"), [
    ({"anonymous_id": "a"}, "placement: unknown placement None"),
    ({"anonymous_id": "a", "placement": "nope"}, "unknown placement 'nope'"),
    ({"anonymous_id": "", "placement": "home_hero"}, "anonymous_id: must be a non-empty string"),
    ({"customer_id": 5, "placement": "home_hero"}, "customer_id"),
    ({"anonymous_id": "a", "placement": "home_hero", "n": 0}, "n: must be an integer from 1"),
    ({"anonymous_id": "a", "placement": "home_hero", "n": True}, "n: must be an integer"),
    ({"anonymous_id": "a", "placement": "home_hero", "candidates": ["ghost"]}, "unknown action ids ['ghost']"),
    ({"anonymous_id": "a", "placement": "home_hero", "context": []}, "context: must be an object"),
    # issue 16: repeated candidates, more than the catalogue, oversized context
    ({"placement": "home_hero", "candidates": ["promo-winter-jackets"] * 2}, "candidates: 'promo-winter-jackets' is "
                                                                            "repeated"),
    ({"placement": "home_hero", "candidates": sorted(CFG.actions) * 2}, f"candidates: {2 * len(CFG.actions)} ids, "
                                                                        f"more than the {len(CFG.actions)} actions"),
    ({"placement": "home_hero", "context": {f"k{i}": 1 for i in range(33)}}, "context: at most 32 members, got 33"),
    ({"placement": "home_hero", "context": {"segment": "x" * 257}}, "context.segment: at most 256 characters"),
    ({"placement": "home_hero", "context": {"segment": {"a": 1}}}, "context.segment: must be a string, number"),
    ({"placement": "home_hero", "n": 95.5}, "n: must be an integer"),
])
def test_invalid_requests_say_why(body: dict, reason: str) -> None:
    with pytest.raises(DecideRequestError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse(body)


def test_what_the_openapi_allows_is_accepted() -> None:
    req = parse({"customer_id": None, "anonymous_id": "a", "placement": "home_hero", "n": 95.0,
                 "context": {"segment": None, "channel": "web", "returning": True}, "candidates": None})
    assert req.n == 95 and req.candidates is None and req.context["segment"] is None
    assert parse({"placement": "home_hero", "context": None}).context == {}


def test_not_json_is_a_clear_error() -> None:
    with pytest.raises(DecideRequestError, match="not valid JSON"):
        parse_decide_request(b"{", CFG)


def test_openapi_documents_the_final_shapes() -> None:
    from serving.app import create_app

    spec = create_app().openapi()
    decide = spec["paths"]["/v1/decide"]["post"]
    req = decide["requestBody"]["content"]["application/json"]["schema"]
    assert req["required"] == ["placement"]
    resp = decide["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
    assert {"decision_id", "actions", "policy", "model_version", "degraded", "holdout_arm", "propensity"} <= set(resp)
    assert {"202", "413", "422", "503"} <= set(spec["paths"]["/v1/events"]["post"]["responses"])
    assert req["properties"]["placement"]["enum"] == sorted(CFG.placements)
    assert req["properties"]["candidates"]["maxItems"] == len(CFG.actions)
    assert req["properties"]["candidates"]["items"]["enum"] == sorted(CFG.actions)
    assert "413" in decide["responses"]


# -- decision records in batches, and the fast path in front of FastAPI -----------------------------------


class _FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.capacity = capacity

    def append(self, *, timestamp: object, key: bytes, value: bytes) -> object:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()


class _FakeProducer:
    """What DecisionLog uses of AIOKafkaProducer: metadata, create_batch, send_batch."""

    def __init__(self, partitions: int, fail_partition: int | None = None, capacity: int = 3) -> None:
        import types

        self.client = types.SimpleNamespace(cluster=types.SimpleNamespace(
            partitions_for_topic=lambda topic: set(range(partitions))))
        self.sent: list[tuple[int, list[tuple[bytes, bytes]]]] = []
        self.fail_partition, self.capacity = fail_partition, capacity

    def create_batch(self) -> _FakeBatch:
        return _FakeBatch(self.capacity)

    async def send_batch(self, batch: _FakeBatch, topic: str, *, partition: int) -> object:
        import asyncio

        self.sent.append((partition, batch.records))
        delivery = asyncio.get_running_loop().create_future()
        if partition == self.fail_partition:
            delivery.set_exception(RuntimeError("broker said no"))
        else:
            delivery.set_result(None)
        return delivery


def test_decision_records_go_in_batches_one_record_per_decision_on_the_key_partition() -> None:
    import asyncio

    from aiokafka.partitioner import DefaultPartitioner

    from serving.decision_log import DecisionLog
    from serving.metrics import ServingMetrics

    producer, metrics = _FakeProducer(partitions=4, fail_partition=None), ServingMetrics()
    records = [(f"visitor-{i % 5}".encode(), f'{{"n":{i}}}'.encode()) for i in range(23)]

    async def run() -> None:
        log = DecisionLog(producer, "decisions", metrics, flush_interval=0.001)
        for key, value in records:
            log.publish(key, value)
        assert producer.sent == []  # nothing sent from the request path
        await asyncio.sleep(0.05)
        await log.close()

    asyncio.run(run())
    sent = [(p, r) for p, batch in producer.sent for r in batch]
    assert sorted(r for _, r in sent) == sorted(records)  # every decision once, one record each
    for partition, (key, _) in sent:  # the producer's own partitioner: a visitor stays on one partition
        assert partition == DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3])
    for key in {k for k, _ in records}:  # and in order
        assert [v for _, (k, v) in sent if k == key] == [v for k, v in records if k == key]
    assert all(len(batch) <= 3 for _, batch in producer.sent)  # a full batch is shipped, another started
    assert not metrics.errors.values


def test_failed_deliveries_and_a_full_buffer_are_counted() -> None:
    import asyncio

    from serving.decision_log import DecisionLog
    from serving.metrics import ServingMetrics

    producer, metrics = _FakeProducer(partitions=1, fail_partition=0, capacity=100), ServingMetrics()

    async def run() -> None:
        log = DecisionLog(producer, "decisions", metrics, flush_interval=0.001, max_buffered=4)
        for i in range(6):
            log.publish(b"v", str(i).encode())
        await asyncio.sleep(0.05)
        await log.close()

    asyncio.run(run())
    assert metrics.errors.values["decision_log_overflow"] == 2
    assert metrics.errors.values["decision_log_delivery"] == 4


def test_records_waiting_for_kafka_count_against_the_bound_of_what_a_crash_loses() -> None:
    """Handed to the producer is not yet safe: until Kafka acknowledges them, records count against
    ``max_buffered``, so a SIGKILL never loses more than that (tests/integration/test_chaos.py)."""
    import asyncio

    from serving.decision_log import DecisionLog
    from serving.metrics import ServingMetrics

    class Unacknowledging(_FakeProducer):
        pending: list[asyncio.Future[None]]

        async def send_batch(self, batch: _FakeBatch, topic: str, *, partition: int) -> object:
            self.sent.append((partition, batch.records))
            self.pending.append(asyncio.get_running_loop().create_future())
            return self.pending[-1]

    producer, metrics = Unacknowledging(partitions=2, fail_partition=None, capacity=100), ServingMetrics()
    producer.pending = []

    async def run() -> None:
        log = DecisionLog(producer, "decisions", metrics, flush_interval=0.001, max_buffered=5)
        for i in range(4):
            log.publish(f"v{i}".encode(), b"{}")
        await asyncio.sleep(0.02)
        assert sum(len(r) for _, r in producer.sent) == 4 and log.unacked == 4  # handed over, not acknowledged
        for _ in range(3):
            log.publish(b"w", b"{}")
        assert log.unacked == 5 and metrics.errors.values["decision_log_overflow"] == 2
        assert metrics.decision_log_unacked.value == 5
        await asyncio.sleep(0.02)
        for f in producer.pending:
            f.set_result(None)
        await asyncio.sleep(0)
        assert log.unacked == 0 and metrics.decision_log_unacked.value == 0
        await log.close()

    asyncio.run(run())


def test_the_fast_path_answers_decide_and_passes_everything_else_on() -> None:
    import asyncio

    from serving.decide import DecideFastPath

    seen: list[str] = []

    async def inner(scope: dict, receive: object, send: object) -> None:
        seen.append(scope["type"] + " " + scope.get("path", ""))

    app = DecideFastPath(inner)
    for scope in ({"type": "lifespan"}, {"type": "http", "path": "/v1/decide", "method": "GET"},
                  {"type": "http", "path": "/metrics", "method": "GET"}):
        asyncio.run(app(scope, None, None))
    assert seen == ["lifespan ", "http /v1/decide", "http /metrics"]


def test_a_405_names_every_method_the_path_serves() -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    client = TestClient(create_app())  # no lifespan: routing answers before any service is needed
    r = client.request("OPTIONS", "/v1/profiles/someone")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    assert client.put("/metrics").headers["allow"] == "GET"
