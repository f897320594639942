"""Off-policy evaluation from our own logs: what *would* a candidate policy have earned?

Every ``POST /v1/decide`` logs a decision record to the ``decisions`` topic (the context as scored, the
candidates, the shown action and the probability the logging policy had of showing it first: its
*propensity*); the reward join settles each decision once and writes a learning example to the
``learning`` topic (its reward). Joined by ``decision_id`` they are a bandit log ``(x_i, a_i, p_i, r_i)``
and a target policy ``pi`` can be evaluated on it without showing it to anyone:

* **IPS** (inverse propensity scoring): ``V = 1/n * sum_i w_i r_i`` with ``w_i = pi(a_i | x_i) / p_i``.
  Unbiased when ``p_i > 0`` wherever ``pi`` puts mass, high variance when weights are large.
* **SNIPS** (self-normalised IPS): ``V = sum_i w_i r_i / sum_i w_i``. Slightly biased, much lower
  variance, and invariant to a constant error in the propensities.
* **ESS**, Kish's effective sample size of the weights ``(sum w)^2 / sum w^2``: how many on-policy
  events the estimate is worth. A small ESS means the log says little about the target.

95 % intervals are percentile bootstraps over events. :func:`ips`, :func:`snips` and
:func:`effective_sample_size` are pure functions of arrays (``tests/test_ope.py`` checks them on synthetic
logs whose true values are known); :func:`run_ope` reads the two topics of a run and evaluates a few
candidate policies; ``python -m bench.simulator`` calls it at the end of each run, where the simulator
also knows the *true* value of every policy (its hidden click probabilities) to check the estimates.

Only decisions logged by an exploring policy can be used: the control arm's transparent scorer is
deterministic (propensity 1), so it says nothing about actions it did not show. By default the
learning arm's decisions are evaluated.

``python -m bench.ope --bootstrap HOST:PORT --learning-topic T --decisions-topic T [--config PATH]``
evaluates the logs of any run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = [
    "Estimate",
    "LoggedDecision",
    "importance_weights",
    "effective_sample_size",
    "ips",
    "snips",
    "read_topic",
    "join_logs",
    "run_ope",
    "format_table",
]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "bench" / "config" / "simulator.toml"
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

    def to_dict(self) -> dict[str, Any]:
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
        return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)

    value = float(ratio(np.array(wr.sum()), np.array(w.sum())))
    lo, hi = _bootstrap(lambda idx: ratio(wr[idx].sum(axis=1), w[idx].sum(axis=1)), w.size, resamples,
                        confidence, seed)
    return Estimate(value, lo, hi, int(w.size), effective_sample_size(w))


# --------------------------------------------------------------------------------------------------
# our logs


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


async def read_topic(bootstrap: str, topic: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every JSON record of ``topic`` from the beginning up to its end offsets at the time of the call."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=64 << 20)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while not consumer.assignment():  # without a group, every partition is assigned once metadata is in
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no partitions")
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, msgs in batches.items():
                out.extend(orjson.loads(m.value) for m in msgs if m.offset < ends[tp])
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"reading {topic}: partitions {sorted(tp.partition for tp in pending)} not "
                               f"read to their end within {timeout:.0f}s")
        return out
    finally:
        await consumer.stop()


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
        if not did or ex.get("kind") == "interaction":
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
    return tied / tied.sum()


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


def run_ope(bootstrap: str, learning_topic: str, decisions_topic: str, *, config_path: str | Path | None = None,
            placement: str | None = None, arm: str = "learning", resamples: int = 1000, seed: int = 0,
            truth: Callable[[str, str], float] | None = None,
            extra_policies: Mapping[str, TargetPolicy] | None = None,
            linucb_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate candidate policies on the logs of a run (``bootstrap`` is the Kafka bootstrap address).

    The settled decisions of ``arm`` (default: the learning arm, whose policy explores) are split in time:
    a fresh LinUCB learns from *all* settled decisions of the first half (both arms: logged data is
    data), then every candidate is evaluated on the second half of ``arm``:

    * ``logging``: the policy that logged the data (sanity check: its IPS/SNIPS equal the observed mean);
    * ``uniform_random``; ``affinity_top_category`` (the transparent scorer's choice, approximately);
    * ``linucb_fresh_greedy``: the fresh LinUCB's greedy choice;
    * ``extra_policies`` (e.g. the simulator's oracle, which knows the hidden taste).

    ``truth(decision_id, action_id) -> expected reward`` (known to a simulator) adds each policy's true
    value on the same decisions and whether each interval covers it.
    """
    from engine.config import load_config
    from engine.decisions import action_features
    from engine.policies import Candidate, LinUCB

    config_path = Path(config_path or os.environ.get("ENGINE_CONFIG") or DEFAULT_CONFIG)
    config = load_config(config_path)
    t0 = time.perf_counter()

    async def read_both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await asyncio.gather(read_topic(bootstrap, decisions_topic), read_topic(bootstrap, learning_topic))

    decisions, examples = asyncio.run(read_both())
    read_s = time.perf_counter() - t0
    rows, counts = join_logs(decisions, examples, placement)
    if not rows:
        return {"error": "no settled decisions in the logs", "counts": counts}
    placement = placement or rows[0].placement
    rows = [r for r in rows if r.placement == placement]
    split_ts = rows[len(rows) // 2].timestamp
    train = [r for r in rows if r.timestamp < split_ts]
    evaluated = [r for r in rows if r.timestamp >= split_ts and r.arm == arm and r.propensity > 0]
    if not evaluated:
        return {"error": f"no settled decisions of arm {arm!r} in the second half", "counts": counts}

    candidates = {a.id: Candidate(a.id, action_features(a, config.affinities))
                  for a in config.actions_for(placement)}
    for r in rows:  # actions no longer in the catalogue: their features as logged
        for a in r.candidates:
            candidates.setdefault(a, Candidate(a, r.action_features if a == r.action_id else {}))
    t1 = time.perf_counter()
    fresh = LinUCB(**dict(linucb_params or {"alpha": 0.0}))
    for r in train:
        fresh.learn_one(r.context, Candidate(r.action_id, r.action_features or candidates[r.action_id].features),
                        r.reward)
    train_s = time.perf_counter() - t1

    targets: dict[str, TargetPolicy | None] = {
        "logging": None,
        "uniform_random": uniform_policy,
        "affinity_top_category": affinity_policy(config.actions),
        "linucb_fresh_greedy": model_policy(fresh, candidates),
    }
    targets.update(extra_policies or {})
    t2 = time.perf_counter()
    results = evaluate(evaluated, targets, resamples=resamples, seed=seed, truth=truth)
    observed = float(np.mean([r.reward for r in evaluated]))
    logging_row = results[0]
    return {
        "placement": placement, "arm": arm, "counts": counts,
        "train_decisions": len(train), "eval_decisions": len(evaluated),
        "eval_observed_mean_reward": observed,
        "logging_policies": sorted({r.policy for r in evaluated}),
        "logging_check": {
            "ips_equals_observed": abs(logging_row["ips"]["value"] - observed) < 1e-9,
            "snips_equals_observed": abs(logging_row["snips"]["value"] - observed) < 1e-9,
        },
        "propensity": {"min": float(min(r.propensity for r in evaluated)),
                       "median": float(np.median([r.propensity for r in evaluated])),
                       "share_below_0.05": float(np.mean([r.propensity < 0.05 for r in evaluated]))},
        "resamples": resamples, "policies": results,
        "seconds": {"read": round(read_s, 2), "train": round(train_s, 2),
                    "evaluate": round(time.perf_counter() - t2, 2)},
    }


def format_table(report: Mapping[str, Any]) -> str:
    """One line per candidate policy: IPS and SNIPS with intervals, ESS, truth (if known)."""
    if "policies" not in report:
        return f"OPE: {report.get('error', 'no result')}"
    has_truth = any("truth" in p for p in report["policies"])
    head = f"{'policy':<24} {'IPS':>7} {'95% CI':>17} {'SNIPS':>7} {'95% CI':>17} {'ESS':>8} {'mean w':>6}"
    head += f" {'truth':>7} {'in CI':>5}" if has_truth else ""
    lines = [f"OPE on {report['eval_decisions']:,} {report['arm']}-arm decisions of {report['placement']} "
             f"(second half; observed mean reward {report['eval_observed_mean_reward']:.4f}; "
             f"fresh LinUCB trained on {report['train_decisions']:,})", head, "-" * len(head)]
    for p in report["policies"]:
        i, s = p["ips"], p["snips"]
        line = (f"{p['policy']:<24} {i['value']:>7.4f} [{i['ci95'][0]:.4f}, {i['ci95'][1]:.4f}] "
                f"{s['value']:>7.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}] {p['ess']:>8.1f} "
                f"{p['mean_weight']:>6.2f}")
        if has_truth:
            line += f" {p.get('truth', float('nan')):>7.4f}"
            covered = ("I" if p.get("ips_covers_truth") else "-") + ("S" if p.get("snips_covers_truth") else "-")
            line += f" {covered:>5}"
        lines.append(line)
    if has_truth:
        lines.append("in CI: I = the IPS interval covers the true value, S = the SNIPS interval does")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    ap.add_argument("--learning-topic", default=os.environ.get("LEARNING_TOPIC", "learning"))
    ap.add_argument("--decisions-topic", default=os.environ.get("DECISIONS_TOPIC", "decisions"))
    ap.add_argument("--config", default=None, help="engine config (default: ENGINE_CONFIG or the simulator's)")
    ap.add_argument("--placement", default=None)
    ap.add_argument("--arm", default="learning")
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args(argv)
    report = run_ope(args.bootstrap, args.learning_topic, args.decisions_topic, config_path=args.config,
                     placement=args.placement, arm=args.arm, resamples=args.resamples)
    print(format_table(report))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
