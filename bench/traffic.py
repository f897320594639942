"""Realistic traffic for the benchmarks: a shop's clickstream (``EventFactory``), producing it to Kafka, and
writing profiles through the worker's own ``BatchProcessor``."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson

from bench.common import bench_config
from engine.kafka_client import kafka_client_kwargs

CATEGORIES = ("shoes", "jackets", "books", "electronics", "hats", "bags", "toys", "beauty", "garden",
              "kitchen", "sports", "music")
ITEMS_PER_CATEGORY = 150
CURRENCIES = ("EUR", "GBP", "USD")
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
)
SEARCHES = ("running shoes", "winter jacket", "bestseller novel", "noise cancelling", "sun hat", "backpack",
            "lego", "lipstick", "garden hose", "espresso machine", "yoga mat", "vinyl")


class EventFactory:
    """Clickstream events that look like a shop's: page views dominate, then clicks, searches, carts and a
    few purchases, identifies and consents; items follow a Zipf-like popularity inside 12 categories;
    each visitor has one or two favourite categories. Deterministic for a seed."""

    MIX = (("page_view", 0.56), ("click", 0.16), ("search", 0.08), ("add_to_cart", 0.09),
           ("remove_from_cart", 0.03), ("purchase", 0.025), ("identify", 0.004), ("consent", 0.004),
           ("feedback", 0.01))

    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        self._types = [t for t, _ in self.MIX]
        self._cum = []
        acc = 0.0
        for _, w in self.MIX:
            acc += w
            self._cum.append(acc)
        self._favourites: dict[str, tuple[str, ...]] = {}

    def _type(self) -> str:
        x = self.rng.random() * self._cum[-1]
        for t, c in zip(self._types, self._cum, strict=True):
            if x <= c:
                return t
        return self._types[-1]

    def _item(self, visitor: str) -> tuple[str, str]:
        fav = self._favourites.get(visitor)
        if fav is None:
            fav = self._favourites[visitor] = tuple(self.rng.sample(CATEGORIES, self.rng.choice((1, 2, 2, 3))))
        cat = self.rng.choice(fav) if self.rng.random() < 0.8 else self.rng.choice(CATEGORIES)
        k = min(int(self.rng.paretovariate(1.1)) - 1, ITEMS_PER_CATEGORY - 1)
        return cat, f"sku-{cat}-{k}"

    def event(self, visitor: str, *, customer: bool, ts_ms: int, session: str, etype: str | None = None,
              customer_id: str | None = None) -> dict[str, Any]:
        etype = etype or self._type()
        rng = self.rng
        cat, item = self._item(visitor)
        url = f"https://shop.example/{cat}/{item}"
        ctx: dict[str, Any] = {"channel": "web", "locale": "en-GB", "session_id": session, "url": url,
                               "user_agent": rng.choice(USER_AGENTS)}
        props: dict[str, Any]
        if etype == "page_view":
            props = {"url": url, "item_id": item, "category": cat, "title": f"{cat} {item}"}
        elif etype == "click":
            props = {"item_id": item, "category": cat}
            if rng.random() < 0.5:  # a click on a recommendation names its decision
                props.update(placement="product_recs", action_id=f"act-{cat}-{rng.randrange(5)}",
                             decision_id=uuid.UUID(int=rng.getrandbits(128)).hex)
        elif etype == "search":
            props = {"query": rng.choice(SEARCHES)}
        elif etype in ("add_to_cart", "remove_from_cart"):
            props = {"item_id": item, "category": cat, "price": round(rng.uniform(5, 250), 2),
                     "currency": rng.choice(CURRENCIES), "quantity": rng.choice((1, 1, 1, 2))}
        elif etype == "purchase":
            items: list[dict[str, Any]] = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                c2, i2 = self._item(visitor)
                items.append({"item_id": i2, "category": c2, "price": round(rng.uniform(5, 250), 2), "quantity": 1})
            props = {"order_id": f"ord-{rng.getrandbits(40):x}", "value": round(sum(i["price"] for i in items), 2),
                     "currency": "EUR", "items": items}
        elif etype == "identify":
            props = {"traits": {"loyalty_tier": rng.choice(("bronze", "silver", "gold")), "country": "IE"}}
        elif etype == "consent":
            props = {"personalisation": True, "analytics": True, "marketing": rng.random() < 0.5}
        else:  # feedback on a decision
            props = {"decision_id": uuid.UUID(int=rng.getrandbits(128)).hex, "action_id": f"act-{cat}-0",
                     "kind": rng.choice(("click", "dismiss"))}
        e: dict[str, Any] = {"event_id": uuid.UUID(int=rng.getrandbits(128)).hex, "type": etype,
                             "schema_version": 1, "timestamp": ts_ms, "context": ctx, "properties": props}
        if customer:
            e["customer_id"] = visitor
            if etype == "identify":  # a login from a device seen before under an anonymous id
                e["anonymous_id"] = f"anon-{rng.getrandbits(40):x}"
        else:
            e["anonymous_id"] = visitor
            if etype == "identify":
                e["customer_id"] = customer_id or f"c-{visitor}"
        return e

    def history(self, visitor: str, n: int, *, customer: bool, end_ms: int, span_s: float = 3 * 86400) -> list[dict]:
        """``n`` events of one visitor over the last ``span_s`` seconds, in time order, in sessions."""
        rng = self.rng
        times = sorted(end_ms - int(rng.random() * span_s * 1000) for _ in range(n))
        out, session, last = [], "", -10**15
        for t in times:
            if t - last > 30 * 60 * 1000:
                session = f"s-{rng.getrandbits(32):x}"
            last = t
            etype = self._type()
            if etype == "identify" or (etype == "consent" and rng.random() < 0.5):
                etype = "page_view"  # profiles for populating: no identity merges
            out.append(self.event(visitor, customer=customer, ts_ms=t, session=session, etype=etype))
        return out

    def stream(self, n: int, visitors: int, *, anonymous_share: float = 0.4, end_ms: int | None = None,
               span_s: float = 3600.0, prefix: str = "") -> Iterator[tuple[bytes, bytes]]:
        """``n`` (key, value) records from ``visitors`` visitors with a skewed activity, timestamps spread
        over the last ``span_s`` seconds in order, as a shop's topic would hold them."""
        rng = self.rng
        end_ms = end_ms or int(time.time() * 1000)
        start = end_ms - int(span_s * 1000)
        sessions: dict[str, str] = {}
        for i in range(n):
            v = int(visitors * rng.random() ** 2.5)  # skewed: the top 1% of visitors make ~16% of events
            v = (v * 2654435761) % visitors  # spread hot visitors over ids and partitions
            customer = (v % 100) >= anonymous_share * 100
            vid = f"{prefix}{'c' if customer else 'a'}-{v}"
            if vid not in sessions or rng.random() < 0.02:
                sessions[vid] = f"s-{rng.getrandbits(32):x}"
            e = self.event(vid, customer=customer, ts_ms=start + (end_ms - start) * i // max(n, 1),
                           session=sessions[vid])
            key = e["customer_id"] if customer else e["anonymous_id"]
            yield key.encode(), orjson.dumps(e)


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), as producers use it."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def to_records(events: Iterable[dict[str, Any]], topic: str, offsets: list[int]) -> list[Any]:
    """Kafka records of ``events`` as the worker would read them: keyed by visitor, partitioned like the
    producers do, offsets continuing from ``offsets`` (one per partition, advanced in place)."""
    from streams.pipeline import Record

    out = []
    for e in events:
        key = (e.get("customer_id") or e["anonymous_id"]).encode()
        p = partition_for(key, len(offsets))
        out.append(Record(topic, p, offsets[p], key, orjson.dumps(e)))
        offsets[p] += 1
    return out


