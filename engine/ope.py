"""Off-policy evaluation of a bandit log: what *would* a target policy have earned?

A bandit log ``(x_i, a_i, p_i, r_i)`` is the context as scored, the shown action, the probability the
logging policy had of showing it first (its *propensity*) and the settled reward. A target policy ``pi``
can be evaluated on it without showing it to anyone:

* **IPS** (inverse propensity scoring): ``V = 1/n * sum_i w_i r_i`` with ``w_i = pi(a_i | x_i) / p_i``.
  Unbiased when ``p_i > 0`` wherever ``pi`` puts mass, high variance when weights are large.
* **SNIPS** (self-normalised IPS): ``V = sum_i w_i r_i / sum_i w_i``. Slightly biased, much lower
  variance, and invariant to a constant error in the propensities.
* **ESS**, Kish's effective sample size of the weights ``(sum w)^2 / sum w^2``: how many on-policy
  events the estimate is worth. A small ESS means the log says little about the target.

95 % intervals are percentile bootstraps over events. Everything here is a pure function of the log
(``tests/test_ope.py`` checks it on synthetic logs whose true values are known); :func:`join_logs` builds the
log from our decision records and learning examples, :func:`evaluate` estimates several targets at once.
``bench/ope.py`` reads both from Kafka.

>>> est = ips([1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], resamples=0)
>>> est.value, effective_sample_size([2.0, 0.0, 0.0, 2.0])
(0.5, 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Estimate",
    "LoggedDecision",
    "TargetPolicy",
    "importance_weights",
    "effective_sample_size",
    "ips",
    "snips",
    "join_logs",
    "uniform_policy",
    "affinity_policy",
    "model_policy",
    "evaluate",
]

_CHUNK = 64  # bootstrap resamples drawn at once (memory: _CHUNK * n indices)


# --------------------------------------------------------------------------------------------------
# estimators (pure)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with its bootstrap interval, the number of events and the weights' ESS."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {"value": self.value, "ci95": [self.ci_low, self.ci_high], "n": self.n, "ess": self.ess}


def importance_weights(target_probs: Sequence[float] | np.ndarray,
                       logging_probs: Sequence[float] | np.ndarray) -> np.ndarray:
    """``pi(a_i | x_i) / p_i`` per event; propensities must be in ``(0, 1]``, target probabilities in
    ``[0, 1]``, both of the same length."""
    t = np.asarray(target_probs, dtype=np.float64)
    p = np.asarray(logging_probs, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"target and logging probabilities must be 1-d of the same length, got {t.shape}, {p.shape}")
    if p.size and (not np.all(p > 0.0) or not np.all(p <= 1.0)):
        raise ValueError("logging propensities must be in (0, 1]: an action shown with probability 0 "
                         "cannot be reweighted")
    if t.size and (not np.all(t >= 0.0) or not np.all(t <= 1.0 + 1e-9)):
        raise ValueError("target probabilities must be in [0, 1]")
    return t / p


def effective_sample_size(weights: Sequence[float] | np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (``n`` for equal weights, 0 for none)."""
    w = np.asarray(weights, dtype=np.float64)
    sq = float(np.dot(w, w))
    return float(w.sum() ** 2 / sq) if sq > 0 else 0.0


def _check_rewards(rewards: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"rewards must have one value per event ({n}), got shape {r.shape}")
    if n == 0:
        raise ValueError("no events to evaluate on")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    return r


