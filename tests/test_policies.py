"""Policies learn, explore, and report the probabilities they actually act with."""

from __future__ import annotations

import collections
import random
from collections.abc import Callable

import numpy as np
import pytest

import engine.policies
import engine.policies.base
import engine.policies.ctr
import engine.policies.features
import engine.policies.linear
import engine.policies.popularity
import engine.policies.random
from engine.policies import (
    Candidate,
    CTRRanker,
    LinearThompson,
    LinUCB,
    Policy,
    PopularityPolicy,
    RandomPolicy,
    Ranked,
    make_policy,
)
from engine.policies.features import FeatureHasher, stable_hash

N_ACTIONS = 5
ACTIONS = [Candidate(f"a{i}", {f"cat:c{i}": 1.0, f"tag:t{i % 2}": 1.0}) for i in range(N_ACTIONS)]


def _context(rng: random.Random) -> tuple[dict[str, float], int]:
    """A visitor of type u (a category affinity) plus irrelevant numeric features; best action = a<u>."""
    u = rng.randrange(N_ACTIONS)
    ctx = {f"aff_cat:c{u}": 1.0, "noise": rng.gauss(0.0, 1.0), "recency_h": rng.expovariate(0.1),
           "cnt:page_view": float(rng.randrange(30))}
    return ctx, u


def _click_prob(action: int, user_type: int) -> float:
    # the best action for a visitor is the one of her category; a context-free policy can't find it
    return 0.6 if action == user_type else 0.1 + 0.05 * action


def _play(policy: Policy, rounds: int, seed: int) -> list[bool]:
    env, prng = random.Random(seed), random.Random(seed + 1000)
    hits = []
    for _ in range(rounds):
        ctx, u = _context(env)
        ranked = policy.rank(ctx, ACTIONS, 1, prng)
        a = int(str(ranked.top)[1:])
        policy.learn_one(ctx, ACTIONS[a], float(env.random() < _click_prob(a, u)))
        hits.append(a == u)
    return hits


