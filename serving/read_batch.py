"""Reads of concurrent decisions leave for Redis together: one pipeline per event-loop turn.

Under load, a few dozen ``/v1/decide`` calls are waiting on their profile read at any moment. Sent one
by one, each read pays its own socket write, its own wake-up of the event loop when the reply arrives
and its own trip through redis-py's connection pool, a large share of a decision's CPU
(``bench/decide_micro.py``). ``ReadBatcher`` queues the commands issued during
one turn of the loop and sends them as a single pipeline on one connection at the end of the turn, so
that cost is shared by every request of the turn (auto-pipelining, as ioredis and Lettuce call it).

A request whose deadline passes stops waiting (its future is cancelled); the pipeline itself runs in a
task of its own and always reads every reply, so a connection is never left with unread replies and
is never closed because one caller gave up.

>>> import asyncio
>>> class FakePipeline:
...     def __init__(self, log): self.log, self.commands = log, []
...     def execute_command(self, *args): self.commands.append(args)
...     async def execute(self, raise_on_error=True):
...         self.log.append(len(self.commands))
...         return [f"reply to {a[1]}" for a in self.commands]
>>> class FakeRedis:
...     def __init__(self): self.log = []
...     def pipeline(self, transaction=True): return FakePipeline(self.log)
>>> async def main():
...     redis = FakeRedis()
...     batcher = ReadBatcher(redis)
...     replies = await asyncio.gather(*(batcher.call("GET", f"k{i}") for i in range(3)))
...     return replies, redis.log
>>> asyncio.run(main())
(['reply to k0', 'reply to k1', 'reply to k2'], [3])
"""

from __future__ import annotations

import asyncio
from typing import Any

from serving.metrics import ServingMetrics

#: Commands sent in one pipeline at most; a busier turn is split into several pipelines.
MAX_BATCH = 128


class ReadBatcher:
    def __init__(self, redis: Any, metrics: ServingMetrics | None = None, max_batch: int = MAX_BATCH) -> None:
        self.redis = redis
        self.metrics = metrics
        self.max_batch = max_batch
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Task[None]] = set()  # strong references while pipelines run

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply (or its error)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after every task that is ready in this turn has queued its reads
        self._pending.append((args, fut))
        return fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self.max_batch):
            task = asyncio.get_running_loop().create_task(self._send(pending[i:i + self.max_batch]))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        live = [(args, fut) for args, fut in batch if not fut.done()]  # cancelled while queued: not sent
        if not live:
            return
        if self.metrics is not None:
            self.metrics.read_pipelines.inc()
            self.metrics.read_commands.inc(n=len(live))
        pipe = self.redis.pipeline(transaction=False)
        for args, _ in live:
            pipe.execute_command(*args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # connection refused, timeout, cancelled at shutdown: every caller learns it
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), reply in zip(live, replies, strict=True):
            if not fut.done():
                if isinstance(reply, Exception):
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)
