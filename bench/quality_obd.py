"""Learning quality on real logged bandit data: the Open Bandit Dataset sample (``bench.datasets``).

Every policy runs in this process, on the same events, in time order, always *test-then-train*: it
ranks an event before it may learn from it. Three protocols:

``replay@1`` (Li, Chu, Langford, Wang 2011, "Unbiased offline evaluation of contextual-bandit-based
news article recommendation algorithms"): on the uniform-random log, the policy picks its top item
for the logged context; if it equals the logged item the event is *matched*, its click counts and the
policy learns from it, otherwise the event is discarded, exactly as if the policy had been live. The
CTR over matched events is an unbiased estimate of the policy's online CTR (about ``1/n_items`` of the
events match). 95 % interval: Wilson score interval on matched clicks / matched events.

``replay@3``: the same with the policy's top-3 slate (the widget has 3 slots): an event is matched if
the logged item is *anywhere* in the slate. Because the logged item was uniform and independent of its
slot, this estimates the CTR per impression of the policy's slate shown in a random order, with 3x the
matched events.

``ips``/``snips`` (progressive, off-policy learning): on the random *and* the Bernoulli-TS logs, the
policy's top item is compared to the logged one and weighted by ``1 / propensity`` (inverse propensity
scoring; SNIPS divides by the sum of weights instead of the number of events), then the policy
learns from *every* logged event, as a model trained on an exploration log would. The estimate is
unbiased for the sequence of policies because each is fixed before the event it is scored on.
95 % interval: percentile bootstrap over events (2,000 resamples) when there are at least
``MIN_CLICKS_BOOTSTRAP`` matched clicks; with fewer, a bootstrap collapses (zero clicks give [0, 0]), so
a Wilson interval on the Kish effective sample size of the weights is used instead (scaled by
``sum(w) / n`` for IPS). The method used is recorded per row (``ci_method``), both in the JSON.

Results are pooled over the three campaigns (``all``, ``men``, ``women``; one fresh policy per campaign,
since their items differ). Reference: the logged (on-policy) CTR of each logging policy.

Hyper-parameters below were fixed a priori for click rates around 0.5 %; they were not tuned on this
data (there is far too little of it to tune anything on).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.datasets import BEHAVIORS, CAMPAIGNS, OBP_VERSION, OBP_WHEEL_SHA256, ObdLog, iter_obd
from engine.policies import CTRRanker, LinearThompson, LinUCB, Policy, PopularityPolicy, RandomPolicy
from engine.stats import wilson

__all__ = ["run_obd", "default_specs", "wilson", "PolicySpec"]

Z95 = 1.959963984540054
MIN_CLICKS_BOOTSTRAP = 10
MIN_CLICKS_VERDICT = 5


@dataclass(slots=True)
class PolicySpec:
    """A named policy configuration; ``make()`` builds a fresh, untrained instance."""

    label: str
    factory: Callable[..., Policy]
    params: dict[str, Any] = field(default_factory=dict)

    def make(self) -> Policy:
        return self.factory(**self.params)


def default_specs() -> list[PolicySpec]:
    """The policies compared, with parameters chosen a priori for CTR ~ 0.5 %."""
    return [
        PolicySpec("random", RandomPolicy),
        PolicySpec("popularity", PopularityPolicy, {"prior_ctr": 0.005, "prior_strength": 200.0, "bonus": 1.0,
                                                    "segment_prefix": None}),
        PolicySpec("popularity_seg", PopularityPolicy, {"prior_ctr": 0.005, "prior_strength": 200.0, "bonus": 1.0}),
        PolicySpec("linucb", LinUCB, {"alpha": 0.05, "context_dims": 64, "shared_dims": 32}),
        PolicySpec("linear_thompson", LinearThompson, {"v": 0.05, "context_dims": 64, "shared_dims": 32}),
        PolicySpec("ctr_ranker", CTRRanker, {"epsilon": 0.05, "optimism": 0.1, "learning_rate": 0.1}),
    ]


# -- statistics ----------------------------------------------------------------------------------
def bootstrap_ips(
    weights: np.ndarray, rewards: np.ndarray, n_events: int, n_boot: int, rng: np.random.Generator
) -> tuple[tuple[float, float], tuple[float, float]]:
    """95 % percentile bootstrap intervals of IPS and SNIPS.

    Only matched events have a non-zero weight, so a resample of ``n_events`` events is drawn as
    multinomial counts over the matched events plus one bucket for all unmatched ones.
    """
    m = weights.shape[0]
    if m == 0 or n_events == 0:
        return (0.0, 0.0), (0.0, 0.0)
    pvals = np.full(m + 1, 1.0 / n_events)
    pvals[m] = (n_events - m) / n_events
    counts = rng.multinomial(n_events, pvals, size=n_boot)[:, :m].astype(np.float64)
    num = counts @ (weights * rewards)
    den = counts @ weights
    ips = num / n_events
    snips = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    q = [2.5, 97.5]
    lo_i, hi_i = np.percentile(ips, q)
    lo_s, hi_s = np.percentile(snips, q)
    return (float(lo_i), float(hi_i)), (float(lo_s), float(hi_s))


# -- protocols -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Tally:
    events: int = 0
    matched: int = 0
    clicks: int = 0
    rank_s: float = 0.0
    weights: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


def replay(
    policy: Policy, log: ObdLog, contexts: Sequence[dict[str, float]], slate: int, rng: random.Random, tally: Tally
) -> None:
    """Li et al. rejection-sampling replay on a uniform-random log (learn on matched events only)."""
    cands = log.candidates
    by_id = {c.action_id: c for c in cands}
    for ev, ctx in zip(log.events, contexts, strict=False):
        t0 = time.perf_counter()
        ranked = policy.rank(ctx, cands, slate, rng)
        tally.rank_s += time.perf_counter() - t0
        tally.events += 1
        logged = str(ev.item_id)
        if logged in ranked.action_ids:
            tally.matched += 1
            tally.clicks += ev.click
            policy.learn_one(ctx, by_id[logged], float(ev.click))


def progressive_ips(
    policy: Policy, log: ObdLog, contexts: Sequence[dict[str, float]], rng: random.Random, tally: Tally
) -> None:
    """Score the policy's top item by IPS on each event, then learn from the logged event."""
    cands = log.candidates
    by_id = {c.action_id: c for c in cands}
    for ev, ctx in zip(log.events, contexts, strict=False):
        t0 = time.perf_counter()
        ranked = policy.rank(ctx, cands, 1, rng)
        tally.rank_s += time.perf_counter() - t0
        tally.events += 1
        logged = str(ev.item_id)
        if ranked.top == logged:
            tally.matched += 1
            tally.clicks += ev.click
            tally.weights.append(1.0 / ev.propensity)
            tally.rewards.append(float(ev.click))
        policy.learn_one(ctx, by_id[logged], float(ev.click))


