"""``engine/lua/apply_ops.lua`` writes exactly what its reference writes, field for field.

``tests/data/apply_ops_reference.lua`` is the applier as it was before it was optimised for Redis CPU
(commit 9c1632b: the whole hash read into a Lua table with a Lua loop, recent lists split into tables,
nested JSON arguments). Random event streams with the awkward cases (evictions beyond ``top_k``, values
longer than a chunk, windows skipping and arriving late, landmark moves, consent withdrawal, merges,
replays and duplicates, popularity) go through both, batch by batch, on separate keys of one Redis; the
hashes, zsets and applied counts must be identical. Change the reference only with a deliberate change of
the stored profile.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any, cast

import orjson

from engine.config import load_config
from engine.features import FeatureExtractor, RawProfile
from engine.layout import OwnerKeys, dedup_token
from engine.profile_store import OwnerBatch, ProfileStore
from engine.settings import REPO_ROOT
from tests.support import aredis_client

CFG = load_config(REPO_ROOT / "config" / "engine.toml")
FX = FeatureExtractor(CFG)
REFERENCE = (REPO_ROOT / "tests" / "data" / "apply_ops_reference.lua").read_text()


def _events(rng: random.Random, n: int, t0: float) -> list[tuple[str, float, dict[str, Any], dict[str, Any]]]:
    items = [f"sku-{i}" for i in range(45)] + ["x" * 70, "y" * 63, "z" * 64, "a:b*c?[d]"]
    cats = ["shoes", "books", "hats", "toys", "very-long-category-name-" * 3]
    sessions = ["", "", "s-1", "s-2"]
    t = t0
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.03:
            t += 45 * 86400 * rng.random()  # long absence: landmarks move, windows restart
        elif r < 0.08:
            t -= 7200 * rng.random()  # a late event
        else:
            t += rng.expovariate(1 / 600)
        etype = rng.choice(["page_view"] * 12 + ["click"] * 5 + ["search", "add_to_cart", "add_to_cart",
                                                                   "remove_from_cart", "purchase", "identify",
                                                                   "feedback", "consent"] + ["impression"] * 4)
        item, cat = rng.choice(items[: rng.choice((8, 30, len(items)))]), rng.choice(cats)
        props: dict[str, Any] = {"item_id": item, "category": cat}
        if etype == "purchase":
            props = {"value": round(rng.uniform(1, 300), 2),
                     "items": [{"item_id": rng.choice(items), "category": rng.choice(cats)}
                               for _ in range(rng.choice((1, 2, 3)))]}
        elif etype == "add_to_cart":
            props["quantity"] = rng.choice((1, 1, 2))
        elif etype == "consent":
            props = {"personalisation": rng.random() < 0.7, "marketing": rng.random() < 0.5}
        elif etype == "impression":  # contact policy exposure records: more actions than a profile keeps
            props = {"action_id": f"act-{rng.randrange(60)}", "channel": rng.choice(["web", "email", "push"])}
        elif etype == "feedback":
            props = {"action_id": f"act-{rng.randrange(60)}", "kind": rng.choice(["dismiss", "click"]),
                     "decision_id": "d-1"}
        elif etype == "click" and rng.random() < 0.3:
            props["action_id"] = f"act-{rng.randrange(60)}"
        out.append((etype, round(t, 3), props, {"session_id": rng.choice(sessions)}))
    return out


def test_the_optimised_script_writes_what_the_reference_writes(redis_url: str) -> None:

    rng = random.Random(11)
    run = uuid.uuid4().hex[:6]

    async def go() -> None:
        client = aredis_client(redis_url, decode_responses=True)
        try:
            store = ProfileStore(client, CFG)
            ref_sha = await client.script_load(REFERENCE)
            ttl, window = store._ttl, CFG.profile.dedup_window

            async def both(new: OwnerBatch, ref_keys: list[str], customer: bool) -> None:
                got = (await store.apply([new]))[0]
                want = await client.evalsha(ref_sha, len(ref_keys), *ref_keys, f"off:{new.topic}:{new.partition}",
                                            ttl if customer else 0, window if customer else 0,
                                            orjson.dumps(new.events))
                assert got == want

            async def same(new_keys: list[str], ref_keys: list[str]) -> None:
                for nk, rk in zip(new_keys, ref_keys, strict=True):
                    if await client.type(nk) == "zset":
                        assert await client.zrange(nk, 0, -1, withscores=True) == \
                            await client.zrange(rk, 0, -1, withscores=True)
                    else:
                        assert await client.hgetall(nk) == await client.hgetall(rk), nk

            pop_new = OwnerKeys(f"popnew:{{{run}}}", CFG, per_customer=False)
            pop_ref = OwnerKeys(f"popref:{{{run}}}", CFG, per_customer=False)
            anon_raw: dict[str, str] = {}
            sizes: list[int] = []
            for c in range(6):
                new_key, ref_key = f"pnew:{{{run}-{c}}}", f"pref:{{{run}-{c}}}"
                offset, applied = 0, list[str]()
                evs = _events(rng, 400, 1_800_000_000.0 + c * 1000)
                i = 0
                while i < len(evs):
                    k = rng.choice((1, 1, 1, 2, 3, 7, 25))
                    rows: list[list[Any]] = []
                    pop_rows: list[list[Any]] = []
                    for etype, ts, props, ctx in evs[i:i + k]:
                        if etype == "identify" and anon_raw:  # a merge of an earlier profile
                            ops = FX.merge_ops(RawProfile(dict(anon_raw)), ts) + FX.ops_for(etype, ts, {}, {})
                        else:
                            ops = FX.ops_for(etype, ts, props, ctx)
                        event_id = rng.choice(applied) if applied and rng.random() < 0.05 else uuid.uuid4().hex
                        applied.append(event_id)
                        rows.append([offset, dedup_token(event_id), ts, ops, 1 if etype == "consent" else 0])
                        pop_ops = FX.popularity_ops_for(etype, ts, props)
                        if pop_ops:
                            pop_rows.append([offset, "", ts, pop_ops, 0])
                        offset += 1
                    if rng.random() < 0.05:  # a replay of what was applied already
                        rows = [list(r) for r in rows[:1]] + rows
                        rows[0][0] = max(0, rows[0][0] - 3)
                    i += k
                    batch = OwnerBatch(OwnerKeys(new_key, CFG), "events", c % 2, True, rows)
                    await both(batch, [ref_key], True)
                    await same([new_key], [ref_key])
                    if pop_rows:
                        await both(OwnerBatch(pop_new, "events", c % 2, False, pop_rows), pop_ref.keys, False)
                sizes.append(await client.hlen(new_key))
                anon_raw = cast(dict[str, str], await client.hgetall(new_key))  # a decoding client
            await same(pop_new.keys, pop_ref.keys)
            assert max(sizes) > 60  # the profiles grew (consent withdrawals empty them now and then)
        finally:
            await client.aclose()

    asyncio.run(go())
