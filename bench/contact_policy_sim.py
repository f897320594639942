"""What caps and "nothing now" cost in clicks and save in contacts: a simulated fortnight against the control.

An interruptive channel, where "nothing now" matters most: twice a day for ``--days`` days the CRM asks, for
each simulated customer, which of 12 actions to send as a push notification (one slot, ``channel = "push"``).
Every arm ranks by the same estimate (the customer's hidden base click rate of each action: a
perfect learner, so the only difference between arms is the contact policy), and the policy is the serving
code's own: the exposure records are written by the real worker (``streams.pipeline.BatchProcessor`` and its
Lua script on a real Redis, from the ``impression``/``click``/``feedback`` events the visits produce, one batch
per simulated hour) and read back with ``HGETALL`` into ``engine.contact_policy.PolicyView``, as decide does.

=================  ============================================================================================
``control``        no contact policy: the best action every visit
``caps``           the shipped ``[contact_policy]`` (config/engine.toml: push 3 a week, 5 contacts a week over
                   all channels, 3 a day and 10 a week per action, 8 times without a click, a 72 h cool-down
                   after a dismissal); nothing now when it leaves nothing
``caps_threshold`` the same, and nothing now when the best remaining estimate is below ``--threshold``
=================  ============================================================================================

The hidden customer (the simulator's assumptions, stated so a reader can disagree with them): the click
rate of an action falls by ``FATIGUE`` for each time it was sent in the last 7 days, and by ``CLUTTER`` for
each push beyond ``TOLERANCE`` in the last 7 days; an unclicked push is dismissed with probability ``DISMISS``;
each push beyond ``TOLERANCE`` in 7 days makes the customer turn notifications off for good with probability
``CHURN``. Reported per arm: contacts (impressions), clicks, CTR, nothing-now answers, customers
lost; and the ratios to the control; twice: with customers who leave, and with ``CHURN = 0`` (what restraint
costs when nobody leaves); and a third time with customers indifferent to repetition (no fatigue, no
clutter, no churn): the worst case for restraint, what it costs in clicks when pushing more never hurts.

``python -m bench.contact_policy_sim [--customers 300] [--days 14] [--seed 5]`` writes
``bench/results/contact_policy_sim.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from typing import Any

import orjson

from bench.common import write_result

ARMS = ("control", "caps", "caps_threshold")
ACTIONS = [f"sim-act-{i}" for i in range(12)]
FATIGUE, CLUTTER, DISMISS, CHURN, TOLERANCE = 0.8, 0.85, 0.05, 0.03, 3
ASKS_PER_DAY = 2
WEEK = 7 * 86400.0


def taste(rng: random.Random) -> dict[str, float]:
    """A customer's base click rate per action: two favourites, the rest low."""
    rates = {a: rng.uniform(0.005, 0.04) for a in ACTIONS}
    for a in rng.sample(ACTIONS, 2):
        rates[a] = rng.uniform(0.08, 0.25)
    return rates


def _caps(caps: Any) -> dict[str, int]:
    return {p: getattr(caps, p) for p in ("hour", "day", "week") if getattr(caps, p) is not None}


def event(type_: str, customer: str, ts: float, **properties: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "type": type_, "timestamp": int(ts * 1000), "customer_id": customer,
            "context": {"channel": "web"}, "properties": properties}


