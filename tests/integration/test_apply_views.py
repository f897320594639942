"""The applier returns, with each person's applied count, what the segments read of the hash it just wrote
(``ProfileStore.apply(views=...)``), so the stream's segment tracker reads no profile after a batch: the view
must be the stored hash narrowed to ``engine.segment_view.view_fields``, or None exactly when no hash is left.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import orjson

from engine.config import load_config, parse_config
from engine.layout import dedup_token, erasure_marker_key, subject_keys, subject_profile_key
from engine.profile_store import OwnerBatch, ProfileStore
from engine.segment_view import view_fields
from engine.settings import REPO_ROOT
from streams.pipeline import BatchProcessor, Record
from streams.segments import SegmentTracker
from tests.integration.test_apply_ops import _events
from tests.support import aredis_client

CFG = load_config(REPO_ROOT / "config" / "engine.toml")
NAMED, PREFIXES = view_fields(CFG)


def narrowed(h: dict[str, str]) -> dict[str, str]:
    return {f: v for f, v in h.items() if f in NAMED or f.startswith(PREFIXES)}


def test_the_view_is_the_written_hash_narrowed_to_what_segments_read(redis_url: str) -> None:
    rng = random.Random(5)
    run = uuid.uuid4().hex[:6]

    async def go() -> None:
        client = aredis_client(redis_url, decode_responses=True)
        store = ProfileStore(client, CFG)
        fx = store.extractor
        checked = gone = 0
        try:
            for c in range(4):
                subject = f"c:views-{run}-{c}"
                key, offset = subject_profile_key(subject), 0
                evs = _events(rng, 300, 1_800_000_000.0 + c * 1000)
                i = 0
                while i < len(evs):
                    k = rng.choice((1, 1, 2, 5, 20))
                    rows = []
                    for etype, ts, props, ctx in evs[i:i + k]:
                        etype = "page_view" if etype == "identify" else etype  # merges are not applier batches
                        rows.append([offset, dedup_token(uuid.uuid4().hex), ts, fx.ops_for(etype, ts, props, ctx),
                                     1 if etype == "consent" else 0])
                        offset += 1
                    i += k
                    views: dict[int, dict[str, str] | None] = {}
                    applied = await store.apply([OwnerBatch(subject_keys(subject, CFG), "events", 0, True, rows)],
                                                views=views)
                    assert isinstance(applied[0], int)
                    stored = await client.hgetall(key)
                    if stored:
                        assert views[0] == narrowed(stored)
                        checked += 1
                    else:  # a withdrawal of personalisation consent empties it, for instance
                        assert views[0] is None
                        gone += 1
            # an erased person: events refused, nothing left, None
            erased = f"c:views-{run}-erased"
            await client.set(erasure_marker_key(erased), str(int(time.time() * 1000)))
            views = {}
            ts = time.time() - 60
            row = [0, "tok", ts, fx.ops_for("page_view", ts, {"item_id": "i"}, {}), 0]
            assert await store.apply([OwnerBatch(subject_keys(erased, CFG), "events", 0, True, [row])],
                                     views=views) == [0]
            assert views == {0: None} and not await client.exists(subject_profile_key(erased))
        finally:
            await client.aclose()
        assert checked > 150 and len(NAMED) + len(PREFIXES) >= 4
        assert any(p == "C:" for p in PREFIXES)

    asyncio.run(go())


def test_the_batch_returns_views_of_its_bulk_and_the_tracker_uses_them(redis_url: str) -> None:
    """An identify's owners are merged after their writes: their views are left out and read after the batch.
    The tracker evaluates an existing profile whose view is empty (it holds none of the named fields)."""
    run = uuid.uuid4().hex[:6]

    def record(offset: int, key: str, **fields: Any) -> Record:
        body = {"event_id": uuid.uuid4().hex, "timestamp": int((time.time() - 5) * 1000), "properties": {}, **fields}
        return Record("events", 0, offset, key.encode(), orjson.dumps(body))

    async def go() -> None:
        client = aredis_client(redis_url, decode_responses=True)
        store = ProfileStore(client, CFG)

        async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
            raise AssertionError(f"dead letter: {headers}")

        processor = BatchProcessor(store, no_dlq, views=True)
        try:
            a1, a2, c1 = f"a-{run}-1", f"a-{run}-2", f"c-{run}-1"
            stats = await processor.process([
                record(1, a1, type="add_to_cart", anonymous_id=a1, properties={"item_id": "sku-1", "quantity": 2}),
                record(2, a2, type="page_view", anonymous_id=a2, properties={"item_id": "sku-2"}),
                record(3, a2, type="identify", anonymous_id=a2, customer_id=c1),
            ])
            assert stats.applied == 3, stats
            assert set(stats.owners) == {f"a:{a1}", f"a:{a2}", f"c:{c1}"}
            assert set(stats.views) == {f"a:{a1}"}  # a2 and c1 are the identify's: merged after their writes
            view = stats.views[f"a:{a1}"]
            assert view is not None and view == narrowed(await client.hgetall(subject_profile_key(f"a:{a1}")))
            assert view["C:sku-1"] == "2"

            # a segment that holds for a profile without any of the fields it names
            cfg = parse_config({"segment": [{"id": "no_cart", "none": [{"metric": "cart_items", "min": 1}]}]})
            sent: list[dict[str, Any]] = []

            async def sink(key: bytes, value: bytes) -> asyncio.Future[None]:
                sent.append(orjson.loads(value))
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done

            tracker = SegmentTracker(client, cfg, sink)
            bare = f"a:{run}-bare"
            await client.hset(subject_profile_key(bare), "x", "1")
            gone = f"a:{run}-gone"
            assert await tracker.update([bare, gone], time.time(), views={bare: {}, gone: None}) == 1
            assert [(m["profile_id"], m["segment"], m["type"]) for m in sent] == \
                [(f"{run}-bare", "no_cart", "segment_entered")]
            assert await client.hget(subject_profile_key(bare), "S") == "no_cart"
        finally:
            await client.aclose()

    asyncio.run(go())
