"""Off-policy estimators (engine.ope) on synthetic bandit logs whose true values are known."""

from __future__ import annotations

import numpy as np
import pytest

from engine.ope import (
    LoggedDecision,
    effective_sample_size,
    evaluate,
    importance_weights,
    ips,
    join_logs,
    snips,
)

K = 4
#: P(click | context, action): context 0 likes action 0, context 1 likes action 3.
CLICK = np.array([[0.30, 0.05, 0.05, 0.02],
                  [0.02, 0.05, 0.10, 0.40]])


def synthetic_log(n: int, seed: int, logging: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A log of ``n`` events: context in {0, 1}, action drawn from ``logging[context]`` (default: a
    skewed, context-dependent policy), reward ~ Bernoulli(CLICK[context, action])."""
    rng = np.random.default_rng(seed)
    if logging is None:
        logging = np.array([[0.05, 0.60, 0.25, 0.10],
                            [0.20, 0.15, 0.15, 0.50]])
    ctx = rng.integers(0, 2, n)
    u = rng.random(n)[:, None]
    action = (u > np.cumsum(logging[ctx], axis=1)).sum(axis=1)
    reward = (rng.random(n) < CLICK[ctx, action]).astype(float)
    return {"ctx": ctx, "action": action, "reward": reward, "propensity": logging[ctx, action],
            "logging": logging}


def target_probs(log: dict[str, np.ndarray], target: np.ndarray) -> np.ndarray:
    """pi(a_i | x_i) for a target given as a (context, action) probability table."""
    return target[log["ctx"], log["action"]]


def true_value(target: np.ndarray) -> float:
    return float(0.5 * (target * CLICK).sum(axis=1).sum())


#: Deterministic best policy (action 0 in context 0, action 3 in context 1): value 0.35.
BEST = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
UNIFORM = np.full((2, K), 1.0 / K)


def test_ips_and_snips_recover_the_true_value_of_a_deterministic_target() -> None:
    log = synthetic_log(60_000, seed=1)
    tp = target_probs(log, BEST)
    truth = true_value(BEST)
    assert truth == pytest.approx(0.35)
    naive = float(log["reward"][tp > 0].mean())  # ignoring propensities is biased here
    assert abs(naive - truth) > 0.02
    for est in (ips(log["reward"], tp, log["propensity"], resamples=300, seed=3),
                snips(log["reward"], tp, log["propensity"], resamples=300, seed=3)):
        assert est.value == pytest.approx(truth, abs=0.02)
        assert est.ci_low < truth < est.ci_high
        assert est.ci_low < est.value < est.ci_high
        assert 0.0 < est.ci_high - est.ci_low < 0.05


def test_estimates_of_a_stochastic_target_and_the_interval_coverage() -> None:
    """Over independent logs the 95 % intervals cover the truth most of the time (not always, not never)."""
    mixed = 0.5 * BEST + 0.5 * UNIFORM
    truth = true_value(mixed)
    covered_ips = covered_snips = 0
    runs = 40
    for seed in range(runs):
        log = synthetic_log(4_000, seed=100 + seed)
        tp = target_probs(log, mixed)
        i = ips(log["reward"], tp, log["propensity"], resamples=200, seed=seed)
        s = snips(log["reward"], tp, log["propensity"], resamples=200, seed=seed)
        covered_ips += i.ci_low <= truth <= i.ci_high
        covered_snips += s.ci_low <= truth <= s.ci_high
    assert covered_ips >= 0.8 * runs and covered_snips >= 0.8 * runs


def test_the_logging_policy_itself_is_estimated_as_the_observed_mean() -> None:
    log = synthetic_log(5_000, seed=7)
    p = log["propensity"]
    for est in (ips(log["reward"], p, p, resamples=0), snips(log["reward"], p, p, resamples=0)):
        assert est.value == pytest.approx(float(log["reward"].mean()), abs=1e-12)
        assert est.ess == pytest.approx(5_000)


def test_snips_is_invariant_to_a_constant_scale_of_the_weights_ips_is_not() -> None:
    log = synthetic_log(20_000, seed=11)
    tp = target_probs(log, BEST)
    half = target_probs(log, 0.5 * BEST)  # not a distribution: every weight halved
    assert snips(log["reward"], half, log["propensity"], resamples=0).value == pytest.approx(
        snips(log["reward"], tp, log["propensity"], resamples=0).value)
    assert ips(log["reward"], half, log["propensity"], resamples=0).value == pytest.approx(
        0.5 * ips(log["reward"], tp, log["propensity"], resamples=0).value)


def test_effective_sample_size() -> None:
    assert effective_sample_size(np.ones(10)) == pytest.approx(10.0)
    assert effective_sample_size([4.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_sample_size([1.0, 3.0]) == pytest.approx(16.0 / 10.0)
    assert effective_sample_size(np.zeros(5)) == 0.0
    # a deterministic target evaluated on a uniform log over K actions is worth about n / K events
    log = synthetic_log(40_000, seed=5, logging=UNIFORM)
    est = ips(log["reward"], target_probs(log, BEST), log["propensity"], resamples=0)
    assert est.ess == pytest.approx(40_000 / K, rel=0.05)


def test_no_support_gives_zero_and_invalid_input_is_rejected() -> None:
    r, p = np.array([1.0, 1.0]), np.array([0.5, 0.5])
    assert snips(r, [0.0, 0.0], p, resamples=10).value == 0.0
    assert ips(r, [0.0, 0.0], p, resamples=10).value == 0.0
    with pytest.raises(ValueError, match="propensities"):
        importance_weights([1.0], [0.0])
    with pytest.raises(ValueError, match="same length"):
        ips([1.0, 1.0], [1.0, 1.0], [0.5])
    with pytest.raises(ValueError, match="one value per event"):
        snips([1.0, 0.0, 1.0], [1.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="no events"):
        ips([], [], [])
    with pytest.raises(ValueError, match="target probabilities"):
        ips([1.0], [1.5], [0.5])


def _decision(did: str, ctx: int, action: str, propensity: float, ts: int) -> dict:
    return {"decision_id": did, "placement": "p", "holdout_arm": "learning", "policy": "linear_thompson",
            "model_version": "3", "context": {"bias": 1.0, f"segment:{ctx}": 1.0},
            "candidates": ["a0", "a1", "a2", "a3"], "actions": [{"action_id": action, "score": 0.1}],
            "propensity": propensity, "timestamp": ts, "action_features": {}}


def test_join_and_evaluate_on_decision_records_and_learning_examples() -> None:
    """The record-level path used on our topics: join by decision id, evaluate targets, compare to truth."""
    log = synthetic_log(30_000, seed=21)
    decisions, examples = [], []
    for i in range(log["ctx"].size):
        did = f"d{i}"
        decisions.append(_decision(did, int(log["ctx"][i]), f"a{log['action'][i]}", float(log["propensity"][i]), i))
        if i % 10:  # 10 % never settled: dropped by the join
            examples.append({"decision_id": did, "reward": float(log["reward"][i]), "defaulted": False})
    examples.append(dict(examples[0], reward=1.0))  # a replayed example: the first one counts
    examples.append({"kind": "interaction", "visitor": "v", "item": "i", "weight": 1.0})
    rows, counts = join_logs(decisions, examples)
    assert counts["joined"] == 27_000 and counts["duplicate_examples"] == 1
    assert counts["unsettled_decisions"] == 3_000
    assert [r.timestamp for r in rows] == sorted(r.timestamp for r in rows)

    def best(row: LoggedDecision) -> np.ndarray:
        return BEST[0] if row.context.get("segment:0") else BEST[1]

    def truth(decision_id: str, action_id: str) -> float:
        i = int(decision_id[1:])
        return float(CLICK[log["ctx"][i], int(action_id[1:])])

    results = {r["policy"]: r for r in evaluate(rows, {"logging": None, "best": best}, resamples=300, truth=truth)}
    observed = float(np.mean([r.reward for r in rows]))
    assert results["logging"]["ips"]["value"] == pytest.approx(observed, abs=1e-12)
    assert results["logging"]["snips"]["value"] == pytest.approx(observed, abs=1e-12)
    assert results["best"]["truth"] == pytest.approx(0.35, abs=0.01)  # on these contexts
    assert results["best"]["ips"]["value"] == pytest.approx(results["best"]["truth"], abs=0.025)
    assert results["best"]["snips_covers_truth"]
    assert results["best"]["ess"] < 0.5 * len(rows)  # a deterministic target off a skewed log
