"""Off-policy evaluation from our own logs: what *would* a candidate policy have earned?

Every ``POST /v1/decide`` logs a decision record to the ``decisions`` topic (the context as scored, the
candidates, the shown action and the probability the logging policy had of showing it first: its
*propensity*); the reward join settles each decision once and writes a learning example to the
``learning`` topic (its reward). Joined by ``decision_id`` they are a bandit log ``(x_i, a_i, p_i, r_i)``,
evaluated by the estimators of :mod:`engine.ope` (IPS, SNIPS, ESS).

:func:`run_ope` reads the two topics of a run and evaluates a few candidate policies;
``python -m bench.simulator`` calls it at the end of each run, where the simulator also knows the *true*
value of every policy (its hidden click probabilities) to check the estimates.

Only decisions logged by an exploring policy can be used: the control arm's transparent scorer is
deterministic (propensity 1), so it says nothing about actions it did not show. By default the
learning arm's decisions are evaluated.

``python -m bench.ope --bootstrap HOST:PORT --learning-topic T --decisions-topic T [--config PATH]``
evaluates the logs of any run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.kafka_client import kafka_client_kwargs
from engine.ope import (
    TargetPolicy,
    affinity_policy,
    evaluate,
    join_logs,
    model_policy,
    uniform_policy,
)

__all__ = ["read_topic", "run_ope", "format_table"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "bench" / "config" / "simulator.toml"


async def read_topic(bootstrap: str, topic: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every JSON record of ``topic`` from the beginning up to its end offsets at the time of the call."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=64 << 20, **kafka_client_kwargs())
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
