"""Does the running system learn? Simulated visitors with hidden tastes drive the whole loop.

The real pipeline runs on this machine (``infra.local`` Kafka and Redis, the Faust worker and the API as
subprocesses, ``ENGINE_CONFIG=bench/config/simulator.toml``). Simulated visitors then behave like a
shop's, over HTTP only:

1. a visit posts a few ``page_view`` events to ``POST /v1/events`` (categories drawn from the visitor's
   hidden taste), so the worker builds the profile that serving will read as context;
2. after a short "think time" it asks ``POST /v1/decide`` for the learning placement ``sim_recs``;
3. it clicks the shown action (``POST /v1/events``, ``type=click`` with ``decision_id`` and ``action_id``)
   with a hidden probability ``p(click | visitor, action)``.

**Hidden tastes** (``TASTES``): six segments, each browsing two favourite categories (75 % / 20 % of
its page views, 5 % anywhere). What a segment clicks best (p = 0.30) is the niche pick of a *third*
category it never browses (runners browse shoes and books but click the GPS running watch). The
favourite category's bestseller gets 0.12, other favourite-category actions 0.05-0.08, anything else
0.03; each visitor has a "clickiness" factor (0.6-1.4) and mobile visitors click 10 % less. So the best
action depends on the visitor's taste, which the context only shows through the category
affinities, and it is *not* the action of the visitor's strongest category: the transparent
affinity x popularity scorer (the control arm, 20 % of visitors, sticky) keeps showing the favourite
category's bestseller and stays flat near 0.12, while a learner can find the cross-sell (oracle:
0.30 x clickiness).

Per window of decisions the table shows the CTR of each arm (observed clicks, and *expected*: the mean
hidden click probability of what was shown, which is free of click noise), the oracle's expected CTR
(the best action for each visitor), the learning arm's cumulative regret against the oracle and the
model version serving used; then the decision count at which the learning arm first reached 90 % of
the oracle (target: within 50,000 decisions), a cross-check of the simulator's own counts against
``GET /v1/experiments/sim_recs``, and off-policy estimates (``bench.ope``) computed from the run's own
``decisions`` and ``learning`` topics, checked against the true values the simulator knows.

Load: asyncio, at most ``--concurrency`` visits in flight (most of them "thinking" 0.5-1.5 s between
their page views and the decision, time the worker needs to apply them), started at up to ``--rate``
per second (default 100: what this 2-core machine sustains with the API's 25 ms decide budget; above
it the share of degraded, non-personalised decisions grows, which the table shows). Each concurrent
visit has its own keep-alive connection (``bench.http_client.HttpClient``): httpx costs ~1.5 ms of client CPU
per request here against ~0.1 ms, and the client shares the two cores with everything it measures.
A warm-up (other visitors, placement ``sim_warmup``, nothing learned) precedes the measured run, and a
probe posts a page view every 2 s and polls its profile: the event -> profile lag per window.

``python -m bench.simulator [--decisions N] [--quick] [--rate R] [--policy linucb --policy-params '{"alpha": 0.2}']``
writes ``bench/results/simulator.json`` (``simulator.quick.json`` with ``--quick``; with ``--policy``:
``simulator-<policy>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import log, summarise_ms, write_result
from bench.http_client import HttpClient

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "bench" / "config" / "simulator.toml"
PLACEMENT = "sim_recs"
WARMUP_PLACEMENT = "sim_warmup"
TARGET_SHARE = 0.9
TARGET_DECISIONS = 50_000

CATEGORIES = ("shoes", "jackets", "books", "electronics", "hats", "kitchen")
ITEMS_PER_CATEGORY = 40


@dataclass(frozen=True, slots=True)
class Taste:
    """A hidden segment: what it browses (``favourite`` 65 %, ``second`` 25 %) and what it clicks best."""

    name: str
    favourite: str
    second: str
    best: str  # an action id whose category is neither favourite nor second


TASTES: tuple[Taste, ...] = (
    Taste("runners", "shoes", "books", "electronics-2"),       # -> GPS running watch
    Taste("techies", "electronics", "books", "kitchen-2"),     # -> smart kitchen scale
    Taste("cooks", "kitchen", "electronics", "books-2"),       # -> weeknight cookbook
    Taste("hikers", "jackets", "shoes", "hats-2"),             # -> waterproof bucket hat
    Taste("sunseekers", "hats", "kitchen", "jackets-2"),       # -> packable rain shell
    Taste("commuters", "books", "jackets", "shoes-2"),         # -> trail running shoes
)
VIEW_SHARE = (0.75, 0.20)  # favourite, second; the rest uniformly over all categories

P_BEST = 0.30
P_FAVOURITE_BESTSELLER = 0.12
P_FAVOURITE_OTHER = 0.07
P_SECOND_BESTSELLER = 0.08
P_SECOND_OTHER = 0.05
P_OTHER = 0.03
MOBILE_FACTOR = 0.9


def base_click_probability(taste: Taste, action_id: str) -> float:
    """The segment's click probability for an action, before the visitor's own factors."""
    if action_id == taste.best:
        return P_BEST
    category, _, kind = action_id.rpartition("-")
    if category == taste.favourite:
        return P_FAVOURITE_BESTSELLER if kind == "1" else P_FAVOURITE_OTHER
    if category == taste.second:
        return P_SECOND_BESTSELLER if kind == "1" else P_SECOND_OTHER
    return P_OTHER


@dataclass(slots=True)
class Visitor:
    vid: str
    taste: Taste
    clickiness: float
    device: str
    visits: int = 0

    def p_click(self, action_id: str) -> float:
        p = base_click_probability(self.taste, action_id) * self.clickiness
        if self.device == "mobile":
            p *= MOBILE_FACTOR
        return min(p, 0.95)

    def p_best(self) -> float:
        return self.p_click(self.taste.best)


@dataclass(slots=True)
class Outcome:
    """One decision as the simulator saw it."""

    seq: int
    t: float
    decision_id: str
    visitor: str
    taste: str
    arm: str
    policy: str
    model_version: int
    action_id: str
    propensity: float
    p_shown: float
    p_best: float
    clicked: bool
    personalised: bool
    degraded: bool
    decide_s: float


@dataclass
class Counters:
    events_posted: int = 0
    clicks_posted: int = 0
    http_errors: int = 0
    last_error: str = ""
    event_post_s: list[float] = field(default_factory=list)


class Simulation:
    """Visitors browsing concurrently: at most ``concurrency`` visits in flight, ``n_decisions`` in all."""

    def __init__(self, base_url: str, n_decisions: int, *, concurrency: int = 256, seed: int = 7,
                 visitors: int | None = None, rate: float | None = None, window: int = 2500,
                 think: tuple[float, float] = (0.5, 1.5), tag: str = "") -> None:
        self.base_url, self.n, self.concurrency = base_url, n_decisions, concurrency
        self.rate, self.window, self.think = rate, window, think
        self.rng = random.Random(seed)
        n_visitors = visitors or max(4 * concurrency, n_decisions // 5)
        tag = tag or uuid.uuid4().hex[:6]
        self.visitors = [
            Visitor(f"sim-{tag}-{i}", TASTES[i % len(TASTES)], self.rng.uniform(0.6, 1.4),
                    "mobile" if self.rng.random() < 0.6 else "desktop")
            for i in range(n_visitors)
        ]
        self.rng.shuffle(self.visitors)
        self.idle = list(self.visitors)
        self.by_id = {v.vid: v for v in self.visitors}
        self.outcomes: list[Outcome] = []
        self.by_decision: dict[str, Outcome] = {}
        self.counters = Counters()
        self.started = 0
        self.tag = tag
        self.freshness: list[tuple[float, float]] = []
        self._next_start = 0.0
        self._t0 = 0.0

    # -- events ------------------------------------------------------------------------------------
    def _context(self, v: Visitor, session: str, url: str) -> dict[str, Any]:
        return {"channel": "web", "locale": "en-GB", "session_id": session, "url": url,
                "user_agent": "Mozilla/5.0 (iPhone)" if v.device == "mobile" else "Mozilla/5.0 (X11; Linux)"}

    def page_views(self, v: Visitor, n: int) -> list[dict[str, Any]]:
        rng, out = self.rng, []
        session = f"s-{v.vid}-{v.visits}"
        now_ms = int(time.time() * 1000) - 1000 * n
        for i in range(n):
            u = rng.random()
            cat = v.taste.favourite if u < VIEW_SHARE[0] else v.taste.second if u < sum(VIEW_SHARE) \
                else rng.choice(CATEGORIES)
            k = min(int(rng.paretovariate(1.2)) - 1, ITEMS_PER_CATEGORY - 1)
            item = f"sku-{cat}-{k}"
            url = f"https://shop.example/{cat}/{item}"
            out.append({"event_id": uuid.uuid4().hex, "type": "page_view", "schema_version": 1,
                        "timestamp": now_ms + 1000 * i, "anonymous_id": v.vid,
                        "context": self._context(v, session, url),
                        "properties": {"url": url, "item_id": item, "category": cat, "title": f"{cat} {k}"}})
        return out

    def click_event(self, v: Visitor, decision_id: str, action_id: str) -> dict[str, Any]:
        return {"event_id": uuid.uuid4().hex, "type": "click", "schema_version": 1,
                "timestamp": int(time.time() * 1000), "anonymous_id": v.vid,
                "context": self._context(v, f"s-{v.vid}-{v.visits}", f"https://shop.example/{PLACEMENT}"),
                "properties": {"decision_id": decision_id, "action_id": action_id, "placement": PLACEMENT}}

    async def _post(self, client: HttpClient, path: str, payload: Any, expect: int) -> Any:
        for attempt in range(3):
            try:
                status, body = await client.request("POST", path, orjson.dumps(payload))
                if status == expect:
                    return orjson.loads(body)
                self.counters.last_error = f"{path} {status} {body[:200]!r}"
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.counters.last_error = f"{path} {exc!r}"
            self.counters.http_errors += 1
            await asyncio.sleep(0.2 * (attempt + 1))
        return None

    # -- a visit -----------------------------------------------------------------------------------
    async def _pace(self) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + 1.0 / self.rate
        if start > now:
            await asyncio.sleep(start - now)

    async def visit(self, client: HttpClient, v: Visitor, placement: str = PLACEMENT) -> None:
        rng = self.rng
        n_views = rng.randint(5, 8) if v.visits == 0 else rng.randint(2, 4)
        v.visits += 1
        t = time.perf_counter()
        if await self._post(client, "/v1/events", self.page_views(v, n_views), 202) is not None:
            self.counters.events_posted += n_views
            self.counters.event_post_s.append(time.perf_counter() - t)
        await asyncio.sleep(rng.uniform(*self.think))  # browsing; the worker applies the page views
        t = time.perf_counter()
        d = await self._post(client, "/v1/decide", {"anonymous_id": v.vid, "placement": placement, "n": 1,
                                                    "context": {"channel": "web", "device": v.device}}, 200)
        decide_s = time.perf_counter() - t
        if d is None or not d.get("actions") or placement != PLACEMENT:
            return
        action_id = d["actions"][0]["action_id"]
        p = v.p_click(action_id)
        clicked = rng.random() < p
        o = Outcome(len(self.outcomes), time.monotonic() - self._t0, d["decision_id"], v.vid, v.taste.name,
                    d["holdout_arm"], d["policy"], int(d["model_version"]), action_id, float(d["propensity"]),
                    p, v.p_best(), clicked, bool(d["personalised"]), bool(d["degraded"]), decide_s)
        self.outcomes.append(o)
        self.by_decision[o.decision_id] = o
        if len(self.outcomes) % self.window == 0:
            self._progress()
        if clicked:
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # reading the offer, then clicking it
            if await self._post(client, "/v1/events", self.click_event(v, d["decision_id"], action_id), 202):
                self.counters.clicks_posted += 1

    def _progress(self) -> None:
        recent = self.outcomes[-self.window:]
        learn = [o for o in recent if o.arm == "learning"]
        ctrl = [o for o in recent if o.arm == "control"]
        elapsed = time.monotonic() - self._t0

        def exp(os_: Sequence[Outcome]) -> float:
            return sum(o.p_shown for o in os_) / len(os_) if os_ else float("nan")
        log(f"{len(self.outcomes):>7,} decisions ({len(self.outcomes) / elapsed:,.0f}/s): expected CTR learning "
            f"{exp(learn):.3f} control {exp(ctrl):.3f} oracle {sum(o.p_best for o in recent) / len(recent):.3f} "
            f"model v{max((o.model_version for o in learn), default=0)}")

    async def _loop(self) -> None:
        client = HttpClient.for_url(self.base_url)  # one keep-alive connection per concurrent visit
        try:
            await self._visits(client)
        finally:
            await client.close()

    async def warmup(self, seconds: float) -> int:
        """Visits by other visitors on the warm-up placement (nothing learned, nothing counted)."""
        deadline = time.monotonic() + seconds
        done = 0

        async def loop() -> None:
            nonlocal done
            client = HttpClient.for_url(self.base_url)
            try:
                while time.monotonic() < deadline:
                    await self._pace()
                    model = self.visitors[self.rng.randrange(len(self.visitors))]
                    v = Visitor(f"warm-{done}-{model.vid}", model.taste, model.clickiness, model.device)
                    done += 1
                    await self.visit(client, v, placement=WARMUP_PLACEMENT)
            finally:
                await client.close()
        await asyncio.gather(*(loop() for _ in range(self.concurrency)))
        self._next_start = 0.0
        return done

    async def _visits(self, client: HttpClient) -> None:
        while self.started < self.n:
            self.started += 1
            await self._pace()
            if not self.idle:  # every visitor is mid-visit (more concurrency than visitors)
                await asyncio.sleep(0.01)
                self.started -= 1
                continue
            i = self.rng.randrange(len(self.idle))
            self.idle[i], self.idle[-1] = self.idle[-1], self.idle[i]
            v = self.idle.pop()
            try:
                await self.visit(client, v)
            finally:
                self.idle.append(v)

    async def probe_freshness(self, every: float = 2.0) -> None:
        """Every ``every`` seconds: one page view of a new visitor, then poll its profile until the worker
        applied it (the event -> profile lag the decisions see), recorded as (t, seconds)."""
        client = HttpClient.for_url(self.base_url)
        i = 0
        try:
            while True:
                vid = f"probe-{self.tag}-{i}"
                i += 1
                ev = {"event_id": uuid.uuid4().hex, "type": "page_view", "schema_version": 1,
                      "timestamp": int(time.time() * 1000), "anonymous_id": vid,
                      "properties": {"item_id": "sku-probe-0", "category": "probe"}}
                t0 = time.monotonic()
                status, _ = await client.request("POST", "/v1/events", orjson.dumps(ev))
                if status == 202:
                    while time.monotonic() - t0 < 30.0:
                        status, _ = await client.request("GET", f"/v1/profiles/{vid}")
                        if status == 200:
                            self.freshness.append((t0 - self._t0, time.monotonic() - t0))
                            break
                        await asyncio.sleep(0.02)
                await asyncio.sleep(max(0.0, every - (time.monotonic() - t0)))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await client.close()

    async def run(self, warmup_s: float = 0.0) -> float:
        if warmup_s > 0:
            t = time.monotonic()
            n = await self.warmup(warmup_s)
            log(f"warm-up: {n:,} visits on {WARMUP_PLACEMENT} in {time.monotonic() - t:.1f}s")
        self._t0 = time.monotonic()
        probe = asyncio.create_task(self.probe_freshness())
        try:
            await asyncio.gather(*(self._loop() for _ in range(self.concurrency)))
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        return time.monotonic() - self._t0


# --------------------------------------------------------------------------------------------------
# analysis


def window_table(outcomes: Sequence[Outcome], window: int,
                 freshness: Sequence[tuple[float, float]] = ()) -> list[dict[str, Any]]:
    """One row per ``window`` decisions (a last partial window under half a window joins the previous)."""
    rows = []
    regret_learning = regret_control = 0.0
    starts = list(range(0, len(outcomes), window))
    if len(starts) > 1 and len(outcomes) - starts[-1] < window / 2:
        starts.pop()
    for k, start in enumerate(starts):
        chunk = outcomes[start:starts[k + 1] if k + 1 < len(starts) else len(outcomes)]
        t_lo, t_hi = chunk[0].t, chunk[-1].t
        lags = sorted(lag for t, lag in freshness if t_lo <= t <= t_hi)
        learn = [o for o in chunk if o.arm == "learning"]
        ctrl = [o for o in chunk if o.arm == "control"]
        regret_learning += sum(o.p_best - o.p_shown for o in learn)
        regret_control += sum(o.p_best - o.p_shown for o in ctrl)

        def mean(xs: Sequence[float]) -> float:
            return sum(xs) / len(xs) if xs else float("nan")
        oracle_learning = mean([o.p_best for o in learn])
        rows.append({
            "learning_oracle_expected_ctr": oracle_learning,
            "decisions": start + len(chunk),
            "learning_n": len(learn), "control_n": len(ctrl),
            "learning_ctr": mean([float(o.clicked) for o in learn]),
            "learning_expected_ctr": mean([o.p_shown for o in learn]),
            "control_ctr": mean([float(o.clicked) for o in ctrl]),
            "control_expected_ctr": mean([o.p_shown for o in ctrl]),
            "oracle_expected_ctr": mean([o.p_best for o in chunk]),
            "learning_share_of_oracle": mean([o.p_shown for o in learn]) / oracle_learning if learn else float("nan"),
            "learning_share_of_oracle_personalised": share_of_oracle([o for o in learn if o.personalised]),
            "learning_best_action_share": mean([float(o.action_id == _best(o)) for o in learn]),
            "learning_cumulative_regret": regret_learning,
            "control_cumulative_regret": regret_control,
            "learning_model_version": max((o.model_version for o in learn), default=0),
            "personalised_share": mean([float(o.personalised) for o in chunk]),
            "degraded_share": mean([float(o.degraded) for o in chunk]),
            "event_to_profile_lag_s_median": lags[len(lags) // 2] if lags else None,
            "event_to_profile_lag_s_max": lags[-1] if lags else None,
        })
    return rows


_TASTE_BY_NAME = {t.name: t for t in TASTES}


def share_of_oracle(outcomes: Sequence[Outcome]) -> float:
    return sum(o.p_shown for o in outcomes) / sum(o.p_best for o in outcomes) if outcomes else float("nan")


def _best(o: Outcome) -> str:
    return _TASTE_BY_NAME[o.taste].best


def reached(rows: Sequence[dict[str, Any]], share: float = TARGET_SHARE) -> dict[str, Any]:
    """When the learning arm first reached ``share`` of the oracle (same visitors' oracle), on expected CTR,
    on observed clicks and on personalised decisions only; whether it stayed there afterwards."""
    out: dict[str, Any] = {"share": share}
    metrics = (("expected", lambda r: r["learning_share_of_oracle"]),
               ("observed", lambda r: r["learning_ctr"] / r["learning_oracle_expected_ctr"]),
               ("expected_personalised_only", lambda r: r["learning_share_of_oracle_personalised"]))
    for key, metric in metrics:
        ok = [bool(r["learning_n"]) and metric(r) >= share for r in rows]
        first = next((i for i, x in enumerate(ok) if x), None)
        after = ok[first:] if first is not None else []
        out[key] = {
            "first_window_end": rows[first]["decisions"] if first is not None else None,
            "sustained_from": next((rows[i]["decisions"] for i in range(len(rows)) if all(ok[i:])), None),
            "windows_at_or_above_after_first": f"{sum(after)}/{len(after)}",
        }
    return out


def print_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (f"{'decisions':>9} | {'learning CTR':>12} {'(exp)':>6} | {'control CTR':>11} {'(exp)':>6} | "
            f"{'oracle':>6} | {'learn/oracle':>12} | {'best shown':>10} | {'cum. regret':>11} | {'model':>5} | "
            f"{'pers.':>5} {'degr.':>5} {'lag s':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lag = r.get("event_to_profile_lag_s_median")
        lines.append(
            f"{r['decisions']:>9,} | {r['learning_ctr']:>12.3f} {r['learning_expected_ctr']:>6.3f} | "
            f"{r['control_ctr']:>11.3f} {r['control_expected_ctr']:>6.3f} | {r['oracle_expected_ctr']:>6.3f} | "
            f"{r['learning_share_of_oracle']:>11.1%} | {r['learning_best_action_share']:>9.1%} | "
            f"{r['learning_cumulative_regret']:>11.1f} | {'v' + str(r['learning_model_version']):>5} | "
            f"{r['personalised_share']:>5.0%} {r['degraded_share']:>5.0%} "
            f"{(f'{lag:.2f}' if lag is not None else '-'):>5}")
    return "\n".join(lines)


def own_counts(outcomes: Sequence[Outcome]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for o in outcomes:
        c = out.setdefault(o.arm, {"impressions": 0, "clicks": 0})
        c["impressions"] += 1
        c["clicks"] += int(o.clicked)
    return out


def cross_check(own: dict[str, dict[str, int]], experiment: dict[str, Any]) -> dict[str, Any]:
    arms = experiment.get("arms", {})
    out: dict[str, Any] = {}
    for arm in sorted(set(own) | {a for a in arms if a != "all"}):
        mine, api = own.get(arm, {}), arms.get(arm, {})
        out[arm] = {
            "simulator_impressions": mine.get("impressions", 0), "api_impressions": int(api.get("impressions", 0)),
            "simulator_clicks": mine.get("clicks", 0), "api_clicks": int(api.get("clicks", 0)),
            "api_settled": int(api.get("settled", 0)), "api_ctr": api.get("ctr"), "api_ctr_ci95": api.get("ctr_ci95"),
            "api_mean_reward": api.get("mean_reward"),
        }
        out[arm]["match"] = (out[arm]["simulator_impressions"] == out[arm]["api_impressions"]
                             and out[arm]["simulator_clicks"] == out[arm]["api_clicks"])
    out["late_rewards"] = int(arms.get("all", {}).get("late_rewards", 0))
    # a click that reaches the reward join after its decision's window ended is counted as late, not
    # as a click of its arm: the simulator's clicks are the API's clicks plus the late ones
    sim_clicks = sum(c.get("clicks", 0) for c in own.values())
    api_clicks = sum(int(a.get("clicks", 0)) for k, a in arms.items() if k != "all")
    out["clicks_reconciled"] = sim_clicks == api_clicks + out["late_rewards"]
    out["impressions_match"] = all(out[a]["simulator_impressions"] == out[a]["api_impressions"] for a in own)
    return out


def print_cross_check(check: dict[str, Any]) -> str:
    head = f"{'arm':<9} {'impressions sim/api':>21} {'clicks sim/api':>17} {'settled':>8} {'API CTR [95% CI]':>26}"
    lines = [head, "-" * len(head)]
    for arm, c in check.items():
        if not isinstance(c, dict):
            continue
        ci = c["api_ctr_ci95"] or [math.nan, math.nan]
        lines.append(f"{arm:<9} {c['simulator_impressions']:>10,}/{c['api_impressions']:<10,} "
                     f"{c['simulator_clicks']:>8,}/{c['api_clicks']:<8,} {c['api_settled']:>8,} "
                     f"{(c['api_ctr'] or 0):>8.4f} [{ci[0]:.4f}, {ci[1]:.4f}]")
    lines.append(f"late rewards (clicks after their 2 s window, learned as 0): {check['late_rewards']}; "
                 f"impressions match: {check['impressions_match']}; simulator clicks = API clicks + late: "
                 f"{check['clicks_reconciled']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the run


def config_for(policy: str | None, params: str | None) -> Path:
    """bench/config/simulator.toml, or an overlay of it with another policy (and parameters) for the learning arm."""
    if not policy and not params:
        return CONFIG
    from engine.config import load_config
    from engine.config.compose import dumps

    placement: dict[str, Any] = {"id": PLACEMENT, "policy_params": orjson.loads(params) if params else {}}
    if policy:
        placement["policy"] = policy
    path = Path(tempfile.mkdtemp(prefix="pulse-sim-config-")) / "simulator.toml"
    path.write_text(dumps({"include": [str(CONFIG)], "placement": [placement]}))
    load_config(path)
    return path


def wait_settled(base: str, expected: int, timeout: float) -> dict[str, Any]:
    """Poll the experiment until every decision of the run is settled (window ended or clicked); the last
    report read when time runs out."""
    from infra.handles import WaitTimeout, wait_until

    last: dict[str, Any] = {}

    def settled() -> dict[str, Any] | None:
        nonlocal last
        with contextlib.suppress(httpx.HTTPError):
            last = httpx.get(f"{base}/v1/experiments/{PLACEMENT}", timeout=5).json()
        arms = last.get("arms", {})
        done = sum(int(a.get("settled", 0)) for k, a in arms.items() if k != "all") >= expected
        return last if done else None

    with contextlib.suppress(WaitTimeout):
        return wait_until(settled, timeout, 0.5, "every decision settled")
    return last


def wait_profile(base: str, timeout: float = 90.0) -> float:
    """Post one page view and wait until its profile is readable: the worker has joined and consumes."""
    from infra.handles import wait_until

    vid = f"probe-{uuid.uuid4().hex[:8]}"
    ev = {"event_id": uuid.uuid4().hex, "type": "page_view", "schema_version": 1,
          "timestamp": int(time.time() * 1000), "anonymous_id": vid,
          "properties": {"item_id": "sku-shoes-0", "category": "shoes"}}
    t0 = time.monotonic()
    assert httpx.post(f"{base}/v1/events", json=ev, timeout=10).status_code == 202
    wait_until(lambda: httpx.get(f"{base}/v1/profiles/{vid}", timeout=5).status_code == 200, timeout, 0.2,
               "the worker to apply a page view")
    return time.monotonic() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from infra.local import start_kafka, start_redis
    from infra.processes import Stack, api_process, free_port, wait_http_ready, worker_process

    config = config_for(args.policy, args.policy_params)
    from engine.config import load_config
    learning = load_config(config).placements[PLACEMENT].learning
    log_dir = Path(tempfile.mkdtemp(prefix="pulse-sim-"))
    log(f"starting Kafka and Redis (infra.local); logs in {log_dir}")
    kafka = start_kafka()
    redis_server = None
    worker = api = None
    try:
        redis_server = start_redis()
        stack = Stack(kafka.bootstrap, redis_server.url)
        stack.create_topics()
        env = {"ENGINE_CONFIG": str(config)}
        worker = worker_process(stack, log_dir, name="sim-worker", **env).start()
        port = free_port()
        api_env = dict(env)
        if args.decide_budget_ms:
            api_env["DECIDE_BUDGET_MS"] = str(args.decide_budget_ms)
        api = api_process(stack, log_dir, port, **api_env).start()
        base = f"http://127.0.0.1:{port}"
        wait_http_ready(base, api, timeout=90)
        ready_s = wait_profile(base)
        log(f"pipeline up (worker applied a first event after {ready_s:.1f}s); policy {learning.policy} "
            f"{dict(learning.params)}, holdout {learning.holdout_share:.0%} on {learning.holdout_policy}")

        sim = Simulation(base, args.decisions, concurrency=args.concurrency, seed=args.seed, rate=args.rate,
                         window=args.window, tag=stack.tag)
        elapsed = asyncio.run(sim.run(args.warmup))
        outcomes = sorted(sim.outcomes, key=lambda o: o.t)
        for i, o in enumerate(outcomes):
            o.seq = i
        log(f"{len(outcomes):,} decisions in {elapsed:.1f}s ({len(outcomes) / elapsed:,.0f}/s); "
            f"{sim.counters.http_errors} HTTP errors {sim.counters.last_error}")
        experiment = wait_settled(base, len(outcomes), timeout=60)
        check = cross_check(own_counts(outcomes), experiment)

        rows = window_table(outcomes, args.window, sim.freshness)
        target = reached(rows)

        def truth(decision_id: str, action_id: str) -> float:
            o = sim.by_decision.get(decision_id)
            return sim.by_id[o.visitor].p_click(action_id) if o else math.nan

        def oracle(row: Any) -> Any:
            import numpy as np
            o = sim.by_decision.get(row.decision_id)
            best = _TASTE_BY_NAME[o.taste].best if o else None
            return np.array([1.0 if a == best else 0.0 for a in row.candidates]) if best in row.candidates \
                else np.full(len(row.candidates), 1.0 / len(row.candidates))

        log("off-policy evaluation from the run's decisions and learning topics")
        from bench.ope import run_ope
        ope_report = run_ope(stack.bootstrap, stack.learning_topic, stack.decisions_topic, config_path=config,
                             placement=PLACEMENT, resamples=args.resamples, truth=truth,
                             extra_policies={"oracle_hidden_taste": oracle})
        return {
            "outcomes": outcomes, "rows": rows, "target": target, "check": check, "experiment": experiment,
            "ope": ope_report, "elapsed": elapsed, "counters": sim.counters, "ready_s": ready_s,
            "policy": learning.policy, "policy_params": dict(learning.params), "config": str(config),
            "visitors": len(sim.visitors), "freshness": sim.freshness,
        }
    finally:
        for proc in (api, worker):
            if proc is not None:
                proc.stop()
        if redis_server is not None:
            redis_server.close()
        kafka.close()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Simulated visitors with hidden tastes drive the whole system.")
    ap.add_argument("--decisions", type=int, default=None, help="decisions to simulate (default 50,000; quick 4,000)")
    ap.add_argument("--quick", action="store_true", help="a smoke run that finishes in under 2 minutes")
    ap.add_argument("--window", type=int, default=None, help="decisions per table row (default 2,500; quick 500)")
    ap.add_argument("--concurrency", type=int, default=256, help="visits in flight (most of them browsing)")
    ap.add_argument("--rate", type=float, default=100.0,
                    help="visits (= decisions) started per second at most; 0: as fast as the system answers")
    ap.add_argument("--decide-budget-ms", type=float, default=None,
                    help="DECIDE_BUDGET_MS of the API (default: the product default, 25)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--warmup", type=float, default=None, help="seconds of warm-up traffic (default 20; quick 5)")
    ap.add_argument("--resamples", type=int, default=None, help="bootstrap resamples of the OPE intervals")
    ap.add_argument("--policy", default=None, help="learning-arm policy instead of the config's")
    ap.add_argument("--policy-params", default=None, help='JSON, e.g. \'{"alpha": 0.2}\'')
    args = ap.parse_args(argv)
    args.decisions = args.decisions or (4_000 if args.quick else 50_000)
    args.window = args.window or (500 if args.quick else 2_500)
    args.resamples = args.resamples or (200 if args.quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (5.0 if args.quick else 20.0)
    args.rate = args.rate or None

    res = run(args)
    rows, target, check = res["rows"], res["target"], res["check"]
    outcomes: list[Outcome] = res["outcomes"]
    n = len(outcomes)
    print()
    print(f"Learning loop under simulated visitors: placement {PLACEMENT}, policy {res['policy']} "
          f"{res['policy_params']} vs control affinity_popularity; {n:,} decisions in {res['elapsed']:.0f}s "
          f"({n / res['elapsed']:,.0f}/s), {res['visitors']:,} visitors")
    print(print_table(rows))
    first = target["expected"]["first_window_end"]
    met = first is not None and first <= TARGET_DECISIONS
    for key, label in (("expected", "expected CTR"), ("observed", "observed clicks"),
                       ("expected_personalised_only", "expected CTR, personalised decisions only")):
        t = target[key]
        print(f"learning arm >= {TARGET_SHARE:.0%} of oracle ({label}): first in the window ending at "
              f"{t['first_window_end'] or 'never'}, windows at or above since then "
              f"{t['windows_at_or_above_after_first']}, sustained from {t['sustained_from'] or 'never'}")
    print(f"target: >= {TARGET_SHARE:.0%} of oracle within {TARGET_DECISIONS:,} decisions: "
          f"{'MET' if met else 'MISSED'}")
    print()
    print(print_cross_check(check))
    print()
    from bench.ope import format_table
    print(format_table(res["ope"]))

    decide = summarise_ms(o.decide_s for o in outcomes)
    payload = {
        "placement": PLACEMENT, "policy": res["policy"], "policy_params": res["policy_params"],
        "config": str(Path(res["config"]).relative_to(REPO)) if Path(res["config"]).is_relative_to(REPO)
        else res["config"],
        "holdout_policy": "affinity_popularity",
        "decisions": n, "visitors": res["visitors"], "seconds": round(res["elapsed"], 1),
        "decisions_per_s": round(n / res["elapsed"], 1), "concurrency": args.concurrency, "rate_cap": args.rate,
        "events_posted": res["counters"].events_posted, "clicks_posted": res["counters"].clicks_posted,
        "http_errors": res["counters"].http_errors,
        "decide_latency_ms_client": decide, "decide_budget_ms": args.decide_budget_ms or 25.0,
        "think_time_s": [0.5, 1.5], "warmup_s": args.warmup,
        "event_to_profile_lag_s": summarise_ms(lag for _, lag in res["freshness"]),
        "personalised_share": sum(o.personalised for o in outcomes) / n,
        "degraded_share": sum(o.degraded for o in outcomes) / n,
        "events_post_latency_ms_client": summarise_ms(res["counters"].event_post_s),
        "tastes": [asdict(t) for t in TASTES],
        "click_model": {"best": P_BEST, "favourite_bestseller": P_FAVOURITE_BESTSELLER,
                        "favourite_other": P_FAVOURITE_OTHER, "second_bestseller": P_SECOND_BESTSELLER,
                        "second_other": P_SECOND_OTHER, "other": P_OTHER, "clickiness": [0.6, 1.4],
                        "mobile_factor": MOBILE_FACTOR},
        "windows": rows, "target": {**target, "decisions_limit": TARGET_DECISIONS, "met": met},
        "experiments_cross_check": check, "experiments_endpoint": res["experiment"], "ope": res["ope"],
        "totals": {
            arm: {"decisions": len(os_), "ctr": sum(o.clicked for o in os_) / len(os_),
                  "expected_ctr": sum(o.p_shown for o in os_) / len(os_),
                  "oracle_expected_ctr": sum(o.p_best for o in os_) / len(os_),
                  "regret": sum(o.p_best - o.p_shown for o in os_)}
            for arm in ("learning", "control") if (os_ := [o for o in outcomes if o.arm == arm])
        },
    }
    # a run with another learning-arm policy does not overwrite the reference result
    name = "simulator" if not (args.policy or args.policy_params) else f"simulator-{res['policy']}"
    path = write_result(name, payload, args.quick)
    print(f"\nwrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
