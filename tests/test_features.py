"""Pure feature logic: event -> operations, raw profile -> decoded features."""

import math

from engine.config import load_config
from engine.features import FeatureExtractor, RawProfile, context_features, decode
from engine.settings import REPO_ROOT

CFG = load_config(REPO_ROOT / "config" / "engine.toml")
FX = FeatureExtractor(CFG)


def codes(ops: list) -> list[str]:
    return [op[0] for op in ops]


def test_page_view_updates_counts_session_affinity_recent_and_windows() -> None:
    ops = FX.ops_for("page_view", 3600.0, {"category": "shoes", "item_id": "sku-1"}, {"session_id": "s1"})
    assert ops[0] == ["i", "c:page_view", 1]
    assert ["min", "first_seen", 3600.0] in ops and ["max", "last_seen", 3600.0] in ops
    assert ["sess", 3600.0, "s1", 1800.0] in ops
    assert ["i", "sess_pages", 1] in ops
    z = [op for op in ops if op[0] == "z"]
    assert {(op[2], op[3]) for op in z} == {("shoes", 1.0), ("sku-1", 1.0)}
    assert [op for op in ops if op[0] == "r"][0][2] == "sku-1"
    windows = [op for op in ops if op[0] == "w"]
    assert {op[2] for op in windows} == {"views:1h", "views:24h", "views:7d"}
    # bucket index = ts // bucket width
    assert ["w", windows[0][1], "views:1h", 12, 12, 1] in windows


def test_cart_and_purchase() -> None:
    add = FX.ops_for("add_to_cart", 10.0, {"item_id": "sku-1", "quantity": 2, "category": "shoes"}, {})
    assert [op for op in add if op[0] == "cart"][0][2:] == ["sku-1", 2]
    rm = FX.ops_for("remove_from_cart", 11.0, {"item_id": "sku-1"}, {})
    assert [op for op in rm if op[0] == "cart"][0][2:] == ["sku-1", -1]
    buy = FX.ops_for("purchase", 12.0, {"order_id": "o1", "value": 99.5,
                                        "items": [{"item_id": "sku-1", "category": "shoes"}]}, {})
    assert "cartclear" in codes(buy)
    assert ["f", "monetary", 99.5] in buy
    # purchase line items feed affinities with the purchase weight
    assert ("shoes", 8.0) in {(op[2], op[3]) for op in buy if op[0] == "z"}


def test_consent_withdrawal_wipes_and_sets_flag() -> None:
    ops = FX.ops_for("consent", 1.0, {"personalisation": False, "marketing": True}, {})
    assert ["set", "consent_personalisation", 0] in ops
    assert ["set", "consent_marketing", 1] in ops
    assert ["wipe"] in ops
    assert "wipe" not in codes(FX.ops_for("consent", 1.0, {"personalisation": True}, {}))


def test_events_without_features_still_count() -> None:
    assert codes(FX.ops_for("identify", 1.0, {}, {})) == ["i", "min", "max"]
    search = FX.ops_for("search", 1.0, {"query": "boots"}, {})
    assert "z" not in codes(search)  # no category on the event: nothing to attribute


def test_popularity_ops_only_for_weighted_events() -> None:
    assert FX.popularity_ops_for("page_view", 1.0, {"category": "shoes"})
    assert FX.popularity_ops_for("remove_from_cart", 1.0, {"item_id": "x"}) == []


def test_decode_decays_affinities_and_sums_windows() -> None:
    hl = CFG.affinities[0].half_life_hours * 3600
    now = 1000.0 + hl  # one half-life after the landmark
    raw = RawProfile(
        hash={"c:page_view": "3", "first_seen": "1000", "last_seen": "1500", "L:category": "1000",
              "sess_id": "s1", "sess_start": "1000", "sess_last": "1500", "sess_pages": "3",
              "monetary": "10.5", "consent_personalisation": "1"},
        windows={
            # the current 1h bucket, and a slot still holding a bucket that fell out of the window
            f"views:1h:{int(now // 300) % 12}": f"{int(now // 300)}:2",
            f"views:1h:{int(now // 300 - 1) % 12}": f"{int(now // 300) - 13}:5",
        },
        affinities={"category": [("shoes", 4.0), ("books", 2.0)]},
        recent={"recent_items": ["sku-2", "sku-1"]},
        cart={"sku-1": "2"},
    )
    p = decode("c1", raw, CFG, now)
    assert math.isclose(p.affinities["category"]["shoes"], 2.0)
    assert p.counts == {"page_view": 3}
    assert p.windows["views"]["1h"] == 2
    assert p.session["length_s"] == 500.0 and p.session["pages"] == 3
    assert p.cart == {"sku-1": 2} and p.monetary == 10.5
    assert p.personalisation_allowed
    x = context_features(p, now)
    assert math.isclose(x["aff_category:shoes"], 2 / 3)
    assert x["win:views:1h"] == 2.0


def test_merge_ops_reexpress_scores_at_merge_time() -> None:
    hl = CFG.affinities[0].half_life_hours * 3600
    raw = RawProfile(hash={"c:click": "2", "L:category": "0", "first_seen": "5"},
                     affinities={"category": [("shoes", 8.0)]}, recent={"recent_items": ["a"]},
                     cart={"x": "1"}, windows={"views:24h:3": "3:4"})
    ops = FX.merge_ops(raw, ts=hl)
    zm = [op for op in ops if op[0] == "zm"][0]
    assert zm[2] == "shoes" and math.isclose(zm[3], 4.0)  # decayed by one half-life
    assert ["i", "c:click", 2] in ops and ["min", "first_seen", 5.0] in ops
    assert ["wm", FX._idx.win, "views:24h", 3, 24, 4] in ops
    assert "ra" in codes(ops) and "cart" in codes(ops)
