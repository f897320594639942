"""Learning-quality benchmark: replay on real logged data, plus policy speed and snapshot cost.

``python -m bench.quality [--quick] [--no-speed | --only-speed] [--no-movielens] [--out FILE]``

* Open Bandit Dataset sample (``bench.quality_obd.run_obd``): replay / IPS / SNIPS for every policy;
* MovieLens (``bench.movielens.run_movielens``, if that module is importable);
* speed (``run_speed``): ``learn_one``/s and ``rank`` latency with 30 candidates for every policy and
  for River's ``bandit.LinUCBDisjoint`` on the same data, and ``dump_model``/``load_model`` time for a
  trained LinUCB with 50 actions.

Prints one table (dataset, policy, metric, value, 95 % CI, n) and writes everything, with the date,
the machine (cores, memory) and package versions, to ``bench/results/quality.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.quality_obd import run_obd
from engine.policies import Candidate, CTRRanker, LinearThompson, LinUCB, Policy, PopularityPolicy, RandomPolicy
from engine.snapshots import dump_model, load_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "quality.json"


# -- machine -------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    mem_kb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for pkg in ("river", "numpy", "orjson", "scipy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": versions,
    }


# -- speed ---------------------------------------------------------------------------------------
def _synthetic(n_actions: int, n_events: int, seed: int = 0) -> tuple[list[Candidate], list[dict[str, float]]]:
    """Engine-like actions (category, tags) and visitor contexts (affinities, counts, recency, segment)."""
    rng = random.Random(seed)
    cats = [f"c{i}" for i in range(8)]
    actions = [
        Candidate(f"offer-{i}", {f"cat:{cats[i % 8]}": 1.0, f"tag:t{i % 5}": 1.0, "price_band": (i % 4) / 3})
        for i in range(n_actions)
    ]
    contexts = []
    for _ in range(n_events):
        ctx = {f"aff_cat:{c}": round(rng.random(), 3) for c in rng.sample(cats, 3)}
        ctx.update({"recency_h": rng.expovariate(0.2), "cnt:page_view": float(rng.randrange(40)),
                    "cnt:click": float(rng.randrange(5)), f"segment:s{rng.randrange(4)}": 1.0,
                    f"aff_tag:t{rng.randrange(5)}": rng.random()})
        contexts.append(ctx)
    return actions, contexts


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _measure(rank: Callable[[dict], Any], learn: Callable[[dict, int], None], contexts: list[dict], n_rank: int,
             n_learn: int, n_warm: int, n_actions: int) -> dict[str, float]:
    rng = random.Random(1)
    for ctx in contexts[:n_warm]:
        learn(ctx, rng.randrange(n_actions))
    lat = []
    for ctx in contexts[n_warm:n_warm + n_rank]:
        t0 = time.perf_counter()
        rank(ctx)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for ctx in contexts[n_warm + n_rank:n_warm + n_rank + n_learn]:
        learn(ctx, rng.randrange(n_actions))
    learn_s = time.perf_counter() - t0
    return {
        "learn_one_per_s": n_learn / learn_s,
        "rank_p50_us": 1e6 * statistics.median(lat),
        "rank_p99_us": 1e6 * _percentile(lat, 0.99),
        "rank_mean_us": 1e6 * statistics.fmean(lat),
    }


def run_speed(quick: bool = False, n_candidates: int = 30) -> dict[str, Any]:
    """learn_one/s and rank latency (30 candidates) per policy, River's LinUCBDisjoint, snapshot cost."""
    n_warm, n_rank, n_learn = (300, 300, 1000) if quick else (2000, 2000, 5000)
    actions, contexts = _synthetic(n_candidates, n_warm + n_rank + n_learn)
    policies: list[tuple[str, Policy]] = [
        ("random", RandomPolicy()),
        ("popularity", PopularityPolicy()),
        ("linucb (hybrid, d=64, k=32)", LinUCB()),
        ("linucb (disjoint, d=64)", LinUCB(shared_dims=0)),
        ("linear_thompson (hybrid, d=64, k=32)", LinearThompson()),
        ("linear_thompson (disjoint, d=64)", LinearThompson(shared_dims=0)),
        ("ctr_ranker (river LogisticRegression)", CTRRanker()),
    ]
    out: dict[str, Any] = {"n_candidates": n_candidates, "n_warm": n_warm, "n_rank": n_rank, "n_learn": n_learn,
                           "loadavg_1m_before": os.getloadavg()[0], "policies": {}}
    for label, pol in policies:
        rng = random.Random(0)
        out["policies"][label] = _measure(
            # the defaults bind this iteration's policy (mypy cannot infer lambdas with defaults)
            lambda ctx, p=pol, r=rng: p.rank(ctx, actions, 3, r),  # type: ignore[misc]  # see above
            lambda ctx, a, p=pol: p.learn_one(ctx, actions[a], float(a % 7 == 0)),  # type: ignore[misc]  # see above
            contexts, n_rank, n_learn, n_warm, n_candidates,
        )
    try:
        from river import bandit

        river_pol = bandit.LinUCBDisjoint(alpha=0.3, seed=0)
        arm_ids: list[int | str] = [a.action_id for a in actions]
        n = (max(n_warm // 4, 50), max(n_rank // 4, 50), max(n_learn // 4, 100))  # slower: fewer calls
        out["policies"]["river.bandit.LinUCBDisjoint (reference)"] = _measure(
            lambda ctx: river_pol.pull(arm_ids, ctx),
            lambda ctx, a: river_pol.update(arm_ids[a], ctx, float(a % 7 == 0)),
            contexts, n[1], n[2], n[0], n_candidates,
        )
    except Exception as exc:  # pragma: no cover - depends on the installed River
        out["river_error"] = f"{type(exc).__name__}: {exc}"
    out["snapshot"] = snapshot_cost(quick)
    out["loadavg_1m_after"] = os.getloadavg()[0]  # > cores means other work competed: timings inflated
    return out


def snapshot_cost(quick: bool = False, n_actions: int = 50) -> dict[str, Any]:
    """dump_model / load_model time and size for a LinUCB trained on ``n_actions`` actions."""
    actions, contexts = _synthetic(n_actions, 2000 if quick else 20000, seed=3)
    policy = LinUCB()
    rng = random.Random(2)
    for ctx in contexts:
        policy.learn_one(ctx, actions[rng.randrange(n_actions)], float(rng.random() < 0.05))
    key = os.urandom(32)
    reps = 5 if quick else 20
    t0 = time.perf_counter()
    for v in range(reps):
        blob = dump_model(policy, v, key, name="bench/linucb")
    dump_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        loaded, _version = load_model(blob, key, name="bench/linucb")
    load_s = (time.perf_counter() - t0) / reps
    return {"policy": "linucb (hybrid, d=64, k=32)", "n_actions": n_actions, "n_updates": policy.n_updates,
            "bytes": len(blob), "dump_ms": 1e3 * dump_s, "load_ms": 1e3 * load_s}


# -- report --------------------------------------------------------------------------------------
def _rows_from_policies(result: dict[str, Any], dataset: str) -> list[dict[str, Any]]:
    """``{"policies": {name: {"hr@10": v, "hr@10_ci95": [lo, hi], "n": n, ...}}}`` -> table rows."""
    rows = []
    for policy, metrics in (result.get("policies") or {}).items():
        if not isinstance(metrics, dict):
            continue
        for metric, value in metrics.items():
            if metric in ("n", "seconds") or metric.endswith("_ci95") or not isinstance(value, int | float):
                continue
            rows.append({"dataset": dataset, "policy": policy, "metric": metric, "value": value,
                         "ci95": metrics.get(f"{metric}_ci95"), "n": metrics.get("n")})
    return rows


def _normalise(rows: Any, default_dataset: str) -> list[dict[str, Any]]:
    """Accept rows from other runners as long as they have policy/metric/value (CI and n optional)."""
    out = []
    for r in rows or []:
        if not isinstance(r, dict) or "metric" not in r or "value" not in r:
            continue
        ci = r.get("ci95") or r.get("ci")
        out.append({**r, "dataset": r.get("dataset", default_dataset), "policy": r.get("policy", "?"),
                    "ci95": list(ci) if ci else None, "n": r.get("n")})
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'dataset':<10} {'policy':<18} {'metric':<22} {'value':>10} {'95% CI':>24} {'n':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        v = r["value"]
        pct = isinstance(v, float) and 0.0 <= v <= 1.0 and "ctr" in str(r["metric"]).lower()
        fmt = (lambda x: f"{x:.4%}") if pct else (lambda x: f"{x:.4g}" if isinstance(x, float) else str(x))
        ci = r.get("ci95")
        ci_s = f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "-"
        n = r.get("n")
        lines.append(f"{r['dataset']:<10} {r['policy']:<18} {r['metric']:<22} {fmt(v):>10} {ci_s:>24} "
                     f"{n if n is not None else '-':>8}")
    return "\n".join(lines)


def _print_speed(sp: dict[str, Any]) -> None:
    print(f"\nspeed ({sp['n_candidates']} candidates, rank returns top 3; 1-min load average "
          f"{sp['loadavg_1m_before']:.1f} -> {sp['loadavg_1m_after']:.1f} on {os.cpu_count()} cores):")
    print(f"  {'policy':<44} {'learn_one/s':>12} {'rank p50 us':>12} {'rank p99 us':>12}")
    for label, m in sp["policies"].items():
        print(f"  {label:<44} {m['learn_one_per_s']:>12,.0f} {m['rank_p50_us']:>12.0f} {m['rank_p99_us']:>12.0f}")
    s = sp["snapshot"]
    print(f"  snapshot {s['policy']}, {s['n_actions']} actions: {s['bytes']:,} bytes, "
          f"dump {s['dump_ms']:.2f} ms, load {s['load_ms']:.2f} ms")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Learning-quality benchmark (OBD replay, MovieLens, speed).")
    ap.add_argument("--quick", action="store_true", help="subsample everything (for tests / smoke runs)")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed and snapshot measurements")
    ap.add_argument("--no-movielens", action="store_true", help="skip bench.movielens even if importable")
    ap.add_argument("--only-speed", action="store_true",
                    help="only re-measure speed and snapshot cost; updates the speed section of --out")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)

    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "datasets": {},
    }
    rows: list[dict[str, Any]] = []

    if args.only_speed:  # re-measure speed only, updating that section of an existing report
        speed = run_speed(quick=args.quick)
        _print_speed(speed)
        if args.out.exists():
            old = json.loads(args.out.read_text())
            old["speed"] = speed
            old["speed_measured_at"] = report["generated_at"]
            old.setdefault("machine", report["machine"])
            _write(args.out, old)
        return {**report, "speed": speed}

    obd = run_obd(quick=args.quick)
    report["datasets"]["obd"] = obd
    rows += _normalise([{"dataset": "obd", "policy": k, "metric": "on-policy ctr", "value": v["ctr"],
                         "ci95": v["ci95"], "n": v["n"], "clicks": v["clicks"]}
                        for k, v in obd["reference"].items()], "obd")
    rows += _normalise(obd["results"], "obd")

    if not args.no_movielens:
        try:
            from bench.movielens import run_movielens
        except ImportError as exc:
            report["datasets"]["movielens"] = {"skipped": f"bench.movielens not importable: {exc}"}
        else:
            ml = run_movielens(max_ratings=20_000 if args.quick else None)
            report["datasets"]["movielens"] = ml
            if isinstance(ml, dict):
                name = str(ml.get("dataset", "movielens"))
                found = ml.get("results") if isinstance(ml.get("results"), list) else _rows_from_policies(ml, name)
                rows += _normalise(found, name)

    if not args.no_speed:
        report["speed"] = run_speed(quick=args.quick)

    report["table"] = rows
    print(format_table(rows))
    print()
    for line in obd["conclusions"]:
        print("- obd:", line)
    ml = report["datasets"].get("movielens", {})
    if isinstance(ml, dict):
        for line in ml.get("conclusions", []) or []:
            print("- movielens:", line)
        if "skipped" in ml:
            print("- movielens:", ml["skipped"])
    if "speed" in report:
        _print_speed(report["speed"])

    _write(args.out, report)
    return report


def _write(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
