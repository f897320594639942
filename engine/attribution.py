"""Attribution of conversions to the decisions, actions and channels shown before them, in the stream.

A *touch* is an ``impression`` or a ``click`` that names an ``action_id`` (and usually the ``decision_id`` that
chose it). A *conversion* is a ``purchase`` (its ``value`` is the revenue) or an event of a configured goal type
(``[attribution] goals``; ``properties.value`` when it has one). Each person keeps a bounded list of their
touches (``touch:{<shard>}:<subject>``: at most ``max_touches``, expiring with the window); a conversion gives
each model's credit (1 conversion, and its value) to the touches of the last ``window_hours``:

* ``last_touch``: all to the last touch;
* ``linear``: the same share to each touch;
* ``position_based``: 40% to the first, 40% to the last, 20% shared by those between (two touches: 50/50).

The credit goes to counters per (action, channel, placement, holdout arm): impressions, clicks, conversions
and revenue per model. They are spread over ``SHARDS`` hashes ``attr:{<shard>}`` by the person's shard, and
summed on read (``AttributionStore.counters``), so no key is written by every event. The person's touch list
shares the shard's hash tag, so one script (``lua/attribution.lua``) writes both atomically: with the offset
guard and the event-id tokens it keeps, a redelivered event (the worker's at-least-once delivery) is never
counted twice and a counted event never lost (docs/attribution.md, "Guarantee").

Counters are bounded: an action or placement the configuration does not declare is counted as ``other``,
a channel outside ``CHANNELS`` as ``other``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine.config import AttributionSettings, EngineConfig
from engine.faults import is_infrastructure
from engine.layout import ATTRIBUTION_SHARDS as SHARDS
from engine.layout import attribution_counters_key as counters_key
from engine.layout import attribution_shard as shard_of
from engine.layout import touches_key

ATTRIBUTION_LUA = resources.files("engine").joinpath("lua/attribution.lua").read_text()
#: Event-id tokens a touch list remembers (``lua/attribution.lua`` DEDUP).
DEDUP_TOKENS = 64
#: Where a touch can happen (the ``impression`` event's ``channel`` enum); anything else counts as ``other``.
CHANNELS = ("web", "app", "email", "push", "sms", "in_app")
DEFAULT_CHANNEL = "web"
OTHER = "other"
#: Model name -> the letter the script knows it by.
MODELS = {"last_touch": "l", "linear": "n", "position_based": "p"}
MODEL_NAMES = {v: k for k, v in MODELS.items()}
#: Separator of a counter field's parts (whitespace: never part of a configured id).
SEP = "\x1f"
IMPRESSION, CLICK, CONVERSION, MERGED = "i", "k", "c", "m"


def counter_field(action: str, channel: str, placement: str, arm: str, metric: str) -> str:
    """``metric``: ``i`` impressions, ``k`` clicks, ``c:<model letter>`` conversions, ``r:<letter>`` revenue,
    ``q:<letter>`` the sum of the squares of the revenue credits (for the variance of revenue per impression)."""
    return SEP.join((action, channel, placement, arm, metric))


def credit_shares(model: str, n: int) -> list[float]:
    """The share of a conversion each of ``n`` touches (oldest first) gets; what ``lua/attribution.lua`` gives.

    >>> credit_shares("last_touch", 3), credit_shares("linear", 4)
    ([0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25])
    >>> credit_shares("position_based", 4), credit_shares("position_based", 2), credit_shares("position_based", 1)
    ([0.4, 0.1, 0.1, 0.4], [0.5, 0.5], [1.0])
    """
    if n <= 0:
        return []
    if model == "last_touch":
        return [0.0] * (n - 1) + [1.0]
    if model == "linear":
        return [1.0 / n] * n
    if model != "position_based":
        raise ValueError(f"unknown attribution model {model!r}")
    if n <= 2:
        return [1.0 / n] * n
    return [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4]


def channel_of(properties: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """``properties.channel``, else ``context.channel``, else web; outside ``CHANNELS``: ``other``.

    >>> channel_of({"channel": "email"}, {}), channel_of({}, {"channel": "app"}), channel_of({}, {})
    ('email', 'app', 'web')
    >>> channel_of({"channel": "fax"}, {})
    'other'
    """
    ch = properties.get("channel") or context.get("channel") or DEFAULT_CHANNEL
    return ch if ch in CHANNELS else OTHER


def conversion_value(event_type: str, properties: Mapping[str, Any]) -> float:
    """A purchase's ``value`` (its revenue), a goal's ``value`` when it is a finite number >= 0, else 0.

    >>> conversion_value("purchase", {"value": 30}), conversion_value("signup", {})
    (30.0, 0.0)
    >>> conversion_value("x", {"value": "9"}), conversion_value("x", {"value": -1})
    (0.0, 0.0)
    """
    v = properties.get("value")
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        return 0.0
    return float(v)


_METRICS = {"c": "conversions:", "r": "revenue:", "q": "revenue_squares:"}


@dataclass(frozen=True, slots=True)
class Row:
    """One row of counters: where a touch happened and which arm of its placement's holdout saw it."""

    action: str
    channel: str
    placement: str
    arm: str