def _bootstrap(stat: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, confidence: float,
               seed: int) -> tuple[float, float]:
    """Percentile interval of ``stat`` over ``resamples`` bootstrap resamples of ``n`` events.

    ``stat`` gets a ``(b, n)`` array of resampled indices and returns ``b`` values."""
    if resamples <= 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        values[start:start + b] = stat(rng.integers(0, n, size=(b, n)))
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def ips(rewards: Sequence[float] | np.ndarray, target_probs: Sequence[float] | np.ndarray,
        logging_probs: Sequence[float] | np.ndarray, *, resamples: int = 1000, confidence: float = 0.95,
        seed: int = 0) -> Estimate:
    """Inverse propensity scoring estimate of the target policy's mean reward.

    >>> est = ips([1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], resamples=0)
    >>> est.value, est.ess
    (0.5, 2.0)
    """
    w = importance_weights(target_probs, logging_probs)
    r = _check_rewards(rewards, w.size)
    wr = w * r
    value = float(wr.mean())
    lo, hi = _bootstrap(lambda idx: wr[idx].mean(axis=1), w.size, resamples, confidence, seed)
    return Estimate(value, lo, hi, int(w.size), effective_sample_size(w))


def snips(rewards: Sequence[float] | np.ndarray, target_probs: Sequence[float] | np.ndarray,
          logging_probs: Sequence[float] | np.ndarray, *, resamples: int = 1000, confidence: float = 0.95,
          seed: int = 0) -> Estimate:
    """Self-normalised IPS: ``sum w r / sum w`` (0 when the target has no support in the log).

    >>> snips([1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], resamples=0).value
    0.5
    """
    w = importance_weights(target_probs, logging_probs)
    r = _check_rewards(rewards, w.size)
    wr = w * r

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)
        return out

    value = float(ratio(np.array(wr.sum()), np.array(w.sum())))
    lo, hi = _bootstrap(lambda idx: ratio(wr[idx].sum(axis=1), w[idx].sum(axis=1)), w.size, resamples,
                        confidence, seed)
    return Estimate(value, lo, hi, int(w.size), effective_sample_size(w))


# --------------------------------------------------------------------------------------------------
# our logs (decision records joined with learning examples)


@dataclass(slots=True)
class LoggedDecision:
    """One settled decision: the decision record joined with its learning example."""

    decision_id: str
    placement: str
    arm: str
    policy: str
    model_version: str
    context: dict[str, float]
    candidates: list[str]
    action_id: str
    propensity: float
    reward: float
    defaulted: bool
    timestamp: int
    action_features: dict[str, float] = field(default_factory=dict)

def join_logs(decisions: Sequence[Mapping[str, Any]], examples: Sequence[Mapping[str, Any]],
              placement: str | None = None) -> tuple[list[LoggedDecision], dict[str, int]]:
    """Join decision records and learning examples by ``decision_id`` (the first example of a decision
    counts; item-interaction examples are ignored). Returns the joined rows in time order and counts."""
    by_id: dict[str, Mapping[str, Any]] = {}
    for d in decisions:
        if placement is None or d.get("placement") == placement:
            by_id.setdefault(d["decision_id"], d)
    rows: list[LoggedDecision] = []
    seen: set[str] = set()
    dup = unmatched = 0
    for ex in examples:
        did = ex.get("decision_id")
        if not did or "kind" in ex:  # interactions and forget requests say their kind; settled decisions do not
            continue
        if placement is not None and ex.get("placement", placement) != placement:
            continue
        if did in seen:
            dup += 1
            continue
        found = by_id.get(did)
        if found is None:
            unmatched += 1
            continue
        d = found
        seen.add(did)
        rows.append(LoggedDecision(
            decision_id=did, placement=d["placement"], arm=d["holdout_arm"], policy=d["policy"],
            model_version=str(d["model_version"]), context=dict(d["context"]), candidates=list(d["candidates"]),
            action_id=d["actions"][0]["action_id"], propensity=float(d["propensity"]),
            reward=float(ex["reward"]), defaulted=bool(ex.get("defaulted", False)), timestamp=int(d["timestamp"]),
            action_features=dict(d.get("action_features") or {}),
        ))
    rows.sort(key=lambda r: r.timestamp)
    counts = {"decisions": len(by_id), "examples": len(examples), "joined": len(rows),
              "unsettled_decisions": len(by_id) - len(rows), "duplicate_examples": dup,
              "examples_without_decision": unmatched}
    return rows, counts


# --------------------------------------------------------------------------------------------------
# candidate policies: row -> probability of each candidate being shown first

