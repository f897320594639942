"""The decide path's faster code gives the same floats, in the same order, as the straightforward version."""

from __future__ import annotations

import math
import random

from engine.config import Action, ScoringSettings
from engine.features import Profile, context_features
from engine.scoring import AffinityPopularityScorer, PopularitySnapshot


def _reference_rank(w: ScoringSettings, actions: list[Action], affinities: dict | None,
                    pop: PopularitySnapshot, collaborative: dict | None) -> list[tuple[str, float]]:
    def normalised(scores: dict | None) -> dict:
        if not scores or max(scores.values()) <= 0:
            return {}
        peak = max(scores.values())
        return {k: v / peak for k, v in scores.items()}

    cat, item = normalised((affinities or {}).get("category")), normalised((affinities or {}).get("item"))
    out = []
    for a in actions:
        prior = 1.0 + math.log1p(pop.get("item", a.item_id) + 0.5 * pop.get("category", a.category))
        personal = 1.0
        if cat or item:
            personal += w.category_weight * cat.get(a.category or "", 0.0)
            personal += w.item_weight * item.get(a.item_id or "", 0.0)
            if a.tags and cat:
                personal += w.tag_weight * sum(cat.get(t, 0.0) for t in a.tags) / len(a.tags)
        if collaborative:
            personal += w.covisit_weight * float(collaborative.get(a.id, 0.0))
        out.append((a, prior * personal if (cat or item or collaborative) else prior))
    return [(a.id, s) for a, s in sorted(out, key=lambda pair: (-pair[1], pair[0].id))]


def test_baseline_scorer_matches_the_reference_bit_for_bit() -> None:
    rng = random.Random(3)
    cats, tags = ["shoes", "books", "toys", "sale"], ["sale", "new", "books"]
    actions = [Action(id=f"a{i}", placements=("p",), category=rng.choice(cats), item_id=f"i{i % 7}",
                      tags=tuple(rng.sample(tags, rng.randint(0, 2)))) for i in range(40)]
    w = ScoringSettings()
    scorer = AffinityPopularityScorer(w)
    for trial in range(400):
        pop = PopularitySnapshot({} if trial % 9 == 0 else {
            "category": {c: rng.choice([0.0, 1.0, rng.random() * 5]) for c in cats},
            "item": {f"i{i}": rng.random() for i in range(7)}})
        pool = [rng.choice(actions) for _ in range(rng.randint(1, 40))]  # duplicates allowed, as in requests
        aff = None if trial % 4 == 0 else {
            "category": {c: rng.choice([0.0, 0.5, rng.random()]) for c in rng.sample(cats + tags, 3)},
            "item": {f"i{i}": rng.random() for i in rng.sample(range(7), 2)}}
        coll = {a.id: rng.random() for a in pool[:3]} if trial % 3 == 0 else None
        got = [(a.id, s) for a, s in scorer.rank(pool, aff, pop, coll)]
        assert got == _reference_rank(w, pool, aff, pop, coll)


def test_context_features_keep_their_names_values_and_order() -> None:
    profile = Profile(
        customer_id="c", exists=True, counts={"page_view": 12, "click": 3}, first_seen=1.0, last_seen=900.0,
        session={"pages": 4}, affinities={"category": {"b": 2.0, "a": 2.0, "c": 5.0, "z": 0.0},
                                          "item": {f"i{i}": float(i % 4) for i in range(14)}, "empty": {}},
        recent={}, cart={"i1": 2}, monetary=10.0, windows={"views": {"1h": 3, "24h": 9}}, consent={})
    x = context_features(profile, 4500.0)
    expected: dict[str, float] = {"bias": 1.0}
    for name, scores in profile.affinities.items():
        total = sum(scores.values())
        if total > 0:
            for m, s in sorted(scores.items(), key=lambda kv: -kv[1])[:10]:
                expected[f"aff_{name}:{m}"] = s / total
    expected.update({"log_count:page_view": math.log1p(12), "log_count:click": math.log1p(3),
                     "hours_since_last_seen": 1.0, "session_pages": 4.0, "cart_items": 2.0,
                     "log_monetary": math.log1p(10.0), "win:views:1h": 3.0, "win:views:24h": 9.0})
    assert list(x.items()) == list(expected.items())


def test_eligible_actions_match_the_straightforward_filter() -> None:
    """Per-placement pools built once give the actions the per-request filter gave, in the same order."""
    from engine.config import parse_config
    from serving.decide import DecideRequest, eligible_actions

    rng = random.Random(5)
    now = 1_800_000_000.0
    raw_actions = []
    for i in range(30):
        a: dict = {"id": f"a{i}", "placements": rng.sample(["p", "q"], rng.randint(1, 2)), "category": "c"}
        if i % 4 == 0:  # some with a validity period: over, running, not started yet
            a["valid_to"] = rng.choice(["2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z"])
        if i % 5 == 0:
            a["valid_from"] = rng.choice(["2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z"])
        if i % 3 == 0:  # some for an audience
            a["audience"] = rng.choice([{"include": ["vip"]}, {"exclude": ["lapsed"]},
                                        {"include": ["vip", "new"], "exclude": ["lapsed"]}])
        raw_actions.append(a)
    segments = [{"id": s, "all": [{"metric": "monetary", "min": 0}]} for s in ("vip", "new", "lapsed")]
    config = parse_config({"placement": [{"id": "p"}, {"id": "q"}], "action": raw_actions, "segment": segments})
    ids = list(config.actions)
    for _ in range(300):
        placement = rng.choice(["p", "q"])
        candidates = None if rng.random() < 0.3 else [rng.choice(ids) for _ in range(rng.randint(0, 40))]
        req = DecideRequest(None, "v", placement, 3, candidates, {})
        pool = [config.actions[c] for c in candidates] if candidates is not None else config.actions_for(placement)
        member = frozenset(rng.sample(["vip", "new", "lapsed"], rng.randint(0, 3)))
        want = [a for a in pool if placement in a.placements and a.is_valid_at(now)
                and (a.audience is None or ((not a.audience.include or member & set(a.audience.include))
                                            and not member & set(a.audience.exclude)))]
        assert eligible_actions(req, config, now, member) == want