def read_counters(hashes: Sequence[Mapping[str, str]]) -> tuple[dict[Row, dict[str, float]], dict[str, float]]:
    """Sum the shards' fields: per row its metrics (``impressions``, ``clicks``, ``conversions:<model>``,
    ``revenue:<model>``, ``revenue_squares:<model>``), and the totals (``conversions``, ``revenue``,
    ``unattributed_conversions``, ``unattributed_revenue``).

    >>> rows, totals = read_counters([{counter_field("a1", "web", "home", "learning", "i"): "2", "all:c": "1"},
    ...                               {counter_field("a1", "web", "home", "learning", "c:l"): "1"}])
    >>> rows[Row("a1", "web", "home", "learning")], totals["conversions"]
    ({'impressions': 2.0, 'conversions:last_touch': 1.0}, 1.0)
    """
    rows: dict[Row, dict[str, float]] = {}
    totals = {"conversions": 0.0, "revenue": 0.0, "unattributed_conversions": 0.0, "unattributed_revenue": 0.0}
    names = {"all:c": "conversions", "all:r": "revenue", "u:c": "unattributed_conversions",
             "u:r": "unattributed_revenue"}
    for h in hashes:
        for f, v in h.items():
            if f in names:
                totals[names[f]] += float(v)
                continue
            parts = f.split(SEP)
            if len(parts) != 5:
                continue
            metric = parts[4]
            if metric == IMPRESSION:
                name = "impressions"
            elif metric == CLICK:
                name = "clicks"
            elif metric[:2] in ("c:", "r:", "q:") and metric[2:] in MODEL_NAMES:
                name = _METRICS[metric[0]] + MODEL_NAMES[metric[2:]]
            else:
                continue
            m = rows.setdefault(Row(*parts[:4]), {})
            m[name] = m.get(name, 0.0) + float(v)
    return rows, totals


@dataclass(slots=True)
class PersonBatch:
    """One person's attribution events of a batch, in stream order (the script's flat array)."""

    subject: str
    topic: str
    partition: int
    events: list[Any]
    #: the offset guard's field (default ``<topic>:<partition>``; merges keep one of their own)
    guard: str | None = None


class AttributionStore:
    """Redis side: apply people's batches (``lua/attribution.lua``), read the counters."""

    def __init__(self, redis: aioredis.Redis, settings: AttributionSettings) -> None:
        self.redis, self.settings = redis, settings
        self._sha: str | None = None
        self._models = "".join(MODELS[m] for m in settings.models)

    async def apply(self, batches: Sequence[PersonBatch]) -> list[Any]:
        """One pipelined round trip of script calls; a call the script refused has its error in its place."""
        import orjson

        if not batches:
            return []
        s = self.settings
        ttl, window_ms = str(max(1, math.ceil(s.window_hours * 3600))), str(round(s.window_hours * 3_600_000))
        for attempt in (0, 1):
            if self._sha is None:
                self._sha = await self.redis.script_load(ATTRIBUTION_LUA)
            pipe = self.redis.pipeline(transaction=False)
            for b in batches:
                pipe.execute_command(  # not pipe.evalsha: a cluster pipeline refuses that name, not the command
                    "EVALSHA", self._sha, 2, touches_key(b.subject), counters_key(shard_of(b.subject)),
                    b.guard or f"{b.topic}:{b.partition}", ttl, str(s.max_touches), window_ms, self._models,
                    orjson.dumps(b.events).decode())
            replies = await pipe.execute(raise_on_error=False)
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                return replies
            if not attempt and any(isinstance(e, NoScriptError) for e in errors):
                self._sha = None  # Redis restarted or flushed its scripts: the calls that failed wrote nothing
                continue
            infra = next((e for e in errors if is_infrastructure(e)), None)
            if infra is not None:
                raise infra
            return replies
        raise AssertionError("unreachable")

    async def counters(self) -> tuple[dict[Row, dict[str, float]], dict[str, float]]:
        """Every shard's counters, summed (one pipelined round trip of ``SHARDS`` HGETALLs)."""
        pipe = self.redis.pipeline(transaction=False)
        for i in range(SHARDS):
            pipe.hgetall(counters_key(i))
        return read_counters(cast(list[dict[str, str]], await pipe.execute()))


def enabled(config: EngineConfig) -> bool:
    return config.attribution.enabled
