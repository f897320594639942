"""``pulse replay FILE``: events from a file into the events topic, validated as the collector validates them.

A file is JSON lines (``.gz`` too): each line one Pulse event, one Segment/RudderStack message (a Segment
export, where ``sentAt``/``receivedAt`` correct the client's clock), a list of them, or a Segment batch body
(``{"batch": [...]}``). A file that is one JSON document (a list or a batch) is read whole. Each event is
published keyed by its visitor id, with no ``pulse-source`` header: published straight to Kafka, it is as
trusted as the site's back end (docs/security.md), so replay only what the site itself recorded.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "events.jsonl")
>>> with open(path, "w") as f:
...     _ = f.write('{"event_id": "e-1", "type": "search", "timestamp": 1714564800000, "anonymous_id": "a-1",'
...                 ' "properties": {"query": "hats"}}\\n\\nnot json\\n')
>>> [(n, type(item).__name__) for n, item in read_events(path)]
[(1, 'Event'), (3, 'InvalidEvent')]
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import orjson

from schemas.events import Event, InvalidEvent, dumps_event, parse_event


def _open(path: str | Path) -> IO[bytes]:
    p = Path(path)
    with p.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return cast(IO[bytes], gzip.open(p, "rb")) if gzipped else p.open("rb")


def _items(doc: Any) -> list[Any]:
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
        return list(doc["batch"])
    return list(doc) if isinstance(doc, list) else [doc]


def read_events(path: str | Path) -> Iterator[tuple[int, Event | InvalidEvent]]:
    """(line number, the event or why it is not one) for each event of the file, streamed line by line; blank
    lines skipped. A file whose first line is not JSON on its own but starts a JSON value (a pretty-printed
    document) is read as one JSON document."""
    first = True
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if first and line.lstrip()[:1] in (b"[", b"{"):
                    yield from _whole(path)
                    return
                yield n, InvalidEvent(f"line {n}: not valid JSON ({exc})")
                continue
            finally:
                first = False
            for item in _items(doc):
                yield n, _parse(item)


def _whole(path: str | Path) -> Iterator[tuple[int, Event | InvalidEvent]]:
    with _open(path) as f:
        data = f.read()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield 1, InvalidEvent(f"file: neither JSON lines nor one JSON document ({exc})")
        return
    for item in _items(doc):
        yield 1, _parse(item)


def _parse(item: Any) -> Event | InvalidEvent:
    if not isinstance(item, dict):
        return InvalidEvent(f"event: must be a JSON object, got {type(item).__name__}")
    try:
        return parse_event(item)
    except InvalidEvent as exc:
        return exc


def count_lines(path: str | Path) -> int:
    """Non-blank lines: the progress bar's total (events of a one-document file count as its one line)."""
    with _open(path) as f:
        return sum(1 for line in f if line.strip())


@dataclass(slots=True)
class ReplayResult:
    published: int = 0
    invalid: int = 0
    seconds: float = 0.0
    #: the first refused events: (line, reason)
    reasons: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0


async def replay(path: str | Path, bootstrap: str, topic: str, *, rate: float = 0.0, strict: bool = False,
                 kafka_kwargs: dict[str, Any] | None = None,
                 on_line: Callable[[int, int], None] = lambda line, published: None) -> ReplayResult:
    """Publish the file's valid events (``acks=all``; every delivery awaited before returning), at most ``rate``
    events per second (0: as fast as Kafka takes them). ``strict``: stop at the first invalid event."""
    from aiokafka import AIOKafkaProducer

    from engine.kafka_client import kafka_client_kwargs

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                                **(kafka_client_kwargs() if kafka_kwargs is None else kafka_kwargs))
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # a producer that could not start still holds its client
        raise
    result = ReplayResult()
    started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    try:
        for line, item in read_events(path):
            if isinstance(item, InvalidEvent):
                result.invalid += 1
                if len(result.reasons) < 20:
                    result.reasons.append((line, item.reason))
                if strict:
                    break
                on_line(line, result.published)
                continue
            if rate > 0:  # paced: the n-th event not before n / rate seconds
                ahead = result.published / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            pending.append(await producer.send(topic, value=dumps_event(item), key=item.visitor_id.encode()))
            result.published += 1
            if len(pending) >= 1000:  # bounded memory: wait for the oldest deliveries
                await asyncio.gather(*pending)
                pending.clear()
            on_line(line, result.published)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    result.seconds = time.monotonic() - started
    return result