TargetPolicy = Callable[[LoggedDecision], np.ndarray]


def uniform_policy(row: LoggedDecision) -> np.ndarray:
    k = len(row.candidates)
    return np.full(k, 1.0 / k)


def _greedy(scores: np.ndarray) -> np.ndarray:
    """Deterministic argmax, ties split evenly (what a tie-breaking-at-random policy does on average)."""
    best = scores.max()
    tied = scores >= best - 1e-12
    probs: np.ndarray = tied / tied.sum()
    return probs


def affinity_policy(actions: Mapping[str, Any]) -> TargetPolicy:
    """Show an action of the visitor's strongest category (from the logged ``aff_category:*`` context), as
    the transparent scorer mostly does; no affinity: uniform."""
    def probs(row: LoggedDecision) -> np.ndarray:
        scores = np.array([row.context.get(f"aff_category:{getattr(actions.get(a), 'category', None)}", 0.0)
                           for a in row.candidates])
        if scores.max() <= 0:
            return uniform_policy(row)
        # among the strongest category's actions the scorer's tie-break is the action id
        top = _greedy(scores)
        first = min((a for a, t in zip(row.candidates, top, strict=True) if t > 0))
        return np.array([1.0 if a == first else 0.0 for a in row.candidates])
    return probs


def model_policy(policy: Any, candidates: Mapping[str, Any]) -> TargetPolicy:
    """The greedy choice of a trained linear bandit's posterior mean (no exploration)."""
    def probs(row: LoggedDecision) -> np.ndarray:
        cands = [candidates[a] for a in row.candidates]
        mean, _ = policy.posterior(row.context, cands)
        return _greedy(np.asarray(mean))
    return probs


def _value_truth(rows: Sequence[LoggedDecision], probs: Sequence[np.ndarray],
                 truth: Callable[[str, str], float]) -> float:
    total = 0.0
    for row, p in zip(rows, probs, strict=True):
        total += sum(float(pa) * truth(row.decision_id, a) for a, pa in zip(row.candidates, p, strict=True) if pa)
    return total / len(rows)


def evaluate(rows: Sequence[LoggedDecision], targets: Mapping[str, TargetPolicy | None], *,
             resamples: int = 1000, seed: int = 0,
             truth: Callable[[str, str], float] | None = None) -> list[dict[str, Any]]:
    """IPS and SNIPS of each target on ``rows``; a target of ``None`` is the logging policy itself
    (weight 1 everywhere: both estimates must equal the observed mean reward)."""
    rewards = np.array([r.reward for r in rows])
    logging = np.array([r.propensity for r in rows])
    out = []
    for name, target in targets.items():
        if target is None:
            tp = logging.copy()
            truth_value = (sum(truth(r.decision_id, r.action_id) for r in rows) / len(rows)) if truth else None
        else:
            dists = [target(r) for r in rows]
            tp = np.array([float(d[r.candidates.index(r.action_id)]) if r.action_id in r.candidates else 0.0
                           for r, d in zip(rows, dists, strict=True)])
            truth_value = _value_truth(rows, dists, truth) if truth else None
        e_ips = ips(rewards, tp, logging, resamples=resamples, seed=seed)
        e_snips = snips(rewards, tp, logging, resamples=resamples, seed=seed)
        weights = importance_weights(tp, logging)
        row: dict[str, Any] = {"policy": name, "n": e_ips.n, "ess": round(e_ips.ess, 1),
                               "matched": int(np.count_nonzero(tp)),
                               # ~1 when the log covers the target; far below 1: the target's actions
                               # were (almost) never shown, or their propensities are overstated
                               "mean_weight": float(weights.mean()),
                               "ips": e_ips.to_dict(), "snips": e_snips.to_dict()}
        if truth_value is not None:
            row["truth"] = truth_value
            row["ips_covers_truth"] = e_ips.ci_low <= truth_value <= e_ips.ci_high
            row["snips_covers_truth"] = e_snips.ci_low <= truth_value <= e_snips.ci_high
        out.append(row)
    return out
