"""Online collaborative recommenders (engine.recommend) and the MovieLens replay harness (bench).

Fast and offline: synthetic streams only, no dataset download.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from bench.movielens import (
    CoVisitationPolicy,
    PlainCoOccurrence,
    PopularityPolicy,
    RandomPolicy,
    Ratings,
    parse_inter,
    prequential,
    rank_metrics,
)
from engine.recommend import CoVisitation, Popularity
from engine.recommend.signal import CollaborativeSignal
from engine.snapshots import dump_model, load_model

KEY = b"k" * 32


def _signal_of(model: CoVisitation) -> CollaborativeSignal:
    signal = CollaborativeSignal()
    signal.model = model
    return signal


def _reloaded(model: CoVisitation) -> CoVisitation:
    """``model`` through a snapshot's bytes (to_state arrays are views: bytes make a true copy)."""
    loaded: CollaborativeSignal = load_model(dump_model(_signal_of(model), 1, KEY, name="t"), KEY, name="t")[0]
    return loaded.model


def clustered_stream(
    n_users: int = 300,
    n_clusters: int = 12,
    per_cluster: int = 15,
    per_user: int = 8,
    noise: float = 0.1,
    seed: int = 7,
) -> list[tuple[str, str, float]]:
    """Users engage with items of one taste cluster (plus some noise), interleaved in time; item
    popularity is Zipf-like overall, so popularity is a real but weak baseline."""
    rng = np.random.default_rng(seed)
    n_items = n_clusters * per_cluster
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rng.shuffle(pop)
    clusters = np.arange(n_items).reshape(n_clusters, per_cluster)
    events = []
    for u in range(n_users):
        c = clusters[rng.integers(n_clusters)]
        p = pop[c] / pop[c].sum()
        own = rng.choice(c, size=per_user, replace=False, p=p)
        for item in own:
            if rng.random() < noise:
                item = rng.choice(n_items, p=pop / pop.sum())
            events.append((rng.random() + u / n_users * 3, f"u{u}", f"i{item}"))
    events.sort()
    return [(user, item, float(t)) for t, user, item in events]


def replay_hr(stream: list[tuple[str, str, float]], model: CoVisitation | Popularity, k: int = 10) -> float:
    """Test-then-train HR@k over every interaction of a user with history (seen items excluded)."""
    seen: dict[str, list[str]] = {}
    hits, tests = 0, 0
    for user, item, ts in stream:
        history = seen.setdefault(user, [])
        if history and item not in history:
            if isinstance(model, CoVisitation):
                top = model.recommend(history, k=k)
            else:
                top = model.recommend(k=k, exclude=history)
            hits += item in {i for i, _ in top}
            tests += 1
        model.learn_one(user, item, 1.0, ts)
        history.append(item)
    return hits / tests


# ------------------------------------------------------------------------------------------ quality


def test_covisitation_beats_popularity_on_clustered_tastes() -> None:
    stream = clustered_stream()
    ours = replay_hr(stream, CoVisitation(top_k=32, history_size=10))
    pop = replay_hr(stream, Popularity())
    assert pop > 0.05  # the baseline is not degenerate
    assert ours >= 2 * pop, (ours, pop)
    assert ours > 0.4, ours


