"""``BatchLoop`` ordering: batch N+1 is prepared while batch N writes (once batch N's commands are sent),
writes never overlap, and a commit covers only batches whose writes are done. The consumer here is an
in-memory stand-in (the loop's Kafka behaviour is tested on a real broker in
tests/integration/test_resilience.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from streams.consumer import BatchLoop
from streams.pipeline import Record

TOPIC = "events"


class ListConsumer:
    """Hands out pre-built batches, then stops the loop; records what was committed."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]], on_empty: Any,
                 trace: list[tuple[str, Any]] | None = None) -> None:
        self.batches = batches
        self.on_empty = on_empty
        self.commits: list[dict[TopicPartition, int]] = []
        self.trace = trace if trace is not None else []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0)
        if self.batches:
            return self.batches.pop(0)
        await self.on_empty()
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.trace.append(("commit", dict(offsets)))

    def assignment(self) -> set[TopicPartition]:
        return set()

    async def stop(self) -> None:
        pass


class NoOutbox:
    async def flush(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def batch(partition: int, first: int, n: int) -> dict[TopicPartition, list[Any]]:
    return {TopicPartition(TOPIC, partition): [SimpleNamespace(offset=o, key=None, value=b"{}", headers=())
                                               for o in range(first, first + n)]}


def test_next_batch_is_prepared_after_the_previous_one_sent_its_writes_and_writes_never_overlap() -> None:
    trace: list[tuple[str, Any]] = []

    async def main() -> list[dict[TopicPartition, int]]:
        loop: BatchLoop

        async def stop() -> None:
            loop._stopping = True

        consumer = ListConsumer([batch(0, 0, 3), batch(0, 3, 3), batch(1, 0, 2)], stop, trace)

        async def handler(records: Sequence[Record]) -> Any:
            n = records[0].offset + 10 * records[0].partition
            trace.append(("prepare", n))

            async def write(sent: Any) -> None:
                trace.append(("write start", n))
                await asyncio.sleep(0.005)  # encoding and sending: the loop does not take the CPU meanwhile
                trace.append(("sent", n))
                sent()
                await asyncio.sleep(0.02)  # Redis runs the commands: the loop goes on fetching and preparing
                trace.append(("write end", n))
            return write

        loop = BatchLoop(lambda: consumer, [TOPIC], {TOPIC: handler}, NoOutbox(),  # type: ignore[arg-type]  # duck-typed
                         commit_interval=0.0)
        loop.consumer = consumer
        await loop.run()
        await loop.stop()
        return consumer.commits

    commits = asyncio.run(main())
    steps = [t for t in trace if t[0] != "commit"]
    assert steps == [
        ("prepare", 0), ("write start", 0), ("sent", 0),
        ("prepare", 3),  # prepared after batch 0's commands were sent, before its writes ended
        ("write end", 0), ("write start", 3), ("sent", 3),
        ("prepare", 10),
        ("write end", 3), ("write start", 10), ("sent", 10), ("write end", 10),
    ]
    # a commit names only offsets whose batch's writes had ended before it
    ends = {(0, 3): ("write end", 0), (0, 6): ("write end", 3), (1, 2): ("write end", 10)}
    for i, (what, offsets) in enumerate(trace):
        if what == "commit":
            for tp, offset in offsets.items():
                assert ends[tp.partition, offset] in trace[:i], (offsets, trace[:i])
    committed: dict[TopicPartition, int] = {}
    for c in commits:
        committed.update(c)
    assert committed == {TopicPartition(TOPIC, 0): 6, TopicPartition(TOPIC, 1): 2}


def test_a_failed_write_stops_the_loop_and_commits_nothing_of_its_batch() -> None:
    async def main() -> tuple[list[dict[TopicPartition, int]], BaseException | None]:
        loop: BatchLoop

        async def idle() -> None:
            await asyncio.sleep(0.01)

        consumer = ListConsumer([batch(0, 0, 2), batch(0, 2, 2)], idle)

        async def handler(records: Sequence[Record]) -> Any:
            async def write(sent: Any) -> None:  # never says it sent: the loop waits for its end
                await asyncio.sleep(0)
                if records[0].offset == 2:
                    raise ValueError("boom")
            return write

        loop = BatchLoop(lambda: consumer, [TOPIC], {TOPIC: handler}, NoOutbox(),  # type: ignore[arg-type]  # duck-typed
                         commit_interval=0.0)
        loop.consumer = consumer
        error = None
        try:
            await asyncio.wait_for(loop.run(), 5)
        except RuntimeError as exc:
            error = exc.__cause__
        try:
            await loop.stop()  # the failed write's error again; what is committed is the batches before it
        except ValueError:
            pass
        return consumer.commits, error

    commits, error = asyncio.run(main())
    assert isinstance(error, ValueError)
    assert commits and all(c.get(TopicPartition(TOPIC, 0), 0) <= 2 for c in commits)


def test_polls_that_find_nothing_while_no_fetch_is_answered_are_one_kafka_pause() -> None:
    """The consumer stamps every fetch answer, even an empty one: empty polls with stale stamps mean the brokers
    are away (one pause, however many polls or waits), fresh stamps or records mean they are back."""
    import time

    from streams.consumer import KafkaWaits

    tp = TopicPartition(TOPIC, 0)
    stamp = {"ms": int(time.time() * 1000)}
    consumer = SimpleNamespace(assignment=lambda: {tp}, last_poll_timestamp=lambda _: stamp["ms"])
    waits = KafkaWaits(after=3.0)
    now = time.time()
    waits.polled(consumer, False, now - 10)  # answered just now: healthy
    assert waits.since is None
    stamp["ms"] = int((now - 5) * 1000)
    waits.polled(consumer, False, now - 1)  # stale, but empty only for 1 s: not yet
    assert waits.since is None
    waits.polled(consumer, False, now - 4)
    assert waits.since == stamp["ms"] / 1000 and waits.pauses == 0
    assert not waits.begin(now, "the offset commit waits")  # the same outage: no second pause
    waits.polled(consumer, True, None)  # records again
    assert waits.since is None and waits.pauses == 1 and waits.seconds >= 4.9
