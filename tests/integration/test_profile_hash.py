"""The profile hash written by ``engine/lua/apply_ops.lua``, checked against a reference model on a real
Redis (the pure feature logic is tested in ``tests/test_features.py``)."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from typing import Any

from engine.config import WINDOWS, load_config
from engine.erasure import ErasureStore
from engine.features import FeatureExtractor, decode
from engine.layout import (
    CHUNK_BYTES,
    DEDUP_TOKEN_CHARS,
    anonymous_profile_key,
    anonymous_subject,
    customer_subject,
    dedup_token,
    legacy_keys,
    profile_fields,
    profile_key,
)
from engine.settings import REPO_ROOT
from tests.support import aredis_client

CFG = load_config(REPO_ROOT / "config" / "engine.toml")
FX = FeatureExtractor(CFG)
FL = profile_fields(CFG)


def _run(redis_url: str, fn: Any) -> Any:

    from engine.profile_store import ProfileStore

    async def go() -> Any:
        client = aredis_client(redis_url, decode_responses=True)
        try:
            return await fn(ProfileStore(client, CFG), client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def _row(offset: int, etype: str, ts: float, props: dict[str, Any], ctx: dict[str, Any] | None = None,
         event_id: str | None = None) -> list[Any]:
    return [offset, dedup_token(event_id or uuid.uuid4().hex), ts, FX.ops_for(etype, ts, props, ctx or {}),
            1 if etype == "consent" else 0]


async def _apply(store: Any, cid: str, rows: list[list[Any]], partition: int = 0, *, anonymous: bool = False) -> int:
    batch = (store.subject_batch(anonymous_subject(cid), "events", partition) if anonymous
             else store.customer_batch(cid, "events", partition))
    batch.events.extend(rows)
    return (await store.apply([batch]))[0]


def test_stored_profile_matches_a_reference_model(redis_url: str) -> None:
    """Random events (batched, some out of order) -> the decoded windows, counts, affinities, recent
    items, cart and session equal what a straightforward model of the features computes."""
    rng = random.Random(7)
    cid = f"ref-{uuid.uuid4().hex[:8]}"
    now = 1_800_000_000.0
    items = [f"sku-{i}" for i in range(12)]  # fewer than top_k: no eviction, so scores are exact sums
    cats = ["shoes", "books", "hats"]
    times = sorted(now - rng.random() * 8 * 86400 for _ in range(300))
    # a few late arrivals: swap neighbours so some events come a little out of order
    for i in range(0, len(times) - 1, 17):
        times[i], times[i + 1] = times[i + 1], times[i]
    events = []
    for t in times:
        etype = rng.choice(["page_view"] * 5 + ["click"] * 2 + ["add_to_cart", "remove_from_cart", "purchase"])
        item, cat = rng.choice(items), rng.choice(cats)
        props: dict[str, Any] = {"item_id": item, "category": cat}
        if etype == "purchase":
            props = {"value": 10.25, "items": [{"item_id": item, "category": cat}]}
        events.append((round(t * 1000) / 1000, etype, props))
    rows = [_row(i, e, t, p, {"session_id": ""}) for i, (t, e, p) in enumerate(events)]

    async def go(store: Any, client: Any) -> Any:
        for i in range(0, len(rows), 23):
            await _apply(store, cid, rows[i:i + 23])
        enc = await client.object("encoding", profile_key(cid))
        return decode(cid, await store.read_raw(cid), CFG, now), enc

    p, encoding = _run(redis_url, go)
    assert encoding == "listpack"
    # windows: every event whose bucket is inside the window at `now`
    for wf in CFG.windows:
        for w in wf.windows:
            width, n = WINDOWS[w]
            cur = int(now // width)
            expect = sum(1 for t, e, _ in events if e in wf.events and cur - n < int(t // width) <= cur)
            assert p.windows[wf.name][w] == expect, (wf.name, w)
    counts: dict[str, int] = {}
    for _, e, _ in events:
        counts[e] = counts.get(e, 0) + 1
    assert p.counts == counts
    assert p.first_seen == min(t for t, _, _ in events) and p.last_seen == max(t for t, _, _ in events)
    assert math.isclose(p.monetary, 10.25 * counts.get("purchase", 0))
    for f in CFG.affinities:
        expect_aff: dict[str, float] = {}
        for t, e, props in events:
            wt = f.weights.get(e)
            if wt:
                vals = [props.get(f.field)] + [it.get(f.field) for it in props.get("items", [])]
                for v in vals:
                    if v:
                        expect_aff[v] = expect_aff.get(v, 0.0) + wt * 2 ** ((t - now) / (f.half_life_hours * 3600))
        assert set(p.affinities[f.name]) == set(expect_aff)
        for v, s in expect_aff.items():
            # stored with 7 significant digits rounded toward zero: at most 1e-6 low per update
            assert s * (1 - 1e-6 * len(events)) <= p.affinities[f.name][v] <= s * (1 + 1e-12), (f.name, v)
    # recent items: distinct, most recent first, in the order the events were applied
    r = CFG.recents[0]
    seen: list[str] = []
    for _, e, props in events:
        if e in r.events and props.get("item_id"):
            v = props["item_id"]
            seen = [v] + [x for x in seen if x != v]
    assert p.recent[r.name] == seen[: r.size]
    cart: dict[str, int] = {}
    for _, e, props in events:
        if e == "add_to_cart":
            cart[props["item_id"]] = cart.get(props["item_id"], 0) + 1
        elif e == "remove_from_cart":
            cart[props["item_id"]] = cart.get(props["item_id"], 0) - 1
            if cart[props["item_id"]] <= 0:
                del cart[props["item_id"]]
        elif e == "purchase":
            cart = {}
    assert p.cart == cart


def test_replays_and_duplicate_event_ids_are_applied_once_and_the_ring_is_bounded(redis_url: str) -> None:
    cid = f"dup-{uuid.uuid4().hex[:8]}"
    t = 1_800_000_000.0
    window = CFG.profile.dedup_window

    async def go(store: Any, client: Any) -> Any:
        first = await _apply(store, cid, [_row(10, "page_view", t, {}, event_id="e-0")])
        replay = await _apply(store, cid, [_row(10, "page_view", t, {}, event_id="e-0")])  # same offset
        dup = await _apply(store, cid, [_row(11, "page_view", t, {}, event_id="e-0")])  # producer retry
        # a duplicate inside one batch is caught too
        inside = await _apply(store, cid, [_row(12, "page_view", t, {}, event_id="e-1"),
                                           _row(13, "page_view", t, {}, event_id="e-1")])
        other_partition = await _apply(store, cid, [_row(5, "page_view", t, {}, event_id="e-2")], partition=1)
        # fill the ring: "e-1" is remembered until `window` newer ids have been seen
        await _apply(store, cid, [_row(100 + i, "page_view", t, {}, event_id=f"f-{i}") for i in range(window - 2)])
        still = await _apply(store, cid, [_row(200, "page_view", t, {}, event_id="e-1")])
        await _apply(store, cid, [_row(201, "page_view", t, {}, event_id="f-last")])
        forgotten = await _apply(store, cid, [_row(202, "page_view", t, {}, event_id="e-0")])
        h = await client.hgetall(profile_key(cid))
        return first, replay, dup, inside, other_partition, still, forgotten, h

    first, replay, dup, inside, other_partition, still, forgotten, h = _run(redis_url, go)
    assert (first, replay, dup, inside, other_partition) == (1, 0, 0, 1, 1)
    assert still == 0 and forgotten == 1  # the oldest id left the ring after `window` newer ones
    assert h["cv"] == str(1 + 1 + 1 + (window - 2) + 1 + 1)
    assert h["off:events:0"] == "202" and h["off:events:1"] == "5"
    ring = "".join(v for k, v in h.items() if k.startswith("d:") and k != "d:n")
    assert len(ring) == window * DEDUP_TOKEN_CHARS
    assert all(len(v) <= CHUNK_BYTES for v in h.values())


def test_consent_withdrawal_wipes_the_profile_and_keeps_idempotence(redis_url: str) -> None:
    cid = f"consent-{uuid.uuid4().hex[:8]}"
    t = 1_800_000_000.0

    async def go(store: Any, client: Any) -> Any:
        await _apply(store, cid, [_row(1, "add_to_cart", t, {"item_id": "sku-1", "category": "hats"}),
                                  _row(2, "page_view", t + 1, {"item_id": "sku-2", "category": "hats"},
                                       event_id="keep-me")])
        await _apply(store, cid, [_row(3, "consent", t + 2, {"personalisation": False, "marketing": True}),
                                  _row(4, "click", t + 3, {"item_id": "sku-3", "category": "hats"})])
        wiped = decode(cid, await store.read_raw(cid), CFG, t + 4)
        fields = set(await client.hkeys(profile_key(cid)))
        replay = await _apply(store, cid, [_row(2, "page_view", t + 1, {"item_id": "sku-2"})])
        await _apply(store, cid, [_row(5, "consent", t + 5, {"personalisation": True}),
                                  _row(6, "page_view", t + 6, {"item_id": "sku-9", "category": "books"})])
        dup = await _apply(store, cid, [_row(7, "page_view", t + 1, {"item_id": "sku-2"}, event_id="keep-me")])
        again = decode(cid, await store.read_raw(cid), CFG, t + 7)
        return wiped, fields, replay, dup, again

    wiped, fields, replay, dup, again = _run(redis_url, go)
    assert wiped.counts == {} and wiped.cart == {} and wiped.recent == {"recent_items": []}
    assert wiped.affinities == {"category": {}, "item": {}} and wiped.first_seen is None
    assert wiped.windows["views"]["1h"] == 0 and wiped.session["id"] is None
    assert wiped.consent == {"personalisation": False, **{f"marketing_{c}": True for c in ("email", "push", "sms",
                                                                                          "web")}}
    assert not wiped.personalisation_allowed
    assert {f[0] for f in fields} <= {"k", "o", "d"}  # consent, offsets and dedup tokens only
    assert replay == 0 and dup == 0  # the offset guard and the dedup ring survive the wipe
    assert again.counts == {"page_view": 1} and list(again.affinities["category"]) == ["books"]
    assert again.recent == {"recent_items": ["sku-9"]}


def test_identify_merges_the_anonymous_profile_and_erase_forgets_both(redis_url: str) -> None:
    anon, cust = f"anon-{uuid.uuid4().hex[:8]}", f"cust-{uuid.uuid4().hex[:8]}"
    t = 1_800_000_000.0

    async def go(store: Any, client: Any) -> Any:
        await _apply(store, anon, [_row(i, "page_view", t + i, {"item_id": f"a-{i}", "category": "jackets"})
                                   for i in range(3)] + [_row(3, "add_to_cart", t + 3, {"item_id": "a-1"})],
                     anonymous=True)
        await _apply(store, cust, [_row(10, "page_view", t + 4, {"item_id": "c-1", "category": "books"}),
                                   _row(11, "click", t + 5, {"item_id": "a-1", "category": "jackets"})], partition=1)
        await store.merge_identity(anon, cust, "events", 0, 4, "ident-1", t + 6)
        await store.merge_identity(anon, cust, "events", 0, 4, "ident-1", t + 6)  # a replay merges nothing
        merged = decode(cust, await store.read_raw(cust), CFG, t + 7)
        anon_left = await client.exists(anonymous_profile_key(anon))
        await client.set(legacy_keys(customer_subject(cust), CFG)[0], "x")  # a key of the old layout is erased too
        deleted = await ErasureStore(client, CFG, 3600).erase(cust)
        await ErasureStore(client, CFG, 3600).finish(cust)
        left = [k for k in await client.keys(f"*{cust}*") + await client.keys(f"*{anon}*")
                if not k.startswith("erased:")]  # the markers stay, on purpose
        return merged, anon_left, deleted, left

    merged, anon_left, deleted, left = _run(redis_url, go)
    assert merged.counts == {"page_view": 4, "click": 1, "add_to_cart": 1, "identify": 1}
    assert set(merged.affinities["category"]) == {"jackets", "books"}
    assert merged.affinities["item"]["a-1"] > merged.affinities["item"]["a-0"]  # viewed, carted and clicked
    assert merged.windows["views"]["1h"] == 4 and merged.windows["clicks"]["1h"] == 1
    assert merged.recent["recent_items"][:2] == ["a-1", "c-1"]  # the customer's own first, then the merged
    assert set(merged.recent["recent_items"]) == {"a-0", "a-1", "a-2", "c-1"}
    assert merged.cart == {"a-1": 1}
    assert merged.first_seen == t and merged.last_seen == t + 6
    assert anon_left == 0 and deleted.keys_deleted >= 3 and left == []
    assert deleted.visitors == [cust, anon]  # the ids the learner may hold histories under


def test_affinities_keep_the_top_k_and_survive_a_landmark_move(redis_url: str) -> None:
    cid = f"topk-{uuid.uuid4().hex[:8]}"
    f = next(a for a in CFG.affinities if a.name == "item")
    hl = f.half_life_hours * 3600
    t = 1_800_000_000.0
    # top_k + 5 items, item i viewed i + 1 times, the most viewed first: the 5 least viewed are evicted
    # (each of their views is a new value scoring below every kept one)
    rows = []
    off = 0
    for i in reversed(range(f.top_k + 5)):
        for _ in range(i + 1):
            rows.append(_row(off, "page_view", t, {"item_id": f"i-{i:02d}"}))
            off += 1
    late = t + 11 * hl  # far enough for the landmark to move (scores are rescaled, not overflowed)

    async def go(store: Any, client: Any) -> Any:
        for i in range(0, len(rows), 50):
            await _apply(store, cid, rows[i:i + 50])
        before = decode(cid, await store.read_raw(cid), CFG, late)
        await _apply(store, cid, [_row(off, "page_view", late, {"item_id": "i-00"})])
        after = decode(cid, await store.read_raw(cid), CFG, late)
        return before, after, await client.hget(profile_key(cid), FL.landmark["item"])

    before, after, landmark = _run(redis_url, go)
    assert len(before.affinities["item"]) == f.top_k
    assert set(before.affinities["item"]) == {f"i-{i:02d}" for i in range(5, f.top_k + 5)}
    assert int(landmark) == int(late)
    scale = 2 ** (-11)
    assert math.isclose(after.affinities["item"]["i-34"], before.affinities["item"]["i-34"], rel_tol=1e-5)
    assert math.isclose(before.affinities["item"]["i-34"], 35 * scale, rel_tol=1e-5)
    assert "i-00" in after.affinities["item"] and len(after.affinities["item"]) == f.top_k
