"""Run every benchmark on local real services, print ONE table, write ``bench/results/<name>.json``.

    python -m bench.run            # full: about 10-15 minutes
    python -m bench.run --quick    # smoke check: short durations, under 2 minutes
    python -m bench.run --only latency,memory --no-profile

Kafka and Redis are started from ``infra.local`` (real broker and server on free loopback ports); the worker
and the API run as the project's own subprocesses (``infra.processes``). Results go to
``bench/results/{latency,freshness,throughput,memory,summary}.json`` (``*.quick.json`` in quick mode, so a
smoke run never overwrites full figures), each with the date, the machine (cores, memory, load), versions
and the git revision. py-spy profiles (collapsed stacks) go next to them as ``profile-*.txt``.

The machine is shared and noisy: every figure comes with the CPU the rest of the machine used meanwhile
(``cpu.other_cpu_s``); compare ratios measured in the same run rather than absolute numbers across runs.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import freshness, latency, memory, throughput
from bench.common import Infra, exit_cleanly_on_signals, log, meta, write_result
from bench.measure import pyspy_binary

#: throughput runs before freshness: freshness keeps its background load under the worker's measured capacity
BENCHMARKS = ("latency", "throughput", "freshness", "memory")


def _g(d: Any, *path: Any, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _n(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}"


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, status) for every target of the issue."""
    out: list[tuple[str, str, str, bool | None]] = []
    at = _g(r, "latency", "rates", "1000", "ours")
    if at:
        errs = at["errors"] + at["timeouts"] + at["degraded"]
        ok = at["latency_ms"].get("p99", 1e9) <= 10.0 and errs == 0 and at["achieved_rate"] >= 950
        out.append(("decide p99 <= 10 ms at 1,000 req/s, 0 errors",
                    f"p99 {_ms(at['latency_ms'].get('p99'))} ms, {errs} errors/timeouts/degraded", "", ok))
    else:
        out.append(("decide p99 <= 10 ms at 1,000 req/s, 0 errors", "not measured", "", None))
    keys = _g(r, "latency", "keys")
    if keys:
        kr = keys["p99_ratio_on_vs_off"]
        out.append(("decide p99 @ 1,000 req/s: keys on within 10% of off",
                    f"on {_ms(keys['on']['p99_ms_median'])} vs off {_ms(keys['off']['p99_ms_median'])} ms "
                    f"(x{kr}), errors {keys['on']['errors']}; server CPU/request x{keys.get('cpu_ratio_on_vs_off')}",
                    "", None if kr is None else kr <= 1.10))
    ratio = _g(r, "latency", "summary", "throughput_ratio_vs_bare")
    out.append(("decide throughput >= 50% of bare", "-" if ratio is None else f"{100 * ratio:.0f}% of bare", "",
                None if ratio is None else ratio >= 0.5))
    p99 = _g(r, "freshness", "event_to_decision_ms", "p99")
    bg = _g(r, "freshness", "background", default={})
    note = f" at {_n(bg.get('rate'))} ev/s background"
    if bg.get("capped_by_worker_capacity"):
        note += f" (capped at half the worker's {_n(bg.get('worker_capacity_from_throughput'))} ev/s)"
    out.append(("freshness p99 <= 100 ms", "not measured" if p99 is None else f"p99 {_ms(p99)} ms{note}", "",
                None if p99 is None else p99 <= 100.0))
    one = _g(r, "throughput", "summary", "events_per_s_one_worker")
    out.append(("worker >= 10,000 events/s", "not measured" if one is None else f"{_n(one)} events/s", "",
                None if one is None else one >= 10_000))
    share = _g(r, "throughput", "summary", "share_of_bare")
    out.append(("worker >= 30% of bare consumer", "-" if share is None else f"{100 * share:.1f}% of bare", "",
                None if share is None else share >= 0.3))
    b = _g(r, "memory", "bytes_per_profile", "median")
    out.append(("Redis <= 2 KB per typical profile", "not measured" if b is None else f"{b:,.0f} B (median)", "",
                None if b is None else b <= 2048))
    return out