async def simulate(redis_url: str, customers: int, days: int, seed: int, threshold: float,
                   churn: float = CHURN, fatigue: float = FATIGUE, clutter: float = CLUTTER) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from engine.config import load_config, parse_config
    from engine.contact_policy import PolicyView, eligible
    from engine.layout import profile_key
    from engine.profile_store import ProfileStore
    from engine.settings import REPO_ROOT
    from engine.timing import zone
    from streams.pipeline import BatchProcessor, Record

    config = load_config(REPO_ROOT / "config" / "engine.toml")
    policy = config.contact_policy
    assert policy.enabled, "config/engine.toml ships the contact policy enabled"
    # the simulated actions: no item (nothing to suppress by purchase), the policy's default caps
    sim_cfg = parse_config({"contact_policy": {"enabled": True, **{
        k: getattr(policy, k) for k in ("max_shown_without_click", "dismiss_cooldown_hours")},
        "action_caps": _caps(policy.action_caps), "contact_pressure": _caps(policy.contact_pressure),
        "channel_caps": {c: _caps(v) for c, v in policy.channel_caps.items()}},
        "placement": [{"id": "sim"}], "action": [{"id": a, "placements": ["sim"]} for a in ACTIONS]})
    sim_actions = list(sim_cfg.actions.values())
    tz = zone("UTC")
    client = aioredis.from_url(redis_url, decode_responses=True)

    async def no_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError(f"simulated event rejected: {headers} {value[:200]!r}")

    proc = BatchProcessor(ProfileStore(client, config), no_dlq)
    start = time.time() - days * 86400.0
    rng = random.Random(seed)
    people = [taste(rng) for _ in range(customers)]
    out: dict[str, Any] = {}
    try:
        for arm in ARMS:
            arm_rng = random.Random(seed + 1)  # the same visits and the same coin flips' stream per arm
            ids = [f"sim-{arm}-{uuid.uuid4().hex[:6]}-{i}" for i in range(customers)]
            shown_log: list[list[float]] = [[] for _ in range(customers)]  # contact times, for the hidden model
            by_action: list[dict[str, list[float]]] = [{} for _ in range(customers)]
            gone = [False] * customers
            stats: dict[str, float] = {"decisions": 0, "contacts": 0, "clicks": 0, "nothing_now": 0, "dismissals": 0}
            offset = 0
            for hour in range(days * 24):
                t0 = start + hour * 3600.0
                if hour % 24 not in (10, 18)[:ASKS_PER_DAY]:  # the CRM's two sends a day
                    continue
                visits = [(c, t0 + arm_rng.random() * 600.0) for c in range(customers) if not gone[c]]
                raws: list[dict[str, str]] = [{}] * len(visits)
                if arm != "control":  # one pipelined HGETALL per customer, as decide reads the profile
                    pipe = client.pipeline(transaction=False)
                    for c, _ in visits:
                        pipe.hgetall(profile_key(ids[c]))
                    raws = await pipe.execute()
                events = []
                for (c, ts), raw in zip(visits, raws, strict=True):
                    stats["decisions"] += 1
                    pool = sim_actions
                    if arm != "control":
                        pool, _ = eligible(PolicyView(sim_cfg.contact_policy, raw, {}, ts, tz), sim_actions,
                                           channel="push")
                    best = max(pool, key=lambda a: people[c][a.id], default=None)
                    if best is None or (arm == "caps_threshold" and people[c][best.id] < threshold):
                        stats["nothing_now"] += 1
                        continue
                    week = [t for t in shown_log[c] if ts - t < WEEK]
                    same = [t for t in by_action[c].get(best.id, []) if ts - t < WEEK]
                    p = people[c][best.id] * fatigue ** len(same) * clutter ** max(0, len(week) - TOLERANCE)
                    shown_log[c].append(ts)
                    by_action[c].setdefault(best.id, []).append(ts)
                    stats["contacts"] += 1
                    decision = uuid.uuid4().hex
                    events.append(event("impression", ids[c], ts, action_id=best.id, decision_id=decision,
                                        channel="push"))
                    if arm_rng.random() < p:
                        stats["clicks"] += 1
                        events.append(event("click", ids[c], ts + 5, action_id=best.id, decision_id=decision))
                    elif arm_rng.random() < DISMISS:
                        stats["dismissals"] += 1
                        events.append(event("feedback", ids[c], ts + 5, action_id=best.id, decision_id=decision,
                                            kind="dismiss"))
                    if len(week) >= TOLERANCE and arm_rng.random() < churn:
                        gone[c] = True
                if events and arm != "control":  # the control reads no exposure records
                    records = [Record("events", 0, offset + i, e["customer_id"].encode(), orjson.dumps(e))
                               for i, e in enumerate(events)]
                    offset += len(records)
                    await proc.process(records)
            stats["customers_lost"] = sum(gone)
            stats["ctr"] = round(stats["clicks"] / stats["contacts"], 4) if stats["contacts"] else 0.0
            out[arm] = stats
            print(f"churn {churn:<5} {arm:15} {stats}", flush=True)
    finally:
        await client.aclose()
    base = out["control"]
    for arm in ARMS[1:]:
        s = out[arm]
        s["vs_control"] = {"contacts": round(s["contacts"] / base["contacts"], 3),
                           "clicks": round(s["clicks"] / base["clicks"], 3) if base["clicks"] else None,
                           "ctr": round(s["ctr"] / base["ctr"], 3) if base["ctr"] else None,
                           "customers_lost": s["customers_lost"] - base["customers_lost"]}
    return {"customers": customers, "days": days, "seed": seed, "threshold": threshold, "actions": len(ACTIONS),
            "hidden_model": {"fatigue": fatigue, "clutter": clutter, "dismiss": DISMISS, "churn": churn,
                             "tolerance_per_week": TOLERANCE, "asks_per_day": ASKS_PER_DAY},
            "arms": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=300)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.1, help="caps_threshold: the lowest estimate shown")
    args = ap.parse_args()
    from infra import local

    redis = local.start_redis()
    try:
        # with customers who leave, and without: the long run's gain and the short run's cost of restraint
        # and customers indifferent to repetition: the worst case for restraint, its pure cost in clicks
        scenarios = {"with_churn": {}, "without_churn": {"churn": 0.0},
                     "no_fatigue": {"churn": 0.0, "fatigue": 1.0, "clutter": 1.0}}
        result = {name: asyncio.run(simulate(redis.url, args.customers, args.days, args.seed, args.threshold,
                                             **kw))
                  for name, kw in scenarios.items()}
    finally:
        redis.close()
    print(write_result("contact_policy_sim", result, False))


if __name__ == "__main__":
    main()
