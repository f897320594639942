"""Thompson propensities by quadrature: the probabilities a large Monte-Carlo run measures, and the same decisions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine.policies import Candidate, LinearThompson
from engine.policies.propensity import NODES, win_probability


def _monte_carlo(mean: np.ndarray, sd: np.ndarray, n: int, seed: int) -> np.ndarray:
    """How often each candidate has the largest draw, over ``n`` draws of every candidate."""
    gen = np.random.default_rng(seed)
    wins = np.zeros(len(mean))
    for _ in range(n // 20_000):
        draws = gen.standard_normal((20_000, len(mean))) * sd + mean
        wins += np.bincount(draws.argmax(axis=1), minlength=len(mean))
    return wins / (n // 20_000 * 20_000)


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    cases = [("equal", np.zeros(35), np.full(35, 0.4)),
             ("two", np.array([0.0, 1.0]), np.array([1.0, 1.0]))]
    for k in (3, 20, 50):  # a trained posterior: means of a few percent, deviations spread over a decade
        cases.append((f"trained-{k}", rng.normal(0.05, 0.05, k), 0.3 * np.exp(rng.uniform(-2.5, 0.5, k))))
    # step-shaped integrands, the quadrature's worst case: converged candidates next to a brand-new one
    sd = np.full(30, 0.002)
    sd[[4, 17]] = 0.8
    cases.append(("converged+new", rng.normal(0.05, 0.03, 30), sd))
    cases.append(("one-clear-winner", np.r_[3.0, rng.normal(0.0, 0.1, 24)], np.full(25, 0.5)))
    return cases


@pytest.mark.parametrize(("name", "mean", "sd"), _cases(), ids=[c[0] for c in _cases()])
def test_win_probability_matches_a_large_monte_carlo_reference(name: str, mean: np.ndarray, sd: np.ndarray) -> None:
    n = 400_000
    reference = _monte_carlo(mean, sd, n, seed=len(mean))
    got = np.array([win_probability(mean, sd, t) for t in range(len(mean))])
    # quadrature: at most sqrt(P) / NODES off (step-shaped worst case); Monte Carlo: 4 standard errors
    tolerance = np.sqrt(reference) / NODES + 4 * np.sqrt(reference * (1 - reference) / n) + 1e-4
    assert np.all(np.abs(got - reference) <= tolerance), (name, np.abs(got - reference).max())
    assert got.sum() == pytest.approx(1.0, abs=0.02)
    if name != "converged+new":  # smooth integrands: far better than the worst-case bound
        assert np.all(np.abs(got - reference) <= 0.002 + 4 * np.sqrt(reference * (1 - reference) / n))


def _trained_policy(epsilon: float) -> tuple[LinearThompson, list[Candidate], dict[str, float]]:
    policy = LinearThompson(v=0.5, shared_dims=0, context_dims=16, epsilon=epsilon)
    cands = [Candidate(f"a{i}", {f"cat:c{i}": 1.0}) for i in range(6)]
    env = random.Random(2)
    for _ in range(400):
        ctx = {"aff_cat:c1": env.random(), "noise": env.gauss(0, 1)}
        c = cands[env.randrange(len(cands))]
        policy.learn_one(ctx, c, float(env.random() < (0.5 if c.action_id in ("a1", "a3") else 0.1)))
    return policy, cands, {"aff_cat:c1": 0.6, "noise": 0.2}


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_reported_propensity_is_the_expected_monte_carlo_estimate(epsilon: float) -> None:
    """The logged value is what the former estimate ``(1 + wins) / (1 + samples)`` gave on average."""
    policy, cands, ctx = _trained_policy(epsilon)
    mean, var = policy.posterior(ctx, cands)
    sd = policy.v * np.sqrt(var)
    p = _monte_carlo(mean, sd, 400_000, seed=9)
    assert 0.05 < p.max() < 0.95  # a real race, not a foregone conclusion
    s, k = policy.propensity_samples, len(cands)
    rng = random.Random(4)
    for _ in range(300):
        r = policy.rank(ctx, cands, 3, rng)
        t = int(str(r.top)[1:])
        own = (0.0, 1.0) if epsilon else (1.0,)  # with epsilon, the decision's own draw may not have picked t
        expected = [(1 - epsilon) * (o + s * p[t]) / (1 + s) + epsilon / k for o in own]
        assert min(abs(r.propensity - e) for e in expected) < 1 / NODES + 0.005, (r.top, r.propensity, expected)


def test_decisions_are_the_first_row_of_the_former_draws() -> None:
    """Same generator state, same decision: the scores are the first row of the (1 + samples, K) block the
    former Monte-Carlo estimate drew (so only the numbers drawn for the propensity are gone)."""
    policy, cands, ctx = _trained_policy(0.0)
    mean, var = policy.posterior(ctx, cands)
    sd = policy.v * np.sqrt(var)
    for seed in range(50):
        policy._gen = np.random.default_rng(seed)
        r = policy.rank(ctx, cands, len(cands), random.Random(seed))
        former = np.random.default_rng(seed).standard_normal((policy.propensity_samples + 1, len(cands)))
        former *= sd
        former += mean
        scores = former[0]
        order = [int(np.argmax(scores)), *[i for i in np.argsort(-scores, kind="stable") if i != np.argmax(scores)]]
        assert r.action_ids == [cands[i].action_id for i in order]
        assert r.scores == scores[order].tolist()


def test_zero_deviation_falls_back_to_sampling() -> None:
    mean, sd = np.array([0.1, 0.2, 0.2]), np.array([0.3, 0.0, 0.3])
    policy = LinearThompson(propensity_samples=2000)
    p = policy._win_probability(mean, sd, 0, np.random.default_rng(0))
    assert p == pytest.approx(_monte_carlo(mean, sd, 200_000, seed=1)[0], abs=0.03)