async def populate_profiles(redis_url: str, histories: Sequence[Sequence[dict[str, Any]]], *,
                            topic: str = "bench-populate", partitions: int = 8, batch_size: int = 500) -> float:
    """Apply visitors' histories through the worker's own ``BatchProcessor`` (same code path as the
    stream, minus Kafka). Events are interleaved in time order; returns the events/s achieved."""
    import redis.asyncio as aioredis

    from engine.config import load_config
    from engine.profile_store import ProfileStore
    from streams.pipeline import BatchProcessor

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"benchmark event rejected: {headers} {value[:200]!r}")

    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        proc = BatchProcessor(ProfileStore(client, load_config(bench_config())), no_dlq)
        merged = sorted((e for h in histories for e in h), key=lambda e: e["timestamp"])
        records = to_records(merged, topic, [0] * partitions)
        t0 = time.perf_counter()
        for i in range(0, len(records), batch_size):
            await proc.process(records[i:i + batch_size])
        return len(records) / max(time.perf_counter() - t0, 1e-9)
    finally:
        await client.aclose()


async def produce_records(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> tuple[int, float]:
    """Publish (key, value) records with acks=all, batched; returns (count, seconds)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024,
                                **kafka_client_kwargs())
    await producer.start()
    n = 0
    t0 = time.perf_counter()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value=value, key=key))
            n += 1
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n, time.perf_counter() - t0
