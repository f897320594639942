"""Load shedding compared: the fixed limit of decisions in progress against the adaptive one, side by side.

``python -m bench.admission [--quick] [--rates 1000,2000,4000,6000] [--repeats 2] [--seconds 10]``

One API process per setting on the same Kafka and Redis, with the latency benchmark's profiles and request
mix; each setting gets the same open-loop rates (coordinated-omission safe, ``bench.latency.OpenLoop``), the
settings alternating in every repeat because the machine is shared. Per rate and setting: p50 / p99 / p99.9
(from each request's scheduled time), the decisions served in full and shed (the server's own counters,
warm-up included) and the admission limit the server ended with. Writes ``bench/results/admission.json``.

Settings compared:

* ``fixed_48``: the admission limit held at 48 decisions in progress (the previous default,
  ``DECIDE_SHED_IN_FLIGHT=48``);
* ``adaptive``: the shipped defaults (``DECIDE_SHED_TARGET_MS``, ``DECIDE_SHED_MIN_IN_FLIGHT``,
  ``DECIDE_SHED_MAX_IN_FLIGHT``; ``serving/admission.py``): the limit judges the time inside the process;
* ``adaptive_queue``: the same, behind a proxy that stamps ``X-Request-Start`` (the generator stamps every
  request as such a proxy would, ``DECIDE_QUEUE_HEADER=x-request-start``): the limit judges the wait before
  the process too;
* ``off``: no shedding, every request waits for a full decision.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx

from bench.common import Infra, exit_cleanly_on_signals, log, median, start_api, write_result
from bench.latency import decision_counters, make_bodies, run_open_loop, write_profiles

SETTINGS: dict[str, dict[str, Any]] = {  # start_api env
    "fixed_48": {"DECIDE_SHED_TARGET_MS": "1000000", "DECIDE_SHED_MIN_IN_FLIGHT": "48",
                 "DECIDE_SHED_MAX_IN_FLIGHT": "48"},
    "adaptive": {},
    "adaptive_queue": {"DECIDE_QUEUE_HEADER": "x-request-start"},
    "off": {"DECIDE_SHED_TARGET_MS": "0"},
}


def admission_limit(base_url: str) -> float | None:
    for line in httpx.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith("pulse_decide_admission_limit "):
            return float(line.split()[-1])
    return None


def run(infra: Infra, rates: list[int], repeats: int, seconds: float, names: list[str]) -> dict[str, Any]:
    stack = infra.stack()
    customers, anons, _, _ = write_profiles(stack.redis_url, infra.quick)
    bodies, mix = make_bodies(customers, anons, 4000)
    warmup = 0.5 if infra.quick else 2.0
    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for name in names:
            api, url = start_api(infra, stack, name=f"api-{name}-{repeat}", **SETTINGS[name])
            try:
                run_open_loop(url, bodies, 200, warmup, 0.0, connections=16, grace=3.0)
                for rate in rates:
                    before = decision_counters(url)
                    r = run_open_loop(url, bodies, rate, seconds, warmup, grace=3.0)
                    after = decision_counters(url)
                    counters = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
                    row = {"setting": name, "repeat": repeat, "rate": rate, "achieved_rate": r["achieved_rate"],
                           "latency_ms": r["latency_ms"], "errors": r["errors"], "timeouts": r["timeouts"],
                           "degraded_answers": r["degraded"],
                           "full": int(counters.get("decisions_total:ok", 0)),
                           "shed": int(counters.get("decisions_total:shed", 0)),
                           "budget_degraded": int(counters.get("decisions_total:degraded", 0)),
                           "limit_after": admission_limit(url)}
                    runs.append(row)
                    lat = r["latency_ms"]
                    log(f"admission: {name:8} #{repeat} @ {rate:>5}/s -> p50 {lat.get('p50')} p99 {lat.get('p99')} "
                        f"p99.9 {lat.get('p99_9')} ms, full {row['full']}, shed {row['shed']}, "
                        f"limit {row['limit_after']}")
            finally:
                api.stop()
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        for rate in rates:
            rows = [x for x in runs if x["setting"] == name and x["rate"] == rate]
            summary.setdefault(name, {})[str(rate)] = {
                "p99_ms": [x["latency_ms"].get("p99") for x in rows],
                "p99_ms_median": median([x["latency_ms"].get("p99", float("inf")) for x in rows]),
                "shed_share": [round(x["shed"] / max(1, x["full"] + x["shed"]), 4) for x in rows],
                "errors_and_timeouts": sum(x["errors"] + x["timeouts"] for x in rows),
                "limit_after": [x["limit_after"] for x in rows],
            }
    return {"rates": rates, "repeats": repeats, "seconds_per_rate": seconds, "request_mix": mix,
            "settings": {n: SETTINGS[n] for n in names}, "runs": runs, "summary": summary}


def table(result: dict[str, Any]) -> str:
    lines = [f"{'setting':10} {'offered':>8}  {'p99 ms (each repeat)':28} {'shed share':22} {'limit after':16}"]
    for name, per_rate in result["summary"].items():
        for rate, s in per_rate.items():
            p99 = " / ".join(f"{v:.2f}" if v is not None else "-" for v in s["p99_ms"])
            shed = " / ".join(f"{100 * v:.1f}%" for v in s["shed_share"])
            limit = " / ".join(f"{v:.0f}" if v is not None else "-" for v in s["limit_after"])
            lines.append(f"{name:10} {int(rate):>8}  {p99:28} {shed:22} {limit:16}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rates", default="1000,2000,4000,6000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    args = ap.parse_args(argv)
    exit_cleanly_on_signals()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}")
    rates = [int(r) for r in args.rates.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    with Infra.started(quick=args.quick) as infra:
        result = run(infra, rates, 1 if args.quick else args.repeats, seconds, names)
    path = write_result("admission", result, args.quick)
    print(table(result))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