def test_one_item_history_gets_its_cluster() -> None:
    stream = clustered_stream(seed=3, noise=0.0)
    model = CoVisitation(top_k=32)
    for user, item, ts in stream:
        model.learn_one(user, item, ts=ts)
    cluster_of = {f"i{i}": i // 15 for i in range(12 * 15)}
    for seed_item in ("i0", "i20", "i100"):
        top = [i for i, _ in model.recommend([seed_item], k=10)]
        same = sum(cluster_of[str(i)] == cluster_of[seed_item] for i in top)
        assert same >= 9, (seed_item, top)


def test_recency_weights_the_latest_history_item_most() -> None:
    model = CoVisitation(recency=0.5)
    for u in range(5):
        model.learn_history([], "a")
        model.learn_history(["a"], "a2", ts=float(u))
        model.learn_history([], "b")
        model.learn_history(["b"], "b2", ts=float(u))
    assert model.recommend(["a", "b"], k=1)[0][0] == "b2"
    assert model.recommend(["b", "a"], k=1)[0][0] == "a2"
    flat = CoVisitation(recency=1.0)
    flat.learn_history([], "a")
    flat.learn_history(["a"], "x")
    flat.learn_history([], "b")
    s = flat.score(["a", "b"], ["x"])
    t = flat.score(["b", "a"], ["x"])
    assert s == pytest.approx(t)


def test_time_decay_lets_recent_co_visits_win() -> None:
    day = 86400.0
    model = CoVisitation(half_life=day)
    for u in range(4):  # old: a with b, four times
        model.learn_one(f"old{u}", "a", ts=0.0)
        model.learn_one(f"old{u}", "b", ts=0.0)
    model.learn_one("new", "a", ts=10 * day)  # ten half-lives later: a with c, once
    model.learn_one("new", "c", ts=10 * day)
    assert [i for i, _ in model.neighbours("a")] == ["c", "b"]
    undecayed = CoVisitation()
    for u in range(4):
        undecayed.learn_one(f"old{u}", "a", ts=0.0)
        undecayed.learn_one(f"old{u}", "b", ts=0.0)
    undecayed.learn_one("new", "a", ts=10 * day)
    undecayed.learn_one("new", "c", ts=10 * day)
    assert [i for i, _ in undecayed.neighbours("a")] == ["b", "c"]


def test_forward_decay_rescales_without_overflow_or_reordering() -> None:
    model = CoVisitation(half_life=1.0)
    model.learn_one("u", "a", ts=0.0)
    model.learn_one("u", "b", ts=0.0)
    for step in range(1, 40):  # 39 jumps of 100 half-lives: 2**3900 would overflow a float
        model.learn_one(f"v{step}", "a", ts=step * 100.0)
        model.learn_one(f"v{step}", f"x{step}", ts=step * 100.0)
    assert np.isfinite(model._w).all() and np.isfinite(model._pop).all()
    assert model.neighbours("a", k=1)[0][0] == "x39"
    assert np.isfinite(model.score_array(["a"])).all()


def test_weights_scale_pairs_and_nonpositive_weights_are_ignored() -> None:
    model = CoVisitation()
    model.learn_one("u", "a", weight=0.5)
    model.learn_one("u", "b", weight=2.0)
    model.learn_one("u", "c", weight=0.0)
    model.learn_one("u", "d", weight=-1.0)
    assert model.neighbours("a") == [("b", 1.0)]
    assert "c" not in model.items and "d" not in model.items
    assert model.history("u") == [("a", 0.5), ("b", 2.0)]


# ---------------------------------------------------------------------------------------- bounds


def test_neighbour_rows_stay_bounded_and_keep_the_heavy_pair() -> None:
    rng = np.random.default_rng(0)
    model = CoVisitation(top_k=16, history_size=5)
    for u in range(3000):
        items = [f"n{x}" for x in rng.integers(0, 400, size=4)]
        if u % 3 == 0:  # a true association hidden in noise
            items[1:3] = ["hero", "sidekick"]
        for item in items:
            model.learn_one(f"u{u}", item)
        assert model.state_size()["max_neighbours"] <= 16
    assert model.n_prunes > 0
    assert model._nbr.shape[1] == 16
    assert model.neighbours("hero", k=1)[0][0] == "sidekick"
    assert model.neighbours("sidekick", k=1)[0][0] == "hero"
    assert model.recommend(["hero"], k=1)[0][0] == "sidekick"


def test_user_histories_are_bounded_lru() -> None:
    model = CoVisitation(max_users=50, history_size=5)
    for u in range(200):
        for i in range(9):
            model.learn_one(f"u{u}", f"i{(u + i) % 30}")
    model.learn_one("u150", "i0")  # touched: now the most recently seen
    for u in range(200, 249):
        model.learn_one(f"u{u}", "i1")
    size = model.state_size()
    assert size["users"] == 50
    assert size["max_history"] == 5
    assert model.history("u0") == []
    assert model.history("u149") == []
    assert [i for i, _ in model.history("u150")][-1] == "i0"
    assert len(model.history("u150")) == 5


def test_max_items_evicts_least_popular_and_its_references() -> None:
    model = CoVisitation(max_items=10)
    for u in range(40):
        model.learn_one(f"u{u}", "hot")
        model.learn_one(f"u{u}", f"cold{u}")
    assert len(model) == 10
    assert model.state_size()["rows"] <= 11
    assert model.n_evicted_items == 31
    assert "hot" in model.items and "cold39" in model.items and "cold0" not in model.items
    live = {model.row_of(i) for i in model.items}
    used = model._nbr[: model.state_size()["rows"]]
    assert set(used[used >= 0].tolist()) <= live
    assert all(i in model.items for i, _ in model.neighbours("hot"))
    scores = model.score_array(["hot"])
    assert len(model.score(["hot"])) == 10
    assert np.isneginf(scores).sum() == scores.size - 10


def test_a_recycled_row_inherits_no_neighbours() -> None:
    model = CoVisitation(max_items=3)
    model.learn_one("u1", "a")
    model.learn_one("u1", "b")
    model.learn_one("u2", "a")
    model.learn_one("u3", "z")
    model.learn_one("u4", "y")  # evicts b (least popular, first row); y gets b's row
    assert "b" not in model.items and model.row_of("y") == 1
    assert model.neighbours("a") == [] and model.neighbours("y") == []
    model.learn_one("u5", "a")
    model.learn_one("u5", "y")
    assert model.neighbours("a") == [("y", 1.0)]


def test_learn_history_matches_learn_one_without_storing_visitors() -> None:
    stream = clustered_stream(n_users=60)
    kept, stateless = CoVisitation(top_k=8), CoVisitation(top_k=8)
    recent: dict[str, list[str]] = {}
    for user, item, ts in stream:
        kept.learn_one(user, item, ts=ts)
        stateless.learn_history(recent.get(user, [])[-20:], item, ts=ts)
        recent.setdefault(user, []).append(item)
    assert stateless.state_size()["users"] == 0
    np.testing.assert_array_equal(kept._nbr, stateless._nbr)
    np.testing.assert_allclose(kept._w, stateless._w)
    history = kept.history_items("u5")
    assert kept.score(history) == stateless.score(history)


def _noisy_stream(
    seed: int, n: int = 4000, n_users: int = 150, n_items: int = 300
) -> list[tuple[str, str, float, float]]:
    """Skewed visitors and items, repeated items in histories, some non-positive weights, rising time."""
    rng = np.random.default_rng(seed)
    users = (n_users * rng.random(n) ** 2).astype(int)
    items = np.minimum(rng.pareto(1.0, n).astype(int), n_items)
    weights = rng.choice([0.5, 1.0, 1.5, 2.0, 0.0, -1.0], size=n, p=[0.4, 0.2, 0.15, 0.15, 0.05, 0.05])
    ts = np.cumsum(rng.random(n) * 5.0)
    return [(f"u{u}", f"i{i}", float(w), float(t)) for u, i, w, t in zip(users, items, weights, ts, strict=True)]


def _assert_same_model(a: CoVisitation, b: CoVisitation) -> None:
    size = a.state_size()["rows"]
    assert b.state_size()["rows"] == size
    np.testing.assert_array_equal(a._nbr[:size], b._nbr[:size])  # same slots: same prunings
    np.testing.assert_array_equal(a._w[:size], b._w[:size])  # bit for bit
    np.testing.assert_array_equal(a._pop[:size], b._pop[:size])
    assert (a.n_prunes, a.n_evicted_items) == (b.n_prunes, b.n_evicted_items)
    assert a.items == b.items


@pytest.mark.parametrize(
    "params",
    [{"top_k": 6, "history_size": 10}, {"top_k": 3, "prune_to": 0.34}, {"top_k": 12, "half_life": 2.0}, {}],
)
def test_learn_many_is_learning_one_by_one(params: dict) -> None:
    """learn_many (grouped per batch) against the one-interaction path (learn_history with the same
    histories): identical arrays under heavy pruning, repeated history items, decay rescales."""
    stream = _noisy_stream(seed=len(params))
    batched, reference = CoVisitation(**params), CoVisitation(**params)
    rng = np.random.default_rng(1)
    start = 0
    while start < len(stream):
        size = int(rng.choice([1, 5, 60, 400]))
        batched.learn_many(stream[start : start + size])
        start += size
        if rng.random() < 0.1:  # a snapshot and a restore in between change nothing
            batched = _reloaded(batched)
    hist: dict[str, list[tuple[str, float]]] = {}
    for user, item, weight, ts in stream:
        recent = hist.setdefault(user, [])[-reference.history_size :]
        reference.learn_history([i for i, _ in recent], item, weight, ts, [w for _, w in recent])
        if weight > 0:
            hist[user].append((item, weight))
    if params.get("top_k", 200) < 20:
        assert reference.n_prunes > 100
    _assert_same_model(batched, reference)
    assert batched.history("u0") == [(i, w) for i, w in hist["u0"][-batched.history_size :]]


def test_learn_many_with_max_items_evicts_as_learn_one() -> None:
    stream = _noisy_stream(seed=5, n=2000)
    batched, one = CoVisitation(top_k=6, max_items=40), CoVisitation(top_k=6, max_items=40)
    batched.learn_many(stream)
    for row in stream:
        one.learn_one(*row)
    assert batched.n_evicted_items > 20
    _assert_same_model(batched, one)


def test_snapshot_state_has_no_learning_cache() -> None:
    """The state is the model's arrays and histories only: the per-row lookup dicts are rebuilt after a
    restore."""
    model = CoVisitation(top_k=4)
    model.learn_many(_noisy_stream(seed=2, n=300))
    state = model.to_state()
    assert not {name.lstrip("_") for name in CoVisitation._CACHE} & (set(state.params) | set(state.arrays))
    assert {"nbr", "w", "pop", "history_lengths"} <= set(state.arrays) and {"users", "items"} <= set(state.params)
    clone = _reloaded(model)
    more = _noisy_stream(seed=3, n=300)
    clone.learn_many(more)
    model.learn_many(more)
    _assert_same_model(clone, model)


def test_scores_recommend_and_snapshot() -> None:
    model = CoVisitation()
    for u, items in enumerate(["ab", "abc", "bc"]):
        for item in items:
            model.learn_one(u, item)
    scores = model.score(["a"], candidates=["b", "c", "zzz"])
    assert list(scores) == ["b", "c", "zzz"] and scores["zzz"] == 0.0 and scores["b"] > scores["c"]
    assert [i for i, _ in model.recommend(["a"], k=5)] == ["b", "c"]  # history excluded
    assert [i for i, _ in model.recommend(["a"], k=5, exclude=[])][0] == "b"
    assert model.recommend(["nobody-knows"], k=1)[0][0] == "b"  # popularity fallback
    clone = _reloaded(model)
    assert clone.score(["a"]) == model.score(["a"])
    with pytest.raises(ValueError):
        model.score_array(["a", "b"], weights=[1.0])
    with pytest.raises(ValueError):
        CoVisitation(prune_to=1.0)


def test_popularity_counts_and_excludes() -> None:
    pop = Popularity()
    for item in "aababc":
        pop.learn_one("u", item)
    assert pop.score([], ["a", "b", "c", "z"]) == {"a": 3.0, "b": 2.0, "c": 1.0, "z": 0.0}
    assert pop.recommend(k=2, exclude=["a"]) == [("b", 2.0), ("c", 1.0)]


# ------------------------------------------------------------------------------------ bench harness


def test_rank_metrics_expected_values_under_ties() -> None:
    scores = np.array([3.0, 2.0, 2.0, 2.0, -np.inf])
    hr, ndcg = rank_metrics(scores, 1, k=2)  # positions 1..3, uniformly: only position 1 is in top 2
    assert hr == pytest.approx(1 / 3)
    assert ndcg == pytest.approx((1 / np.log2(3)) / 3)
    expected_ndcg = float((1 / np.log2(np.arange(2, 12))).sum() / 100)
    assert rank_metrics(np.zeros(100), 0, k=10) == pytest.approx((0.1, expected_ndcg))


def test_parse_inter_orders_by_time_then_file_order() -> None:
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n3\t7\t4\t5\n1\t7\t2\t1\n2\t9\t5\t5\n"
    r = parse_inter(text)
    assert [r.user_ids[u] for u in r.user] == ["1", "3", "2"]
    assert r.ts.tolist() == [1.0, 5.0, 5.0]


def test_prequential_ranks_covisitation_above_popularity_above_random() -> None:
    stream = clustered_stream(n_users=400)
    users = sorted({u for u, _, _ in stream})
    items = sorted({i for _, i, _ in stream})
    uix, iix = {u: n for n, u in enumerate(users)}, {i: n for n, i in enumerate(items)}
    ratings = Ratings(
        user=np.array([uix[u] for u, _, _ in stream]),
        item=np.array([iix[i] for _, i, _ in stream]),
        rating=np.full(len(stream), 5.0),
        ts=np.array([t for _, _, t in stream]),
        user_ids=users,
        item_ids=items,
        source={},
    )
    out = prequential(
        ratings,
        {
            "random": RandomPolicy(len(items)),
            "popularity": PopularityPolicy(items),
            "plain": PlainCoOccurrence(len(items), len(users)),
            "covisit": CoVisitationPolicy(items, users, top_k=32),
        },
        split_at=len(stream) // 2,
    )
    p = {name: m["hr@10"] for name, m in out["policies"].items()}
    seen: dict[str, set[str]] = {}
    expected_tests = 0
    for user, item, _ in stream:
        expected_tests += bool(seen.get(user)) and item not in seen[user]
        seen.setdefault(user, set()).add(item)
    assert out["n_tests"] == expected_tests
    assert p["random"] < 0.09 < p["popularity"]
    assert p["covisit"] >= 2 * p["popularity"]
    assert p["plain"] > p["popularity"]
    lo, hi = out["policies"]["covisit"]["hr@10_ci95"]
    assert lo < p["covisit"] < hi
    assert sum(v["n"] for v in out["by_period"].values()) == out["n_tests"]


def test_serving_copy_scores_the_same_and_leaves_the_learning_model_untouched() -> None:
    """``without_histories`` is what the learner publishes for serving: same neighbours and scores, no
    per-visitor state, and taking it in the middle of learning changes nothing for the learner."""
    rng = random.Random(4)
    rows = [(f"u{rng.randrange(300)}", f"i{int(rng.paretovariate(1.2)) % 120}", 1.0, float(t)) for t in range(6000)]
    params: dict[str, Any] = {"top_k": 16, "history_size": 8, "half_life": 2000.0}
    learning, control = CoVisitation(**params), CoVisitation(**params)
    learning.learn_many(rows[:3000])
    control.learn_many(rows[:3000])
    lean = learning.without_histories()
    blob = dump_model(_signal_of(lean), 1, KEY, name="covisit")
    assert lean.state_size()["users"] == 0 and learning.state_size()["users"] == control.state_size()["users"] > 0
    assert len(blob) < len(dump_model(_signal_of(learning), 1, KEY, name="covisit"))
    histories = [[f"i{rng.randrange(120)}" for _ in range(rng.randint(1, 8))] for _ in range(50)]
    items = [f"i{k}" for k in range(120)]
    loaded = load_model(blob, KEY, name="covisit")[0].model
    for h in histories:
        assert loaded.score(h, items) == learning.score(h, items)
    learning.learn_many(rows[3000:])  # the learner goes on as if no copy had been taken
    control.learn_many(rows[3000:])
    for h in histories:
        assert learning.score(h, items) == control.score(h, items)
    assert learning.history("u7") == control.history("u7")