LEARNERS: dict[str, Callable[[], Policy]] = {
    "linucb_hybrid": lambda: LinUCB(alpha=1.0),
    "linucb_disjoint": lambda: LinUCB(alpha=1.0, shared_dims=0),
    "thompson_hybrid": lambda: LinearThompson(v=0.5),
    "thompson_disjoint": lambda: LinearThompson(v=0.5, shared_dims=0),
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_linear_policies_learn_the_context_dependent_best_action(name: str, seed: int) -> None:
    hits = _play(LEARNERS[name](), 3000, seed)
    assert sum(hits[-500:]) / 500 > 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_ctr_ranker_learns_too(seed: int) -> None:
    hits = _play(CTRRanker(epsilon=0.05), 3000, seed)
    assert sum(hits[-500:]) / 500 > 0.8


@pytest.mark.parametrize("policy", [RandomPolicy(), PopularityPolicy(bonus=0.0)], ids=["random", "popularity"])
def test_context_free_baselines_cannot_solve_it(policy: Policy) -> None:
    # the benchmark problem really needs the context: this is what makes the test above able to fail
    hits = _play(policy, 3000, 0)
    assert sum(hits[-500:]) / 500 < 0.45


# -- propensities --------------------------------------------------------------------------------
def _trained(factory: Callable[[], Policy]) -> Policy:
    policy = factory()
    _play(policy, 300, 7)
    return policy


PROPENSITY_POLICIES: dict[str, Callable[[], Policy]] = {
    "random": RandomPolicy,
    "popularity": PopularityPolicy,
    "linucb": LinUCB,
    "linear_thompson": lambda: LinearThompson(v=3.0, propensity_samples=400),  # wide: several winners
    "ctr_ranker": lambda: CTRRanker(epsilon=0.3),
}


@pytest.mark.parametrize("name", sorted(PROPENSITY_POLICIES))
def test_reported_propensity_matches_how_often_the_top_action_is_shown(name: str) -> None:
    policy = _trained(PROPENSITY_POLICIES[name])
    ctx, _ = _context(random.Random(3))
    rng = random.Random(11)
    n = 3000
    counts: collections.Counter[str] = collections.Counter()
    reported: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(n):
        r = policy.rank(ctx, ACTIONS, 3, rng)
        assert 0.0 < r.propensity <= 1.0
        assert len(r.action_ids) == 3 == len(set(r.action_ids)) == len(r.scores)
        assert r.top is not None
        counts[r.top] += 1
        reported[r.top].append(r.propensity)
    mean_reported = {a: float(np.mean(p)) for a, p in reported.items()}
    # the probabilities of the possible top actions form a distribution ...
    assert sum(mean_reported.values()) == pytest.approx(1.0, abs=0.05)
    # ... and each one is how often that action actually came first
    for a, p in mean_reported.items():
        freq = counts[a] / n
        assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.02, (a, freq, p)


def test_epsilon_greedy_propensities_are_exact() -> None:
    policy = CTRRanker(epsilon=0.2, optimism=0.0)
    for _ in range(200):
        policy.learn_one({}, ACTIONS[0], 1.0)
        policy.learn_one({}, ACTIONS[1], 0.0)
    k = len(ACTIONS)
    seen = {}
    rng = random.Random(0)
    for _ in range(500):
        r = policy.rank({}, ACTIONS, 1, rng)
        seen[(r.top, r.explored)] = r.propensity
    assert seen[("a0", False)] == pytest.approx(0.8 + 0.2 / k)
    assert all(p == pytest.approx(0.2 / k) for (a, _), p in seen.items() if a != "a0")
    assert all(explored for (a, explored) in seen if a != "a0")


def test_ties_are_broken_at_random_and_reported() -> None:
    policy = LinUCB()  # untrained: every action has the same score
    rng = random.Random(0)
    tops = collections.Counter(policy.rank({}, ACTIONS, 1, rng).top for _ in range(1000))
    assert set(tops) == {c.action_id for c in ACTIONS}
    assert policy.rank({}, ACTIONS, 1, rng).propensity == pytest.approx(1 / N_ACTIONS)


# -- cold start, robustness ----------------------------------------------------------------------
COLD_START: dict[str, Callable[[], Policy]] = {
    "popularity": PopularityPolicy,
    "linucb": LinUCB,
    "linear_thompson": LinearThompson,
    "ctr_ranker": CTRRanker,
}


@pytest.mark.parametrize("name", sorted(COLD_START))
def test_a_new_action_gets_explored(name: str) -> None:
    policy = COLD_START[name]()
    env, prng = random.Random(5), random.Random(6)
    for _ in range(1500):
        ctx, u = _context(env)
        a = int(str(policy.rank(ctx, ACTIONS, 1, prng).top)[1:])
        policy.learn_one(ctx, ACTIONS[a], float(env.random() < _click_prob(a, u)))
    new = Candidate("brand-new", {"cat:c9": 1.0, "tag:t0": 1.0})
    shown = 0
    for _ in range(100):
        ctx, _ = _context(env)
        r = policy.rank(ctx, [*ACTIONS, new], 1, prng)
        if r.top == new.action_id:
            shown += 1
            policy.learn_one(ctx, new, 0.0)
    assert shown >= 3, f"{name} showed the new action {shown} times in 100 rounds"


@pytest.mark.parametrize("name", sorted(engine.policies.POLICIES))
def test_unseen_features_and_edge_cases(name: str) -> None:
    policy = make_policy(name)
    assert isinstance(policy, Policy)
    rng = random.Random(0)
    ctx = {"never:seen": 3.0, "aff_cat:zzz": 0.5, "big": 1e9, "neg": -42.0, "zero": 0.0}
    odd = [Candidate("x", {"cat:zzz": 1.0, "weird feature name with spaces": 2.0}), Candidate("y")]
    r = policy.rank(ctx, odd, 5, rng)
    assert sorted(r.action_ids) == ["x", "y"] and all(np.isfinite(r.scores))
    assert policy.rank(ctx, [], 3, rng) == Ranked([], [], 1.0, False)
    assert policy.rank(ctx, odd, 0, rng).action_ids == []
    policy.learn_one(ctx, odd[0], 1.0)
    policy.learn_one({}, Candidate("z"), 0.0)
    assert policy.n_updates == 2
    assert policy.rank({}, odd, 1, rng).top in {"x", "y"}


def test_make_policy_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")


# -- popularity per segment ----------------------------------------------------------------------
def test_popularity_per_segment_and_fallback() -> None:
    pop = PopularityPolicy(bonus=0.0, prior_strength=5.0)
    a, b = Candidate("a"), Candidate("b")
    for _ in range(100):
        pop.learn_one({"segment:men": 1}, a, 1.0)
        pop.learn_one({"segment:men": 1}, b, 0.0)
    for _ in range(30):
        pop.learn_one({"segment:women": 1}, a, 0.0)
        pop.learn_one({"segment:women": 1}, b, 1.0)
    rng = random.Random(0)
    assert pop.rank({"segment:men": 1}, [a, b], 2, rng).action_ids == ["a", "b"]
    assert pop.rank({"segment:women": 1}, [a, b], 2, rng).action_ids == ["b", "a"]
    # no segment, or a segment never seen: the global rates (a: 100/130 clicks, b: 30/130)
    assert pop.rank({}, [a, b], 1, rng).top == "a"
    assert pop.rank({"segment:kids": 1}, [a, b], 1, rng).top == "a"
    # segment_prefix=None ignores segments altogether
    glob = PopularityPolicy(bonus=0.0, segment_prefix=None)
    for _ in range(10):
        glob.learn_one({"segment:women": 1}, b, 1.0)
        glob.learn_one({"segment:women": 1}, a, 0.0)
    assert glob.rank({"segment:men": 1}, [a, b], 1, rng).top == "b"


# -- linear algebra ------------------------------------------------------------------------------
def test_hybrid_linucb_matches_a_brute_force_joint_ridge_regression() -> None:
    d, k = 8, 6
    policy = LinUCB(context_dims=d, shared_dims=k, ridge=1.0)
    cands = [Candidate(f"a{i}", {f"cat:c{i % 3}": 1.0, "price": i / 3}) for i in range(4)]
    zh = policy._z_hasher
    assert zh is not None  # hybrid: shared features on
    rng = random.Random(0)
    rows = []
    for _ in range(80):
        ctx = {f"aff_cat:c{rng.randrange(3)}": 1.0, "noise": rng.gauss(0, 1)}
        c = cands[rng.randrange(4)]
        r = rng.random()
        policy.learn_one(ctx, c, r)
        rows.append((policy._x_hasher.vector(ctx), zh.cross_matrix(ctx, [c])[0],
                     int(c.action_id[1:]), r))
    phi = np.zeros((len(rows), k + 4 * d))
    y = np.zeros(len(rows))
    for i, (x, z, a, r) in enumerate(rows):
        phi[i, :k], phi[i, k + a * d:k + (a + 1) * d], y[i] = z, x, r
    A = phi.T @ phi + np.eye(k + 4 * d)
    w = np.linalg.solve(A, phi.T @ y)
    ctx = {"aff_cat:c1": 1.0, "noise": 0.3}
    mean, var = policy.posterior(ctx, cands)
    x, Z = policy._x_hasher.vector(ctx), zh.cross_matrix(ctx, cands)
    for a in range(4):
        f = np.zeros(k + 4 * d)
        f[:k], f[k + a * d:k + (a + 1) * d] = Z[a], x
        assert mean[a] == pytest.approx(f @ w, abs=1e-9)
        assert var[a] == pytest.approx(f @ np.linalg.solve(A, f), abs=1e-9)


def test_feature_hashing_is_stable_across_processes_and_versions() -> None:
    # snapshots rely on this: a changed hash silently scrambles every stored model
    assert stable_hash("cat:shoes") == 4889153783080211645
    x = FeatureHasher(64).vector({"cat:shoes": 1.0, "x": 3.0})
    assert np.flatnonzero(x).tolist() == [0, 25, 32]
    assert x[[0, 25, 32]] == pytest.approx([1.0, -1.0, 1.0 + np.log(3.0)])


def test_single_candidate_fast_path_hashes_exactly_like_the_batched_one() -> None:
    h = FeatureHasher(32, seed=1)
    rng = random.Random(0)
    for _ in range(50):
        ctx, _ = _context(rng)
        ctx["aff_tag:t1"] = rng.random()
        for cand in ACTIONS:
            for with_ids in (False, True):
                for with_context in (False, True):
                    row = h.cross_matrix(ctx, [cand], with_ids, with_context)[0]
                    assert h.cross_vector(ctx, cand, with_ids, with_context) == pytest.approx(row)
                    sparse = h.cross_sparse(ctx, [cand], with_ids, with_context)[0]
                    one = h.cross_sparse_one(ctx, cand, with_ids, with_context)
                    assert set(one) == set(sparse) and all(one[k] == pytest.approx(sparse[k]) for k in one)


def test_thompson_epsilon_floor_keeps_every_action_loggable() -> None:
    import random as _random

    from engine.policies import Candidate as _Candidate
    from engine.policies import LinearThompson as _LinearThompson

    policy = _LinearThompson(v=0.1, epsilon=0.2)
    cands = [_Candidate(f"a{i}", {f"cat:{i}": 1.0}) for i in range(4)]
    for _ in range(400):  # a converged posterior: a0 always wins
        for c in cands:
            policy.learn_one({"bias": 1.0}, c, 1.0 if c.action_id == "a0" else 0.0)
    rng = _random.Random(1)
    tops, props = [], []
    for _ in range(4000):
        r = policy.rank({"bias": 1.0}, cands, 1, rng)
        tops.append(r.top)
        props.append(r.propensity)
    assert min(props) >= 0.2 / 4 - 1e-12
    # shown-first frequencies agree with the logged propensities (what IPS relies on)
    for aid in ("a0", "a1"):
        freq = tops.count(aid) / len(tops)
        mean_p = sum(p for t, p in zip(tops, props, strict=True) if t == aid) / max(1, tops.count(aid))
        assert abs(freq - mean_p) < 0.03


def test_disjoint_posterior_from_precomputed_products_matches_the_statistics() -> None:
    """Serving ranks disjoint models with per-model-version products (theta, packed A^-1); they must give the
    posterior of the stored statistics, and be rebuilt after learning and after a reload."""
    from engine.snapshots import dump_model, load_model

    policy = LinearThompson(shared_dims=0, context_dims=16)
    env = random.Random(4)
    for _ in range(300):
        ctx, _ = _context(env)
        policy.learn_one(ctx, ACTIONS[env.randrange(len(ACTIONS))], float(env.random() < 0.3))

    def brute(p: LinearThompson, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
        x = p._x_hasher.vector(ctx)
        rows = [p._slots.get(c.action_id, 0) for c in [*ACTIONS, Candidate("unseen")]]
        return (np.array([x @ p._Ainv[i] @ p._b[i] for i in rows]),
                np.array([x @ p._Ainv[i] @ x for i in rows]))

    cands = [*ACTIONS, Candidate("unseen")]
    reloaded = load_model(dump_model(policy, 1, b"k" * 32, name="p/lt"), b"k" * 32, name="p/lt")[0]
    for p in (policy, reloaded):
        ctx, _ = _context(env)
        mean, var = p.posterior(ctx, cands)
        want_mean, want_var = brute(p, ctx)
        assert np.allclose(mean, want_mean, atol=1e-9) and np.allclose(var, want_var, rtol=1e-4, atol=1e-5)
    policy.learn_one(ctx, ACTIONS[0], 1.0)  # a new state: the products are recomputed
    mean, var = policy.posterior(ctx, cands)
    want_mean, want_var = brute(policy, ctx)
    assert np.allclose(mean, want_mean, atol=1e-9) and np.allclose(var, want_var, rtol=1e-4, atol=1e-5)
