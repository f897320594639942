"""Does value arbitration raise revenue per decision over click-only ranking? An in-process simulator study.

The simulated shop of ``bench.simulator`` (its hidden tastes, ``TASTES``, and click probabilities,
``base_click_probability``), with a business value per action: a click converts with probability
``P_CONVERT`` and brings the action's value. The placement ranks the same 36 actions with the serving code's
own pieces (``engine.policies.LinearThompson``, ``engine.arbitration``), four arms on the same visitors in the
same order, each learning from its own shown actions:

=======================  ===================================================================================
``thompson``             the policy's own order (Thompson draws): click-only, as a placement without values
``propensity``           ``arbitration = "propensity"``: the posterior mean of the click, epsilon 0.05
``value``                ``propensity_x_value_x_lever`` (the default with values): click estimate x value
``value_learned``        the same order on a model that learns the conversion's value
                         (``reward.conversion_value = true``): the estimate is the expected value
=======================  ===================================================================================

Prints per arm the CTR and the revenue per decision (expected: the hidden probability x value of what was
shown, free of click noise; and realised), over the last half of the run (learned), and the ratio to the
click-only arms.

``python -m bench.value_arbitration [--decisions 20000] [--seed 3]`` writes ``bench/results/value_arbitration.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
from typing import Any

from bench.common import write_result
from bench.simulator import CATEGORIES, TASTES, VIEW_SHARE, Visitor
from engine import arbitration
from engine.policies import Candidate, make_policy

#: What a converted click of each category is worth (a bestseller full price, the others a little less).
CATEGORY_VALUE = {"electronics": 90.0, "jackets": 70.0, "shoes": 45.0, "kitchen": 35.0, "hats": 18.0, "books": 12.0}
KIND_FACTOR = {"1": 1.0, "2": 0.8}
ITEMS = 6
P_CONVERT = 0.3
EPSILON = 0.05
ARMS = ("thompson", "propensity", "value", "value_learned")


def value_of(action_id: str) -> float:
    category, _, kind = action_id.rpartition("-")
    return CATEGORY_VALUE[category] * KIND_FACTOR.get(kind, 0.6)


def context_of(v: Visitor, rng: random.Random) -> dict[str, float]:
    """What serving's context shows of a taste: category affinities (normalised shares), a little noisy."""
    shares = {c: (1 - sum(VIEW_SHARE)) / len(CATEGORIES) for c in CATEGORIES}
    shares[v.taste.favourite] += VIEW_SHARE[0]
    shares[v.taste.second] += VIEW_SHARE[1]
    noisy = {c: max(0.0, s + rng.gauss(0, 0.03)) for c, s in shares.items()}
    total = sum(noisy.values())
    return {"bias": 1.0, **{f"aff_category:{c}": s / total for c, s in noisy.items()}}


def run(decisions: int, seed: int) -> dict[str, Any]:
    ids = [f"{c}-{k}" for c in CATEGORIES for k in range(1, ITEMS + 1)]
    candidates = [Candidate(a, {f"category:{a.rpartition('-')[0]}": 1.0}) for a in ids]
    values = [value_of(a) for a in ids]
    levers = [1.0] * len(ids)
    policies = {arm: make_policy("linear_thompson", shared_dims=0, context_dims=16, seed=seed) for arm in ARMS}
    rng = random.Random(seed)
    arm_rng = {arm: random.Random(seed + i) for i, arm in enumerate(ARMS)}
    visitors = [Visitor(f"v{i}", TASTES[i % len(TASTES)], rng.uniform(0.6, 1.4), rng.choice(("desktop", "mobile")))
                for i in range(2000)]
    out: dict[str, dict[str, list[float]]] = {arm: {"p": [], "rev": [], "click": [], "got": []} for arm in ARMS}
    oracle: list[float] = []  # the best expected revenue per decision, knowing the hidden probabilities
    for _ in range(decisions):
        v = rng.choice(visitors)
        ctx = context_of(v, rng)
        outcome_draw = rng.random(), rng.random()  # the same luck for every arm
        oracle.append(max(v.p_click(a) * P_CONVERT * val for a, val in zip(ids, values, strict=True)))
        for arm in ARMS:
            policy, r = policies[arm], arm_rng[arm]
            if arm == "thompson":
                top = policy.rank(ctx, candidates, 1, r).top
                i = ids.index(top) if top is not None else 0
            else:
                learns_value = arm == "value_learned"
                props = arbitration.estimates(policy, ctx, candidates, learns_value)
                mode = "propensity" if arm == "propensity" else "propensity_x_value_x_lever"
                arm_values = [1.0] * len(ids) if learns_value else values
                i = arbitration.arbitrate(ids, props, arm_values, levers, mode, EPSILON, r).order[0]
            p = v.p_click(ids[i])
            clicked = outcome_draw[0] < p
            converted = clicked and outcome_draw[1] < P_CONVERT
            reward = (values[i] if converted else 0.0) if arm == "value_learned" else float(clicked)
            policy.learn_one(ctx, candidates[i], reward)
            rec = out[arm]
            rec["p"].append(p)
            rec["rev"].append(p * P_CONVERT * values[i])
            rec["click"].append(float(clicked))
            rec["got"].append(values[i] if converted else 0.0)
    half = decisions // 2
    summary: dict[str, Any] = {}
    for arm in ARMS:
        rec = out[arm]
        summary[arm] = {"ctr_expected": round(statistics.fmean(rec["p"][half:]), 4),
                        "ctr_observed": round(statistics.fmean(rec["click"][half:]), 4),
                        "revenue_per_decision_expected": round(statistics.fmean(rec["rev"][half:]), 3),
                        "revenue_per_decision_observed": round(statistics.fmean(rec["got"][half:]), 3)}
    click_only = summary["thompson"]["revenue_per_decision_expected"]
    for arm in ARMS:
        summary[arm]["revenue_vs_thompson"] = round(summary[arm]["revenue_per_decision_expected"] / click_only, 3)
    return {"decisions": decisions, "seed": seed, "actions": len(ids), "p_convert": P_CONVERT,
            "oracle_revenue_per_decision": round(statistics.fmean(oracle[half:]), 3),
            "measured_over": f"decisions {half}-{decisions}", "arms": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    result = run(args.decisions, args.seed)
    print(f"{'arm':15} {'CTR exp':>8} {'CTR obs':>8} {'rev/dec exp':>12} {'rev/dec obs':>12} {'vs thompson':>12}")
    for arm, s in result["arms"].items():
        print(f"{arm:15} {s['ctr_expected']:8.4f} {s['ctr_observed']:8.4f} {s['revenue_per_decision_expected']:12.3f} "
              f"{s['revenue_per_decision_observed']:12.3f} {s['revenue_vs_thompson']:12.3f}")
    print(f"oracle revenue per decision {result['oracle_revenue_per_decision']:.3f}")
    write_result("value_arbitration", result, args.decisions < 20_000)


if __name__ == "__main__":
    main()
