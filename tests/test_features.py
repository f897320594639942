"""Feature logic: event -> operations, raw profile -> decoded features (pure). The profile hash the Lua
applier writes is checked on a real Redis in ``tests/integration/test_profile_hash.py``."""

from __future__ import annotations

import math
import uuid

import orjson

from engine.config import WINDOWS, load_config
from engine.features import FeatureExtractor, RawProfile, context_features, decode, window_total
from engine.layout import (
    DEDUP_TOKEN_CHARS,
    dedup_token,
    feature_codes,
    popularity_keys,
    profile_fields,
)
from engine.profile_store import encode_events
from engine.settings import REPO_ROOT

CFG = load_config(REPO_ROOT / "config" / "engine.toml")
FX = FeatureExtractor(CFG)
FL = profile_fields(CFG)


def codes(ops: list) -> list[str]:
    return [op[0] for op in ops]


# -- pure ----------------------------------------------------------------------------------------------


def test_page_view_updates_counts_session_affinity_recent_and_windows() -> None:
    ops = FX.ops_for("page_view", 3600.0, {"category": "shoes", "item_id": "sku-1"}, {"session_id": "s1"})
    assert ops[0] == ["i", "cv", 1]
    assert ["min", "fs", 3_600_000] in ops and ["max", "ls", 3_600_000] in ops
    assert ["sess", 3_600_000, "s1", 1_800_000] in ops
    assert ["i", "sp", 1] in ops
    a = [op for op in ops if op[0] == "a" and not op[1].startswith("a_")]  # not the activity hours
    assert {(op[1], op[2], op[3]) for op in a} == {(FL.affinity["category"], "shoes", 1.0),
                                                  (FL.affinity["item"], "sku-1", 1.0)}
    assert [op for op in ops if op[0] == "r"][0][1:3] == [FL.recent["recent_items"], "sku-1"]
    windows = [op for op in ops if op[0] == "w"]
    assert {op[1] for op in windows} == {FL.window["views", w] for w in ("1h", "24h", "7d")}
    # bucket index = ts // bucket width
    assert ["w", FL.window["views", "1h"], 12, 12, 1] in windows


def test_cart_and_purchase() -> None:
    add = FX.ops_for("add_to_cart", 10.0, {"item_id": "sku-1", "quantity": 2, "category": "shoes"}, {})
    assert [op for op in add if op[0] == "cart"][0][1:] == ["C:sku-1", 2]
    rm = FX.ops_for("remove_from_cart", 11.0, {"item_id": "sku-1"}, {})
    assert [op for op in rm if op[0] == "cart"][0][1:] == ["C:sku-1", -1]
    buy = FX.ops_for("purchase", 12.0, {"order_id": "o1", "value": 99.5,
                                        "items": [{"item_id": "sku-1", "category": "shoes"}]}, {})
    assert "cartclear" in codes(buy)
    assert ["f", "m", 99.5] in buy
    # purchase line items feed affinities with the purchase weight
    assert ("shoes", 8.0) in {(op[2], op[3]) for op in buy if op[0] == "a"}


def test_consent_withdrawal_wipes_and_sets_flag() -> None:
    ops = FX.ops_for("consent", 1.0, {"personalisation": False, "marketing": True}, {})
    assert ["set", "kp", 0] in ops
    assert [op for op in ops if op[0] == "set" and op[1] in ("kme", "kmp", "kms", "kmw")] == [
        ["set", f, 1] for f in ("kme", "kmp", "kms", "kmw")]  # marketing: every channel
    assert ["max", "kt", 1000] in ops  # when the choice was made (a merge keeps the newer)
    assert ["wipe"] in ops
    by_channel = FX.ops_for("consent", 2.0, {"marketing": {"email": False, "push": True}}, {})
    assert by_channel == [["set", "kme", 0], ["set", "kmp", 1], ["max", "kt", 2000]]  # personalisation untouched
    assert "wipe" not in codes(FX.ops_for("consent", 1.0, {"personalisation": True}, {}))


def test_events_without_features_still_count() -> None:
    assert codes(FX.ops_for("identify", 1.0, {}, {})) == ["i", "min", "max"]
    search = FX.ops_for("search", 1.0, {"query": "boots"}, {})
    # no category on the event: nothing to attribute (the activity hours of next-best action, "a_" fields, aside)
    assert not [op for op in search if op[0] == "a" and not op[1].startswith("a_")]


def test_popularity_ops_only_for_weighted_events() -> None:
    ops = FX.popularity_ops_for("page_view", 1.0, {"category": "shoes"})
    assert ops and ops[0][0] == "z" and ops[0][-1] == "L:category"  # serving reads L:<feature> there
    contact = popularity_keys(CFG).contact  # next-best action's activity hours: any active event
    assert [op for op in FX.popularity_ops_for("remove_from_cart", 1.0, {"item_id": "x"}) if op[1] != contact] == []