# -- driver --------------------------------------------------------------------------------------
def _row(policy: str, protocol: str, metric: str, value: float, ci: tuple[float, float], tally: Tally,
         ci_method: str, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": "obd", "policy": policy, "protocol": protocol, "metric": metric, "value": value,
        "ci95": [ci[0], ci[1]], "ci_method": ci_method, "n": tally.matched, "clicks": tally.clicks,
        "n_events": tally.events, "rank_us": 1e6 * tally.rank_s / max(tally.events, 1), **extra,
    }


def _verdict(row: dict[str, Any], reference: float) -> str:
    if row["clicks"] < MIN_CLICKS_VERDICT:
        return "too few clicks"
    lo, hi = row["ci95"]
    if lo > reference:
        return "above"
    if hi < reference:
        return "below"
    return "overlaps"


def run_obd(
    quick: bool = False,
    seed: int = 0,
    n_boot: int | None = None,
    specs: Sequence[PolicySpec] | None = None,
    campaigns: Sequence[str] = CAMPAIGNS,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run every protocol for every policy; return rows, references, counts and conclusions.

    ``quick`` uses the first 800 events of each log and 200 bootstrap resamples (for tests).
    """
    started = time.perf_counter()
    specs = list(specs or default_specs())
    limit = limit if limit is not None else (800 if quick else None)
    n_boot = n_boot or (200 if quick else 2000)
    logs = {(lg.behavior, lg.campaign): lg for lg in iter_obd(BEHAVIORS, tuple(campaigns))}
    contexts = {key: [e.context() for e in lg.events[:limit]] for key, lg in logs.items()}
    np_rng = np.random.default_rng(seed)

    reference: dict[str, dict[str, Any]] = {}
    for behavior in BEHAVIORS:
        evs = [e for (b, _), lg in logs.items() if b == behavior for e in lg.events[:limit]]
        clicks = sum(e.click for e in evs)
        ci = wilson(clicks, len(evs))
        reference[behavior] = {"ctr": clicks / len(evs), "ci95": list(ci), "n": len(evs), "clicks": clicks}
        # the personalisation signal in this data: was the shown item one the user clicked before?
        aff = [e for e in evs if e.affinity.get(e.item_id, 0.0) > 0]
        aff_clicks = sum(e.click for e in aff)
        reference[behavior]["shown_item_has_affinity"] = {
            "n": len(aff), "clicks": aff_clicks, "ctr": aff_clicks / len(aff) if aff else 0.0,
            "ci95": list(wilson(aff_clicks, len(aff))),
        }
    match_rate = float(np.mean([1.0 / len(logs[("random", c)].items) for c in campaigns]))

    protocols: list[tuple[str, str, str, int]] = [  # (name, behavior, kind, slate)
        ("replay@1", "random", "replay", 1),
        ("replay@3", "random", "replay", 3),
        ("ips[random-log]", "random", "ips", 1),
        ("ips[bts-log]", "bts", "ips", 1),
    ]
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for proto, behavior, kind, slate in protocols:
            tally = Tally()
            for campaign in campaigns:
                policy = spec.make()  # fresh per campaign: item sets differ
                rng = random.Random(f"{seed}/{spec.label}/{proto}/{campaign}")
                log = logs[(behavior, campaign)]
                ctxs = contexts[(behavior, campaign)]
                if kind == "replay":
                    replay(policy, log, ctxs, slate, rng, tally)
                else:
                    progressive_ips(policy, log, ctxs, rng, tally)
            if kind == "replay":
                ctr = tally.clicks / tally.matched if tally.matched else 0.0
                rows.append(_row(spec.label, proto, f"replay_ctr@{slate}", ctr, wilson(tally.clicks, tally.matched),
                                 tally, "wilson"))
            else:
                w = np.asarray(tally.weights)
                r = np.asarray(tally.rewards)
                ips = float((w * r).sum() / tally.events) if tally.events else 0.0
                snips = float((w * r).sum() / w.sum()) if w.size and w.sum() > 0 else 0.0
                boot_ips, boot_snips = bootstrap_ips(w, r, tally.events, n_boot, np_rng)
                ess = float(w.sum() ** 2 / (w * w).sum()) if w.size else 0.0
                scale = float(w.sum() / tally.events) if tally.events else 0.0
                lo, hi = wilson(snips * ess, max(1, round(ess)))
                ess_snips, ess_ips = (lo, hi), (lo * scale, hi * scale)
                use_boot = tally.clicks >= MIN_CLICKS_BOOTSTRAP
                method = "bootstrap" if use_boot else "wilson-ess"
                log_name = proto[proto.index("[") + 1:-1]
                rows.append(_row(spec.label, proto, f"ips_ctr[{log_name}]", ips,
                                 boot_ips if use_boot else ess_ips, tally, method, effective_n=ess,
                                 ci95_bootstrap=list(boot_ips), ci95_wilson_ess=list(ess_ips)))
                rows.append(_row(spec.label, proto, f"snips_ctr[{log_name}]", snips,
                                 boot_snips if use_boot else ess_snips, tally, method, effective_n=ess,
                                 ci95_bootstrap=list(boot_snips), ci95_wilson_ess=list(ess_snips)))
    for row in rows:
        row["vs_logged_random"] = _verdict(row, reference["random"]["ctr"])
    calibration = _calibrate_random(logs, contexts, campaigns, reference["random"]["ctr"], seed,
                                    n_seeds=5 if quick else 20)

    return {
        "dataset": "obd",
        "source": {"package": f"obp=={OBP_VERSION}", "wheel_sha256": OBP_WHEEL_SHA256,
                   "campaigns": list(campaigns), "behaviors": list(BEHAVIORS),
                   "events_per_log": limit or "all", "n_boot": n_boot, "seed": seed},
        "params": {s.label: {"class": s.factory.__name__, **s.params} for s in specs},
        "reference": {f"logged_{b}": v for b, v in reference.items()},
        "results": rows,
        "random_calibration": calibration,
        "conclusions": _conclusions(rows, reference, calibration, match_rate),
        "elapsed_s": time.perf_counter() - started,
    }


def _calibrate_random(
    logs: dict[tuple[str, str], ObdLog],
    contexts: dict[tuple[str, str], list[dict[str, float]]],
    campaigns: Sequence[str],
    logged_ctr: float,
    seed: int,
    n_seeds: int,
) -> dict[str, Any]:
    """Replay the random policy with many seeds: its estimates must centre on the logged random CTR
    and about 95 % of its intervals must cover it, or the replay machinery is biased."""
    out: dict[str, Any] = {"seeds": n_seeds}
    for slate in (1, 3):
        values, covered, matched = [], 0, 0
        for s in range(n_seeds):
            tally = Tally()
            for campaign in campaigns:
                rng = random.Random(f"calibration/{seed}/{s}/{slate}/{campaign}")
                replay(RandomPolicy(), logs[("random", campaign)], contexts[("random", campaign)], slate, rng, tally)
            values.append(tally.clicks / max(tally.matched, 1))
            matched += tally.matched
            lo, hi = wilson(tally.clicks, tally.matched)
            covered += lo <= logged_ctr <= hi
        # cross-seed spread only reflects which events match; a single seed's binomial sd bounds it
        sd_bound = math.sqrt(logged_ctr * (1 - logged_ctr) / max(matched / n_seeds, 1))
        mean = float(np.mean(values))
        out[f"replay@{slate}"] = {"mean": mean, "sd": float(np.std(values)), "coverage": covered / n_seeds,
                                  "consistent": abs(mean - logged_ctr) <= 3 * sd_bound / math.sqrt(n_seeds)
                                  and covered / n_seeds >= 0.8}
    return out


def _conclusions(
    rows: list[dict[str, Any]], reference: dict[str, dict[str, Any]], calibration: dict[str, Any], match_rate: float
) -> list[str]:
    ref = reference["random"]
    out = [
        f"Logged uniform-random CTR {ref['ctr']:.4%} ({ref['clicks']} clicks in {ref['n']} events); "
        f"logged Bernoulli-TS CTR {reference['bts']['ctr']:.4%} ({reference['bts']['clicks']} clicks in "
        f"{reference['bts']['n']} events).",
    ]
    for metric in dict.fromkeys(r["metric"] for r in rows):
        sel = [r for r in rows if r["metric"] == metric]
        n = [r["n"] for r in sel]
        c = [r["clicks"] for r in sel]
        out.append(f"{metric}: matched events per policy {min(n)}-{max(n)}, clicks among them {min(c)}-{max(c)}.")
    sig = [f"{r['policy']} {r['metric']} ({r['vs_logged_random']})" for r in rows
           if r["vs_logged_random"] in ("above", "below") and r["policy"] != "random"]
    if sig:
        out.append("95% intervals that exclude the logged random CTR: " + "; ".join(sig) + ". With this many "
                   "metrics and policies some exclusions are expected by chance alone; treat them as hints.")
    else:
        out.append("No policy's 95% interval (with at least 5 clicks) excludes the logged random CTR: on this "
                   "sample no policy is distinguishable from random, nor from any other policy.")
    cal = [(k, v) for k, v in calibration.items() if k.startswith("replay")]
    ok = all(v["consistent"] for _, v in cal)
    out.append(
        f"Calibration (can be concluded): replaying the random policy with {calibration['seeds']} seeds gives "
        + ", ".join(f"{k} mean {v['mean']:.4%} (sd {v['sd']:.4%}, {v['coverage']:.0%} of 95% intervals cover)"
                    for k, v in cal)
        + f" against the logged {ref['ctr']:.4%}: "
        + ("consistent with an unbiased replay, as it should be." if ok else "NOT as expected - investigate.")
    )
    p = max(ref["ctr"], 1e-6)
    need = 2 * (Z95 + 0.8416) ** 2 * p * (1 - p) / (0.2 * p) ** 2
    out.append(
        f"Cannot be concluded: which policy is better. Detecting a 20% relative CTR lift at {p:.2%} with 80% power "
        f"needs about {need:,.0f} matched events per policy, i.e. about {need / match_rate:,.0f} logged events "
        f"for replay@1 (1 in {1 / match_rate:.0f} events match): the full Open Bandit Dataset (~26M rows), not "
        "the 10,000-row samples in the wheel. IPS on the Bernoulli-TS log is noisier still (tiny logged "
        "propensities: see effective_n)."
    )
    aff = ref["shown_item_has_affinity"]
    if aff["n"]:
        out.append(
            f"Where the signal is: on the random log, events whose shown item the user had clicked before "
            f"(user-item affinity > 0) have CTR {aff['ctr']:.2%} [{aff['ci95'][0]:.2%}, {aff['ci95'][1]:.2%}] "
            f"({aff['clicks']} clicks in {aff['n']} events) against {ref['ctr']:.2%} overall; the policies see this "
            "as the `match:item` feature, but such events are too rare here for a replay to reward using it."
        )
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table: dataset, policy, metric, value, CI, n (matched), clicks."""
    head = f"{'dataset':<8} {'policy':<16} {'metric':<22} {'value':>9} {'95% CI':>21} {'n':>6} {'clicks':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"{r['dataset']:<8} {r['policy']:<16} {r['metric']:<22} {r['value']:>9.4%} "
                     f"[{lo:>8.4%}, {hi:>8.4%}] {r['n']:>6} {r.get('clicks', ''):>6}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="first 800 events per log, 200 bootstrap resamples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = run_obd(quick=args.quick, seed=args.seed)
    refs = [{"dataset": "obd", "policy": name, "metric": "on-policy ctr", "value": v["ctr"], "ci95": v["ci95"],
             "n": v["n"], "clicks": v["clicks"]} for name, v in res["reference"].items()]
    print(format_table(refs + res["results"]))
    print()
    for line in res["conclusions"]:
        print("-", line)
    print(f"\n({res['elapsed_s']:.1f} s)")


if __name__ == "__main__":
    main()
