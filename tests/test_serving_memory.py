"""What the API holds in memory stays bounded: the decision-log buffer while Kafka is slow, model versions
after hot reloads, the importable policy classes."""

from __future__ import annotations

import asyncio
import gc
import random
import subprocess
import sys
import types
import weakref

from engine.settings import REPO_ROOT


class _BlockedBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, timestamp: object, key: bytes, value: bytes) -> object:
        self.records.append((key, value))
        return object()


class _SlowProducer:
    """``send_batch`` does not return until ``release`` is set: a broker that stopped answering."""

    def __init__(self) -> None:
        self.client = types.SimpleNamespace(cluster=types.SimpleNamespace(partitions_for_topic=lambda t: {0, 1}))
        self.release = asyncio.Event()
        self.sent: list[tuple[bytes, bytes]] = []

    def create_batch(self) -> _BlockedBatch:
        return _BlockedBatch()

    async def send_batch(self, batch: _BlockedBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        await self.release.wait()
        self.sent.extend(batch.records)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_decision_log_holds_at_most_its_byte_cap_while_kafka_is_stuck_and_counts_the_rest() -> None:
    from serving.decision_log import RECORD_OVERHEAD, DecisionLog
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    value = b"x" * 2000  # about a real decision record
    per_record = len(b"visitor-0") + len(value) + RECORD_OVERHEAD
    cap = 100 * per_record

    async def run() -> tuple[int, int, int]:
        producer = _SlowProducer()
        log = DecisionLog(producer, "decisions", metrics, flush_interval=0.001, max_buffered=10_000,
                          max_buffered_bytes=cap)
        peak = 0
        for i in range(1000):
            log.publish(f"visitor-{i % 10}".encode(), value)
            peak = max(peak, log.held_bytes)
            if i % 50 == 0:
                await asyncio.sleep(0.002)  # the flush starts, takes the buffer and hangs in send_batch
        held_while_stuck = log.held_bytes
        producer.release.set()
        await asyncio.sleep(0.02)
        await log.close()
        assert log.held_bytes == 0  # everything taken was handed over and forgotten
        return peak, held_while_stuck, len(producer.sent)

    peak, held_while_stuck, sent = asyncio.run(run())
    # records taken by the stuck flush count as held: the cap covers buffer + in flight, not the buffer alone
    assert peak <= cap and held_while_stuck == 100 * per_record
    assert sent == 100
    assert metrics.errors.values["decision_log_overflow"] == 900


def test_decision_log_count_cap_includes_the_records_in_flight() -> None:
    from serving.decision_log import DecisionLog
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()

    async def run() -> int:
        producer = _SlowProducer()
        log = DecisionLog(producer, "decisions", metrics, flush_interval=0.001, max_buffered=30)
        for i in range(20):
            log.publish(b"v", str(i).encode())
        await asyncio.sleep(0.01)  # 20 taken by the flush, stuck
        for i in range(20):
            log.publish(b"v", str(i).encode())
        producer.release.set()
        await log.close()
        return len(producer.sent)

    assert asyncio.run(run()) == 30
    assert metrics.errors.values["decision_log_overflow"] == 10


def test_a_buffered_decision_record_holds_its_size_not_orjsons_output_buffer() -> None:
    """orjson.dumps returns bytes that keep its whole output buffer (~16 KB of heap for a 1.8 KB record)."""
    import tracemalloc

    import orjson

    from serving.decision_log import DecisionLog
    from serving.metrics import ServingMetrics

    record = {"context": {f"aff_item:item-{i:05d}": 0.1 for i in range(40)}, "candidates": ["a" * 12] * 30}

    async def run() -> int:
        log = DecisionLog(_SlowProducer(), "decisions", ServingMetrics(), flush_interval=60.0)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            values = [orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) for _ in range(500)]
            size = len(values[0])
            for v in values:
                log.publish(b"visitor", v)
            del values  # what a request leaves behind: only the buffered copy
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert 1500 < size < 2500
        return held // 500

    assert asyncio.run(run()) < 2 * 2500  # ~size + the tuple and list slot, not 16 KB


def test_decision_producer_batches_are_big_enough_for_a_backlog_to_drain() -> None:
    """A 16 KiB producer batch holds ~8 decision records; one batch in flight per partition then ships fewer
    decisions than a loaded API makes, and the buffer grows (RSS 149 -> 595 MiB in the full benchmark)."""
    from serving.services import DECISION_BATCH_BYTES

    assert 128 << 10 <= DECISION_BATCH_BYTES < 1 << 20  # and under the broker's 1 MiB message.max.bytes


class _Store:
    """What ModelRegistry.refresh reads: the published version and blob of each model."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[int, bytes]] = {}

    async def model_version(self, name: str) -> int | None:
        return self.blobs[name][0] if name in self.blobs else None

    async def model_blob(self, name: str) -> bytes | None:
        return self.blobs[name][1] if name in self.blobs else None

    async def model_snapshot(self, name: str) -> tuple[int, bytes] | None:
        return self.blobs.get(name)


def test_hot_reloads_keep_one_model_per_name_and_release_old_versions_and_their_matrices() -> None:
    from engine.config import load_config
    from engine.policies import Candidate, LinearThompson
    from engine.snapshots import dump_model
    from serving.metrics import ServingMetrics
    from serving.models import ModelRegistry

    config = load_config(REPO_ROOT / "config" / "engine.toml")
    key = b"k" * 32
    store = _Store()
    registry = ModelRegistry(config, store, key, ServingMetrics())  # type: ignore[arg-type]  # duck-typed store
    name = "product_recs/linear_thompson"
    assert name in registry.models
    trainer = LinearThompson(shared_dims=0, epsilon=0.05)
    candidates = [Candidate(f"a{i}", {f"cat:c{i % 4}": 1.0}) for i in range(30)]
    rng = random.Random(0)
    loaded: list[weakref.ref] = []

    async def run() -> None:
        for version in range(1, 9):
            for _ in range(5):
                trainer.learn_one({"aff_cat:c1": 1.0}, candidates[rng.randrange(30)], rng.random())
            store.blobs[name] = (version, dump_model(trainer, version, key, name=name))
            assert await registry.refresh() == 1
            model = registry.get("product_recs", "linear_thompson")
            assert model.version == version
            model.policy.rank({"aff_cat:c1": 1.0}, candidates, 5, rng)  # builds its per-version matrices
            assert model.policy._serving is not None  # type: ignore[attr-defined]  # a LinearThompson
            loaded.append(weakref.ref(model.policy))
            del model

    asyncio.run(run())
    gc.collect()
    alive = [r() for r in loaded if r() is not None]
    assert alive == [registry.get("product_recs", "linear_thompson").policy]
    load = registry.metrics.model_load  # each swap's load time is exported
    assert load.count == 8 and load.sum > 0 and "pulse_model_load_seconds_count 8" in registry.metrics.render()


def test_serving_does_not_import_river() -> None:
    """River (with SciPy) is ~85 MiB of RSS; the API needs it only for a configured ctr_ranker."""
    code = "import sys, serving.app; print('river' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]