def test_feature_codes_are_short_distinct_and_independent_of_order() -> None:
    names = ["category", "item", "brand", "colour", "size", "seller"]
    c = feature_codes("affinity", names)
    assert len(set(c.values())) == len(names)
    assert c == feature_codes("affinity", list(reversed(names)))
    assert all(len(v) <= 2 for v in c.values())
    # a code never depends on an unrelated feature unless the two would collide
    assert feature_codes("affinity", ["item"])["item"] == feature_codes("affinity", ["item", "category"])["item"]


def test_dedup_tokens_are_fixed_length_and_safe_in_a_chunk() -> None:
    toks = {dedup_token(uuid.uuid4().hex) for _ in range(1000)}
    assert len(toks) == 1000
    assert all(len(t) == DEDUP_TOKEN_CHARS and t.isascii() and "\x1f" not in t and "~" not in t for t in toks)
    assert dedup_token("abc") == dedup_token("abc")


def test_window_total_counts_only_buckets_inside_the_window() -> None:
    width, n = WINDOWS["1h"]
    now = 1_000_000.0
    cur = int(now // width)
    assert window_total(f"{cur}:2,,3", width, n, now) == 5
    assert window_total(f"{cur}:2,,3", width, n, now + width) == 5  # one bucket later: both still inside
    # newest-but-11 is the oldest bucket inside a 12-bucket window; newest-12 has fallen out
    assert window_total(f"{cur}:1" + ",1" * 12, width, n, now) == 12
    assert window_total(f"{cur - 11}:4", width, n, now) == 4
    assert window_total(f"{cur - 12}:4", width, n, now) == 0
    assert window_total(f"{cur + 1}:7,5", width, n, now) == 5  # a future bucket does not count yet
    assert window_total(None, width, n, now) == 0


def test_decode_decays_affinities_and_sums_windows() -> None:
    hl = CFG.affinities[0].half_life_hours * 3600
    now = 1000.0 + hl  # one half-life after the landmark
    bucket = int(now // 300)
    raw = RawProfile(hash={
        "cv": "3", "c:custom": "1", "fs": "1000000", "ls": "1500000", FL.landmark["category"]: "1000",
        "si": "s1", "ss": "1000000", "sl": "1500000", "sp": "3", "m": "10.5", "kp": "1", "ka": "0",
        # the current 1h bucket holds 2; the one 13 buckets back fell out of the window
        FL.window["views", "1h"]: f"{bucket}:2" + "," * 13 + "5",
        FL.affinity["category"] + "shoes": "4", FL.affinity["category"] + "books": "2",
        FL.recent["recent_items"] + "0": "sku-2\x1fsku-1", "C:sku-1": "2",
        "d:0": "abcdefABCDEF", "d:n": "2", "off:events:0": "41",
    })
    p = decode("c1", raw, CFG, now)
    assert math.isclose(p.affinities["category"]["shoes"], 2.0)
    assert p.affinities["item"] == {}
    assert p.counts == {"page_view": 3, "custom": 1}
    assert p.first_seen == 1000.0 and p.last_seen == 1500.0
    assert p.windows["views"] == {"1h": 2, "24h": 0, "7d": 0}
    assert p.session["length_s"] == 500.0 and p.session["pages"] == 3 and p.session["id"] == "s1"
    assert p.recent == {"recent_items": ["sku-2", "sku-1"]}
    assert p.cart == {"sku-1": 2} and p.monetary == 10.5
    assert p.consent == {"personalisation": True, "analytics": False}
    assert p.personalisation_allowed
    x = context_features(p, now)
    assert math.isclose(x["aff_category:shoes"], 2 / 3)
    assert x["win:views:1h"] == 2.0


def test_merge_ops_reexpress_scores_at_merge_time() -> None:
    hl = CFG.affinities[0].half_life_hours * 3600
    raw = RawProfile(hash={"ck": "2", FL.landmark["category"]: "0", "fs": "5000",
                           FL.affinity["category"] + "shoes": "8", FL.recent["recent_items"] + "0": "a\x1fb",
                           "C:x": "1", FL.window["views", "24h"]: "3:4,,1", "d:0": "zzzzzz", "off:events:1": "9"})
    ops = FX.merge_ops(raw, ts=hl)
    a = [op for op in ops if op[0] == "a"][0]
    assert a[1:3] == [FL.affinity["category"], "shoes"] and math.isclose(a[3], 4.0)  # decayed by one half-life
    assert ["i", "ck", 2] in ops and ["min", "fs", 5000] in ops
    assert ["w", FL.window["views", "24h"], 3, 24, 4] in ops and ["w", FL.window["views", "24h"], 1, 24, 1] in ops
    assert [op[2] for op in ops if op[0] == "ra"] == ["a", "b"]
    assert ["cart", "C:x", 1] in ops
    assert not [op for op in ops if "d:0" in op or "off:events:1" in op]  # dedup and offsets are not merged


def test_encode_events_is_one_flat_array_with_the_time_in_ms() -> None:
    rows = [[7, "AbC-9x", 12.5, [["i", "cv", 1], ["wipe"]], 0], [8, "", 13.0, [], 1]]
    assert orjson.loads(encode_events(rows)) == [7, "AbC-9x", 0, 12500, 2, "i", "cv", 1, "wipe", 8, "", 1, 13000, 0]