def table(r: dict[str, Any], quick: bool) -> str:
    rows: list[tuple[str, str, str]] = []  # (measure, ours, side by side)
    lat = r.get("latency")
    if lat:
        for rate, pair in lat["rates"].items():
            o, b = pair["ours"], pair["bare"]
            ol, bl = o["latency_ms"], b["latency_ms"]
            errs = o["errors"] + o["timeouts"]
            rows.append((f"decide @ {int(float(rate)):>5} req/s  p50 / p99 / p99.9 ms",
                         f"{_ms(ol.get('p50'))} / {_ms(ol.get('p99'))} / {_ms(ol.get('p99_9'))}  "
                         f"({_n(o['achieved_rate'])}/s, err {errs}, degr {o['degraded']})",
                         f"bare {_ms(bl.get('p50'))} / {_ms(bl.get('p99'))} / {_ms(bl.get('p99_9'))} "
                         f"({_n(b['achieved_rate'])}/s)"))
        keys = lat.get("keys")
        if keys:
            on, off = keys["on"], keys["off"]
            rows.append((f"decide @ {keys['rate']:,} req/s, API keys on: p50 / p99 ms",
                         f"{_ms(on['p50_ms_median'])} / {_ms(on['p99_ms_median'])}  (err {on['errors']}, "
                         f"median of {keys['rounds']})",
                         f"keys off {_ms(off['p50_ms_median'])} / {_ms(off['p99_ms_median'])} -> p99 "
                         f"x{keys['p99_ratio_on_vs_off']}"))
            if off.get("server_cpu_us_per_request_median") is not None:
                rows.append(("API CPU per decision @ 1,000 req/s, keys on",
                             f"{on['server_cpu_us_per_request_median']} us",
                             f"keys off {off['server_cpu_us_per_request_median']} us -> "
                             f"x{keys.get('cpu_ratio_on_vs_off')}"))
        held = lat["summary"]["highest_rate_with_p99_under_10ms"]
        rows.append(("highest rate held with p99 <= 10 ms", f"{_n(held)} req/s",
                     f"of {', '.join(str(x) for x in latency.RATES)}"))
        so, sb = lat["saturation"]["ours"], lat["saturation"]["bare"]
        rows.append(("throughput, full decisions (wrk -c32)",
                     f"{_n(so['rate'])} req/s (p99 {_ms(so['latency_ms']['p99'])} ms)",
                     f"bare {_n(sb['rate'])} req/s -> ratio {lat['summary']['throughput_ratio_vs_bare']:.2f}"))
        if "server_cpu_ms_per_request" in so:
            rows.append(("API CPU per request (at saturation)",
                         f"{so['server_cpu_ms_per_request']:.3f} ms (+ Redis {so['redis_cpu_us_per_request']} us)",
                         f"bare {sb['server_cpu_ms_per_request']:.3f} ms -> a core serves "
                         f"{_n(1000 / so['server_cpu_ms_per_request'])} vs {_n(1000 / sb['server_cpu_ms_per_request'])}"
                         " req/s"))
        two = lat["summary"].get("two_processes")
        if two:
            o2 = lat["saturation"]["ours_2_processes"]
            rows.append(("throughput, 2 server processes (wrk -c32)",
                         f"{_n(two['ours'])} req/s (p99 {_ms(o2['latency_ms']['p99'])} ms; "
                         f"x{two['ours_gain_over_one_process']:.2f} vs 1)",
                         f"bare {_n(two['bare'])} req/s -> ratio {two['ratio_vs_bare']:.2f}"))
        fl = lat["redis_floor"]
        rows.append(("Redis floor from Python: HGETALL p50 / p99 ms",
                     f"{_ms(fl['hgetall_ms']['p50'])} / {_ms(fl['hgetall_ms']['p99'])}",
                     f"profile read ({fl['profile_read_commands']} cmds, 1 pipeline) "
                     f"{_ms(fl['profile_pipeline_read_ms']['p50'])} / {_ms(fl['profile_pipeline_read_ms']['p99'])}"))
    fr = r.get("freshness")
    if fr:
        e = fr["event_to_decision_ms"]
        fl = _g(fr, "floor_bare_pipeline", "event_to_redis_ms", default={})
        er = fr["event_to_redis_ms"]
        bg = _n(_g(fr, "background", "rate"))
        rows.append(("freshness event -> decision p50 / p99 ms",
                     f"{_ms(e.get('p50'))} / {_ms(e.get('p99'))}  (n={e.get('n', 0)}, bg {bg} ev/s)",
                     f"event->Redis {_ms(er.get('p50'))} / {_ms(er.get('p99'))}; "
                     f"no-Faust floor {_ms(fl.get('p50'))} / {_ms(fl.get('p99'))}"))
        mx = fr.get("decide_under_ingest")
        if mx:
            u, i = mx["under_ingest"], mx["idle"]
            ul, il = u["latency_ms"], i["latency_ms"]
            rows.append((f"decide @ {int(mx['rate'])}/s + ingest p50/p99/p99.9 ms",
                         f"{_ms(ul.get('p50'))} / {_ms(ul.get('p99'))} / {_ms(ul.get('p99_9'))}  "
                         f"(err {u['errors'] + u['timeouts']}, degr {u['degraded']}; "
                         f"{_n(mx['worker_applied_rate'])} ev/s applied)",
                         f"same API idle {_ms(il.get('p50'))} / {_ms(il.get('p99'))} / {_ms(il.get('p99_9'))} "
                         f"(err {i['errors'] + i['timeouts']}, degr {i['degraded']})"))
    th = r.get("throughput")
    if th:
        s = th["summary"]
        rows.append(("stream: events/s, 1 worker", f"{_n(s['events_per_s_one_worker'])} ev/s",
                     f"bare consumer {_n(s['bare_consumer_events_per_s'])} ev/s -> {100 * s['share_of_bare']:.1f}% "
                     f"({th['bare_consumer'].get('cpu_us_per_event')} us CPU/event)"))
        one = th["one_worker"]
        if one.get("events_per_core_second"):
            rows.append(("stream: CPU per event, 1 worker", f"{one.get('worker_cpu_us_per_event')} us "
                         f"(+ Redis {one.get('redis_cpu_us_per_event')}, Kafka {one.get('kafka_cpu_us_per_event')})",
                         f"-> {_n(one['events_per_core_second'])} ev per worker core-second"))
        if one.get("learner_cpu_us_per_event") is not None:
            rows.append(("stream: learner process beside it", f"{one['learner_cpu_us_per_event']} us CPU/event",
                         "co-visitation + placement models, snapshots (not in the worker's figures)"))
        if "one_process" in th:
            op = th["one_process"]
            rows.append(("stream: 1 worker, all roles in one process", f"{_n(op.get('rate'))} ev/s",
                         f"{op.get('worker_cpu_us_per_event')} us CPU/event (python -m streams worker)"))
        if "bare_pipeline" in th:
            bp = th["bare_pipeline"]
            rows.append(("stream: our BatchProcessor, no Faust", f"{_n(bp.get('rate'))} ev/s",
                         f"{bp.get('cpu_us_per_event')} us CPU/event (features only, no hooks)"))
        if "bare_faust" in th:
            bf = th["bare_faust"]
            rows.append(("stream: Faust alone (take_events, count)", f"{_n(bf.get('rate'))} ev/s",
                         f"{bf.get('cpu_us_per_event')} us CPU/event (none of our code)"))
        rows.append(("stream: events/s, 2 workers", f"{_n(s['events_per_s_two_workers'])} ev/s",
                     f"scaling x{s['scaling_two_over_one']:.2f} (2 cores shared with Kafka/Redis)"))
    me = r.get("memory")
    if me:
        b = me["bytes_per_profile"]
        top = next(iter(me["by_key"].items()), ("-", {"share_pct": 0}))
        rows.append((f"Redis bytes per profile ({me['events_per_profile']} events)",
                     f"{b['median']:,.0f} B median (p90 {b['p90']:,.0f})",
                     f"used_memory {me['used_memory_growth_per_profile']:+,} B/profile; biggest: {top[0]} "
                     f"{top[1]['share_pct']}%"))
        rss = me.get("rss_mib", {})
        if rss:
            api = _g(rss, "api_under_open_loop", "rss_mib_max")
            wk = _g(rss, "worker_draining_topic", "rss_mib_max")
            rows.append(("RSS under load (max)", f"API {api} MiB, worker {wk} MiB",
                         f"bare endpoint {_g(rss, 'bare_endpoint_under_open_loop', 'rss_mib_max')} MiB"))
    w1 = max([len(x[0]) for x in rows] + [10])
    w2 = max([len(x[1]) for x in rows] + [10])
    lines = [f"pulse benchmarks ({'quick' if quick else 'full'})  {meta('quick' if quick else 'full')['date']}",
             f"{'measure':<{w1}}  {'ours':<{w2}}  side by side", "-" * (w1 + w2 + 60)]
    lines += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in rows]
    lines.append("-" * (w1 + w2 + 60))
    for name, measured, _, ok in targets(r):
        status = "n/a " if ok is None else ("PASS" if ok else "MISS")
        lines.append(f"[{status}] {name:<46} {measured}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the pulse benchmarks (see docs/performance.md).")
    ap.add_argument("--quick", action="store_true", help="short durations: a smoke check, under 2 minutes")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles of the API and the worker")
    args = ap.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    profile = not args.no_profile and pyspy_binary() is not None
    if not args.no_profile and not profile:
        log("py-spy not found: profiles skipped (pip install py-spy)")
    exit_cleanly_on_signals()
    started = time.monotonic()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    runners: dict[str, Callable[[Infra], dict[str, Any]]] = {
        "latency": latency.run, "throughput": throughput.run,
        "freshness": lambda infra: freshness.run(
            infra, worker_capacity=_g(results, "throughput", "summary", "events_per_s_one_worker")),
        "memory": lambda infra: memory.run(infra, results),
    }
    with Infra.started(args.quick, profile) as infra:
        for name in BENCHMARKS:
            if name not in chosen:
                continue
            t0 = time.monotonic()
            log(f"=== {name} ===")
            try:
                results[name] = runners[name](infra)
                timings[name] = round(time.monotonic() - t0, 1)
                results[name]["wall_seconds"] = timings[name]
                log(f"{name}: done in {timings[name]} s -> {write_result(name, results[name], args.quick)}")
            except Exception as exc:  # one broken benchmark must not hide the others
                failures[name] = f"{type(exc).__name__}: {exc}"
                timings[name] = round(time.monotonic() - t0, 1)
                log(f"{name} FAILED after {timings[name]} s:\n{traceback.format_exc()}")
    text = table(results, args.quick)
    summary = {
        "table": text.splitlines(), "wall_seconds": round(time.monotonic() - started, 1), "timings": timings,
        "failures": failures,
        "targets": [{"target": n, "measured": m, "status": None if ok is None else ("PASS" if ok else "MISS")}
                    for n, m, _, ok in targets(results)],
    }
    path = write_result("summary", summary, args.quick)
    print(text)
    if failures:
        print("\nFAILED: " + "; ".join(f"{k}: {v}" for k, v in failures.items()))
    print(f"\n{summary['wall_seconds']:.0f} s in all; results in {path.parent}/")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
