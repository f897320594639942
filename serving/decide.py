"""``POST /v1/decide``: the hot path, from request bytes to a ranked answer.

1. parse and check the request (orjson, no per-request Pydantic);
2. read the visitor's profile: one Redis pipeline, under a hard time budget;
3. filter the placement's eligible actions, score, rank, cut to ``n``;
4. answer. If Redis is slow or down, or the process already runs as many decisions as its admission limit
   allows (overload: see ``DecideFastPath`` and ``serving.admission``), the answer is the non-personalised
   ranking with ``"degraded": true`` - never a 5xx.

The request is served by :class:`DecideFastPath` (plain ASGI, before FastAPI's routing), the answer's static
parts (each action's id, title, category and payload) are encoded once per action, and the decision record
is buffered for a batched send (:mod:`serving.decision_log`).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine import contact_policy, timing
from engine.config import BASELINE_POLICY, Action, EngineConfig
from engine.consent import personalisation_allowed
from engine.decisions import CONTROL_ARM, holdout_arm, new_decision_id, request_context_features
from engine.features import Profile, RawProfile, context_features, decode
from engine.layout import TIMEZONE_FIELD, anonymous_profile_key, identity_key, profile_key
from engine.policies import Candidate
from serving import auth, explain, nba
from serving.admission import queued_seconds
from serving.asgi import BodyTooLarge, is_decide, read_limited, send_json
from serving.services import Services

router = APIRouter()
MAX_N = 100
#: Largest ``/v1/decide`` body (bytes): refused (413) while it is read. A request carries ids and a small
#: page context; the bounds below keep its parse and ranking within the catalogue's size.
MAX_BODY_BYTES = 64 * 1024
#: Members of ``context``, and the length of a string value in it
MAX_CONTEXT_MEMBERS = 32
MAX_CONTEXT_CHARS = 256
MAX_ID_CHARS = 128


class DecideRequestError(ValueError):
    pass


@dataclass(slots=True)
class DecideRequest:
    customer_id: str | None
    anonymous_id: str | None
    placement: str
    n: int
    candidates: list[str] | None
    context: dict[str, Any]
    #: add why each candidate was shown, ranked lower or left out (``serving.explain``)
    explain: bool = False


def parse_decide_request(body: bytes, config: EngineConfig) -> DecideRequest:
    """Check a request against what ``decide_openapi`` documents; ``DecideRequestError`` names the field.

    >>> from engine.config import load_config
    >>> from engine.settings import REPO_ROOT
    >>> config = load_config(REPO_ROOT / "config" / "engine.toml")
    >>> parse_decide_request(b'{"placement": "home_hero", "n": 2.0}', config).n
    2
    >>> parse_decide_request(b'{"placement": "home_hero", "candidates": ["promo-winter-jackets",'
    ...                      b' "promo-winter-jackets"]}', config)
    Traceback (most recent call last):
        ...
    serving.decide.DecideRequestError: candidates: 'promo-winter-jackets' is repeated
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecideRequestError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DecideRequestError("body must be a JSON object")
    cid, anon = data.get("customer_id"), data.get("anonymous_id")
    for name, v in (("customer_id", cid), ("anonymous_id", anon)):
        if v is not None and (not isinstance(v, str) or not v or len(v) > MAX_ID_CHARS):
            raise DecideRequestError(f"{name}: must be a non-empty string of at most {MAX_ID_CHARS} characters")
    placement = data.get("placement")
    if not isinstance(placement, str) or placement not in config.placements:
        raise DecideRequestError(
            f"placement: unknown placement {_short(placement)}; known: {', '.join(sorted(config.placements))}"
        )
    n = data.get("n", config.placements[placement].max_items)
    if isinstance(n, float) and n.is_integer():  # JSON Schema's "integer": 95.0 is one
        n = int(n)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise DecideRequestError(f"n: must be an integer from 1 to {MAX_N}")
    candidates = data.get("candidates")
    if candidates is not None:
        candidates = _candidates(candidates, config)
    context = data.get("context")
    if context is None:
        context = {}
    else:
        _check_context(context)
        if "timezone" in context:  # next-best action: contact hours in the customer's time zone
            _check_timezone(context["timezone"])
    explain = data.get("explain", False)
    if not isinstance(explain, bool):
        raise DecideRequestError("explain: must be true or false")
    return DecideRequest(cid, anon, placement, n, candidates, context, explain)


def _candidates(candidates: Any, config: EngineConfig) -> list[str]:
    """Distinct known action ids, no more than the catalogue holds (each check O(len), before any ranking)."""
    if not isinstance(candidates, list):
        raise DecideRequestError("candidates: must be a list of action ids")
    if len(candidates) > len(config.actions):
        raise DecideRequestError(f"candidates: {len(candidates)} ids, more than the {len(config.actions)} "
                                 "actions of the catalogue")
    if not all(isinstance(c, str) for c in candidates):
        raise DecideRequestError("candidates: must be a list of action ids")
    unknown = [c for c in candidates if c not in config.actions]
    if unknown:
        raise DecideRequestError(f"candidates: unknown action ids {unknown[:5]}")
    if len(set(candidates)) < len(candidates):
        seen: set[str] = set()
        repeated = next(c for c in candidates if c in seen or seen.add(c))  # type: ignore[func-returns-value]
        raise DecideRequestError(f"candidates: {_short(repeated)} is repeated")
    return candidates


def _check_context(context: Any) -> None:
    if not isinstance(context, dict):
        raise DecideRequestError("context: must be an object")
    if len(context) > MAX_CONTEXT_MEMBERS:
        raise DecideRequestError(f"context: at most {MAX_CONTEXT_MEMBERS} members, got {len(context)}")
    for key, value in context.items():
        if isinstance(value, str):
            if len(value) > MAX_CONTEXT_CHARS:
                raise DecideRequestError(f"context.{key[:40]}: at most {MAX_CONTEXT_CHARS} characters")
        elif value is not None and not isinstance(value, int | float | bool):
            raise DecideRequestError(f"context.{key[:40]}: must be a string, number, boolean or null")


def _check_timezone(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise DecideRequestError("context.timezone: must be an IANA time zone name (e.g. Europe/Paris)")
    try:
        timing.zone(value)
    except ValueError as exc:
        raise DecideRequestError(f"context.timezone: {exc}") from None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def eligible_actions(req: DecideRequest, config: EngineConfig, now: float,
                     segments: frozenset[str] = frozenset()) -> list[Action]:
    """The candidates that may be shown now: valid at ``now`` and, for an action with an audience, to a
    visitor of these segments."""
    always, timed, ordered, gated = _placement_actions(config, req.placement)
    ids = req.candidates if req.candidates is not None else ordered
    if not timed:  # the usual case: no action of the placement has a validity period
        out = [a for a in map(always.get, ids) if a is not None]
    else:
        out = []
        for c in ids:
            a = always.get(c) or timed.get(c)
            if a is not None and a.is_valid_at(now):
                out.append(a)
    if gated:
        out = [a for a in out if a.audience is None or a.audience.admits(segments)]
    return out


_Pools = tuple[dict[str, Action], dict[str, Action], tuple[str, ...], bool]
_PLACEMENT_ACTIONS: dict[tuple[int, str], tuple[EngineConfig, _Pools]] = {}


def _placement_actions(config: EngineConfig, placement: str) -> _Pools:
    """The placement's actions by id: those always valid, those with a validity period (checked per request),
    every id in configuration order, and whether any has an audience. Built once per configuration."""
    hit = _PLACEMENT_ACTIONS.get((id(config), placement))
    if hit is not None and hit[0] is config:
        return hit[1]
    if len(_PLACEMENT_ACTIONS) > 256:  # configurations swapped in by the catalogue (engine/catalogue_watch.py)
        _PLACEMENT_ACTIONS.clear()
    actions = config.actions_for(placement)
    always = {a.id: a for a in actions if a.valid_from is None and a.valid_to is None}
    timed = {a.id: a for a in actions if a.id not in always}
    pools = (always, timed, tuple(a.id for a in actions), any(a.audience is not None for a in actions))
    _PLACEMENT_ACTIONS[id(config), placement] = (config, pools)
    return pools


def _discard(fut: asyncio.Future[Any]) -> None:
    """A reply nobody will read: cancel it, or mark its error as seen (no "never retrieved" warning)."""
    if not fut.done():
        fut.cancel()
    elif not fut.cancelled():
        fut.exception()


async def read_profile(svc: Services, req: DecideRequest, now: float) -> Profile | None:
    """A known customer is one HGETALL; an anonymous visitor's read also asks the identity map, and a
    second read follows only when that anonymous id was identified. The commands go through
    ``svc.reads`` (serving/read_batch.py): concurrent decisions share one pipeline per event-loop turn."""
    reads = svc.reads
    if reads is None:  # not started (tests that build Services by hand)
        raise RuntimeError("Services.reads is not set")
    if req.customer_id is not None:
        subject = req.customer_id
        raw = RawProfile(hash=await reads.call("HGETALL", profile_key(subject)))
    elif req.anonymous_id is not None:
        subject = req.anonymous_id
        # same pipeline as the identity lookup; an anonymous id never reads a customer's profile by itself
        profile_reply = reads.call("HGETALL", anonymous_profile_key(subject))
        try:
            customer = await reads.call("GET", identity_key(subject))
        except BaseException:
            _discard(profile_reply)
            raise
        if customer:
            _discard(profile_reply)  # the customer's profile is read instead
            subject = customer
            raw = RawProfile(hash=await reads.call("HGETALL", profile_key(subject)))
        else:
            raw = RawProfile(hash=await profile_reply)
    else:
        return None
    return decode(subject, raw, svc.config, now)


def decide_request_schema(config: EngineConfig | None) -> dict[str, Any]:
    """The request body ``parse_decide_request`` takes, as JSON Schema: with ``config``, the placements and
    action ids it knows (the OpenAPI the API serves is built with its configuration)."""
    ids = sorted(config.actions) if config is not None else None
    candidate: dict[str, Any] = {"type": "string", "enum": ids} if ids else {"type": "string"}
    candidates: dict[str, Any] = {
        "type": ["array", "null"], "items": candidate, "uniqueItems": True,
        "description": "restrict to these action ids: distinct, known, no more than the catalogue holds"}
    if ids:
        candidates["maxItems"] = len(ids)
    placement: dict[str, Any] = {"type": "string", "description": "a placement id from the configuration"}
    if config is not None:
        placement["enum"] = sorted(config.placements)
    visitor = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ID_CHARS}
    return {
        "type": "object",
        "required": ["placement"],
        "properties": {
            "customer_id": visitor,
            "anonymous_id": visitor,
            "placement": placement,
            "n": {"type": "integer", "minimum": 1, "maximum": MAX_N,
                  "description": "how many actions (default: the placement's max_items)"},
            "candidates": candidates,
            "explain": {"type": "boolean", "description": "add why each candidate was shown, ranked lower or "
                                                          "left out (the answer's explanation)"},
            "context": {
                "type": ["object", "null"], "maxProperties": MAX_CONTEXT_MEMBERS,
                "description": "page context: channel, locale, device, segment...",
                "additionalProperties": {"type": ["string", "number", "boolean", "null"],
                                         "maxLength": MAX_CONTEXT_CHARS},
            },
        },
    }


DECIDE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"At most {MAX_BODY_BYTES} bytes.",
        "content": {"application/json": {"schema": decide_request_schema(None)}},
    },
    "responses": {
        "200": {"description": "ranked actions", "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["decision_id", "placement", "actions", "policy", "model_version", "holdout_arm",
                         "propensity", "personalised", "degraded"],
            "properties": {
                "decision_id": {"type": "string"},
                "placement": {"type": "string"},
                "actions": {"type": "array", "items": {"type": "object", "required": ["action_id", "score"],
                                                       "properties": {
                    "action_id": {"type": "string"}, "score": {"type": "number"},
                    "channel": {"type": "string", "enum": ["web", "email", "push", "sms"],
                                "description": "next-best-action placements: the channel to use"},
                    "send_at": {"type": "string", "format": "date-time", "description": "channels other "
                                "than web: when to send (ISO 8601 UTC), inside the customer's contact hours"},
                    "title": {"type": "string"}, "category": {"type": "string"},
                    "payload": {"type": "object"}}}},
                "policy": {"type": "string"},
                "model_version": {"type": "string"},
                "holdout_arm": {"type": "string", "enum": ["learning", "control"]},
                "propensity": {"type": "number", "description": "probability the policy had of "
                               "showing the top action first (for off-policy evaluation)"},
                "personalised": {"type": "boolean"},
                "explanation": explain.EXPLANATION_SCHEMA,
                "segments": {"type": "array", "items": {"type": "string"},
                             "description": "the visitor's segments as of this decision (configured "
                                            "[[segment]]; empty when not personalised)"},
                "reason": {"type": "string", "enum": ["below_threshold", "capped", "contact_pressure",
                                                      "all_suppressed", "no_eligible_action"],
                           "description": "why actions is empty (\"nothing now\"): below_threshold (the best "
                           "expected value is under the placement's min_expected_value), capped (frequency caps), "
                           "contact_pressure (the contact-pressure limit), all_suppressed (purchased, in the "
                           "cart, shown without a click, dismissed), no_eligible_action (anything else: "
                           "no candidate passed validity and audience, consent, contact hours, or a mix); "
                           "candidates out by validity or audience do not decide the reason"},
                "degraded": {"type": "boolean", "description": "true when profile data was unavailable "
                             "within the time budget, or the API shed the request under overload, and the "
                             "ranking is non-personalised"},
            },
        }}}},
        "400": {"description": "invalid request, with the reason"},
        "401": {"description": "no API key, or an unknown one"},
        "403": {"description": "the key's origins do not include the page's Origin"},
        "413": {"description": f"body larger than {MAX_BODY_BYTES} bytes"},
    },
}


def document_decide(openapi: dict[str, Any], config: EngineConfig) -> None:
    """Put the configuration's placements and action ids into the served OpenAPI's decide request."""
    body = openapi["paths"]["/v1/decide"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = decide_request_schema(config)


@dataclass(slots=True)
class Ranking:
    actions: list[tuple[Action, float]]
    propensity: float
    policy: str
    model_version: str
    arm: str
    shown_features: dict[str, float]
    #: the visitor's segments as of the decision (empty when not personalised)
    segments: list[str] = field(default_factory=list)
    # next-best action (serving/nba.py): per shown action its channel and send_at, what arbitration weighed
    # per candidate, the candidates no channel could reach, and why nothing is shown (below_threshold)
    delivery: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    arbitration: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


def rank(svc: Services, req: DecideRequest, profile: Profile | None, personalised: bool, now: float,
         rng: random.Random) -> tuple[Ranking, dict[str, float]]:
    """Choose the arm and policy, and rank. Returns the ranking and the context it was scored on."""
    placement = svc.config.placements[req.placement]
    visitor = req.customer_id or req.anonymous_id or ""
    arm = holdout_arm(visitor, req.placement, placement.learning.holdout_share)
    policy_name = placement.learning.holdout_policy if arm == CONTROL_ARM else placement.learning.policy
    context = context_features(profile, now) if personalised and profile is not None else {"bias": 1.0}
    context.update(request_context_features(req.context))
    segments = svc.segments.members(profile, now) if personalised and svc.segments else []
    if personalised and profile is not None and svc.config.clusters.enabled:  # behavioural clusters
        cluster = svc.models.cluster_segment(profile, now)
        if cluster is not None:
            segments = [*segments, cluster]
    actions = eligible_actions(req, svc.config, now, frozenset(segments))
    # the contact policy (engine/contact_policy.py): suppression and caps before scoring, on the profile read
    excluded: dict[str, contact_policy.Exclusion] = {}
    view = None
    if svc.config.contact_policy.enabled and personalised and profile is not None:
        view = policy_view(svc.config, req, profile, now)
        actions, excluded = contact_policy.eligible(view, actions, None if placement.channels else "web")
    collaborative = collaborative_scores(svc, profile, actions) if personalised and profile is not None else {}
    if nba.applies(placement):  # channels, send time, value arbitration
        built = svc.candidates
        cands = [with_collaborative(built[a.id], collaborative.get(a.id)) for a in actions]
        out = nba.decide(svc, req, placement, policy_name, profile, personalised, context, actions, cands,
                         collaborative, now, rng, view)
        top_features = dict(with_collaborative(built[out.top], collaborative.get(out.top)).features) if out.top else {}
        version = svc.scorer.version if policy_name == BASELINE_POLICY else str(
            svc.models.get(req.placement, policy_name).version)
        name = svc.scorer.name if policy_name == BASELINE_POLICY else policy_name
        reason = out.reason or (None if out.actions else contact_policy.nothing_now(
            [c for c, _ in excluded.values()] + list(out.categories.values())))
        return Ranking(out.actions, out.propensity, name, version, arm, top_features, segments, out.delivery,
                       out.details, {**{k: v for k, (_, v) in excluded.items()}, **out.excluded}, reason), context
    unreachable = {k: v for k, (_, v) in excluded.items()}
    # the reason is what left out the candidates this customer could have had: those out by validity or
    # audience never were, so caps that took the rest are the reason (capped), not "no eligible action"
    reason = None if actions else contact_policy.nothing_now([c for c, _ in excluded.values()])
    if policy_name == BASELINE_POLICY:
        affinities = profile.affinities if personalised and profile is not None else None
        ranked = svc.scorer.rank(actions, affinities, svc.popularity, collaborative)[: req.n]
        top = ranked[0][0].id if ranked else None
        shown = with_collaborative(svc.candidates[top], collaborative.get(top)).features if top else {}
        return Ranking(ranked, 1.0, svc.scorer.name, svc.scorer.version, arm, dict(shown), segments,
                       unreachable=unreachable, reason=reason), context
    model = svc.models.get(req.placement, policy_name)
    by_id = {a.id: a for a in actions}
    built = svc.candidates  # one Candidate per action, built at start-up
    if collaborative:
        candidates = [with_collaborative(built[a.id], collaborative.get(a.id)) for a in actions]
    else:
        candidates = [built[a.id] for a in actions]
    result = model.policy.rank(context, candidates, req.n, rng)
    ranked = [(by_id[aid], score) for aid, score in zip(result.action_ids, result.scores, strict=True)]
    top = result.top
    shown = dict(with_collaborative(built[top], collaborative.get(top)).features) if top is not None else {}
    return Ranking(ranked, result.propensity, policy_name, str(model.version), arm, shown, segments,
                   unreachable=unreachable, reason=reason), context


def policy_view(config: EngineConfig, req: DecideRequest, profile: Profile, now: float) -> contact_policy.PolicyView:
    """The contact policy for this customer: calendar periods in their time zone (``engine.timing``)."""
    tz = timing.customer_zone(req.context, profile.raw.get(TIMEZONE_FIELD), config.contact.default_timezone)
    return contact_policy.PolicyView(config.contact_policy, profile.raw, profile.cart, now, tz)


def collaborative_scores(svc: Services, profile: Profile, actions: list[Action]) -> dict[str, float]:
    """Co-visitation score per action id, from the visitor's recent items (most recent first)."""
    signal = svc.models.covisit()
    recent = next(iter(profile.recent.values()), None) if profile.recent else None
    if signal is None or not recent:
        return {}
    by_item = {a.item_id: a.id for a in actions if a.item_id}
    scores = signal.candidate_scores(recent, list(by_item))
    return {by_item[item]: s for item, s in scores.items()}


def with_collaborative(candidate: Candidate, score: float | None) -> Candidate:
    if not score:
        return candidate
    return Candidate(candidate.action_id, {**candidate.features, "covisit": score})


def decision_record(decision_id: str, req: DecideRequest, ranking: Ranking, context: dict[str, float],
                    candidates: list[str], degraded: bool, now: float) -> dict[str, Any]:
    """What the learner needs later: the context as used for scoring, what was shown, with which odds."""
    return {
        "decision_id": decision_id, "schema_version": 1,
        "customer_id": req.customer_id, "anonymous_id": req.anonymous_id, "placement": req.placement,
        "context": context, "candidates": candidates,
        "actions": [{"action_id": a.id, "score": float(s)} for a, s in ranking.actions] if not ranking.delivery else [
            {"action_id": a.id, "score": float(s), "channel": ranking.delivery[a.id][0],  # next-best action
             **({"send_at": ranking.delivery[a.id][1]} if ranking.delivery[a.id][1] else {})}
            for a, s in ranking.actions],
        "propensity": ranking.propensity, "policy": ranking.policy, "model_version": ranking.model_version,
        "holdout_arm": ranking.arm, "degraded": degraded, "timestamp": int(now * 1000),
        "action_features": ranking.shown_features, "segments": ranking.segments,
        **({"reason": ranking.reason} if ranking.reason else {}),
    }


@router.post("/v1/decide", openapi_extra=DECIDE_OPENAPI, summary="Rank actions for a visitor",
             dependencies=[auth.require(auth.PUBLIC)])
async def decide(request: Request) -> Response:
    """The documented route. Requests normally never reach it: :class:`DecideFastPath` answers
    ``POST /v1/decide`` before FastAPI's routing; both run :func:`decide_bytes`."""
    try:
        raw = await read_limited(request.scope, request.receive, MAX_BODY_BYTES)
    except BodyTooLarge as exc:
        return Response(orjson.dumps({"error": str(exc)}), status_code=413, media_type="application/json")
    status, body = await decide_bytes(request.app.state.services, raw)
    return Response(body, status_code=status, media_type="application/json")


async def decide_bytes(svc: Services, body: bytes, shed: bool = False) -> tuple[int, bytes]:
    """From request bytes to (HTTP status, answer bytes); never raises for Redis or Kafka trouble.

    ``shed``: the API is overloaded (see ``DecideFastPath``): no profile read, the non-personalised ranking,
    ``"degraded": true``."""
    metrics = svc.metrics
    started = time.perf_counter()
    now = time.time()
    try:
        req = parse_decide_request(body, svc.config)
    except DecideRequestError as exc:
        metrics.decisions.inc("rejected")
        return 400, orjson.dumps({"error": str(exc)})

    degraded = shed
    profile: Profile | None = None
    if not shed and (req.customer_id is not None or req.anonymous_id is not None):
        remaining = svc.settings.decide_budget_ms / 1000.0 - (time.perf_counter() - started)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for creates a task per request (seen in profiles)
            async with asyncio.timeout(max(remaining, 0.001)):
                profile = await read_profile(svc, req, now)
        except Exception as exc:  # timeout, connection refused, anything: fall back, never 5xx
            degraded = True
            metrics.errors.inc(f"profile_read:{type(exc).__name__}")

    # consent (engine/consent.py): opt_in personalises only after the visitor's consent, opt_out until withdrawn
    allowed = personalisation_allowed(profile.consent if profile is not None else {}, svc.config.privacy.consent_mode)
    personalised = profile is not None and profile.exists and allowed
    ranking, context = rank(svc, req, profile, personalised, now, _rng)
    decision_id = new_decision_id()
    parts = svc.answer_parts
    delivery = ranking.delivery
    if delivery:  # a next-best-action placement: each action's channel (and send_at)
        actions = b",".join([parts[a.id][0] + orjson.dumps(round(float(s), 6)) + nba.answer_extra(delivery[a.id])
                             + parts[a.id][1] for a, s in ranking.actions])
    else:
        actions = b",".join([parts[a.id][0] + orjson.dumps(round(float(s), 6)) + parts[a.id][1]
                             for a, s in ranking.actions])
    answer = orjson.dumps({
        "decision_id": decision_id,
        "placement": req.placement,
        "actions": orjson.Fragment(b"[" + actions + b"]"),
        "policy": ranking.policy,
        "model_version": ranking.model_version,
        "holdout_arm": ranking.arm,
        "propensity": float(ranking.propensity),
        "personalised": personalised,
        "degraded": degraded,
        "segments": ranking.segments,
        **({"reason": ranking.reason} if ranking.reason else {}),
        **({"explanation": explain.explanation(
            svc, req, ranking, profile, personalised, context,
            collaborative_scores(svc, profile, eligible_actions(req, svc.config, now, frozenset(ranking.segments)))
            if personalised and profile is not None else {}, now)} if req.explain else {}),
    })
    visitor = req.customer_id or req.anonymous_id
    # no consent to personalisation: no decision record (no reward join, no context kept for the visitor);
    # "nothing now" is a decision too: logged with its reason (the reward join counts it per arm)
    if (ranking.actions or ranking.reason) and visitor and allowed:
        candidates = req.candidates if req.candidates is not None else svc.placement_action_ids[req.placement]
        record = decision_record(decision_id, req, ranking, context, candidates, degraded, now)
        record["catalogue_version"] = svc.catalogue_version  # which catalogue it chose from (engine/catalogue.py)
        publish_decision(svc, visitor, record)
    metrics.decisions.inc("shed" if shed else "degraded" if degraded else "ok")
    metrics.decide_latency.observe(time.perf_counter() - started)
    return 200, answer


def publish_decision(svc: Services, visitor: str, record: dict[str, Any]) -> None:
    """Buffer the decision record: :class:`serving.decision_log.DecisionLog` sends it with others in one
    batch per partition within a few ms; delivery is confirmed in the background, never awaited here."""
    try:
        value = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    except Exception:
        svc.metrics.errors.inc("decision_log")
        return
    assert svc.decision_log is not None
    svc.decision_log.publish(visitor.encode(), value)



def request_queued_seconds(svc: Services, headers: list[tuple[bytes, bytes]]) -> float:
    """The wait before this process read the request, from the proxy's stamp (``DECIDE_QUEUE_HEADER``);
    0 without one. Each stamp read is observed in ``pulse_decide_queue_seconds``."""
    name = svc.queue_header
    if name:
        for key, value in headers:
            if key == name:
                queued = queued_seconds(value, time.time())
                if queued is None:
                    svc.metrics.errors.inc("queue_header")
                    return 0.0
                svc.metrics.decide_queue.observe(queued)
                return queued
    return 0.0


class DecideFastPath:
    """The ASGI app uvicorn serves: ``POST /v1/decide`` is answered here, before FastAPI - no middleware
    stack (FastAPI's telemetry middleware alone looks up a tracer per request), no routing over every route,
    no ``Request``, dependency solving or ``Response`` objects per call. Everything else, including the
    lifespan, goes to the FastAPI ``app`` (whose documented ``/v1/decide`` route runs the same code).

    The API key (any role: ``public`` and up) and the page's origin are checked here too, and CORS is answered
    for the paths a browser may call (``serving.auth.CORS_PATHS``), preflights included."""

    def __init__(self, app: Any) -> None:
        self.app = app
        ring = getattr(getattr(app, "state", None), "keyring", None)
        self.keyring: auth.KeyRing = ring if ring is not None else auth.KeyRing([])
        #: decisions in progress in this process. Requests queue in the event loop, not in a visible queue, so
        #: the number in progress is what says "overloaded": each of them waits for all the others' CPU. Past
        #: the admission limit (``serving.admission``) a new one is shed.
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not is_decide(scope):
            if scope["type"] == "http" and scope["path"] in auth.CORS_PATHS:
                await auth.cors(self.keyring, self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        # one pass over the headers for the key and the origin; no key configured (development): any origin
        authorization = origin = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value
            elif key == b"origin":
                origin = value
        ring = self.keyring
        cors = auth.cors_headers(ring, origin) if origin is not None else None
        if not ring.open:
            caller = ring.check(authorization, origin.decode("latin-1") if origin is not None else None,
                                auth.PUBLIC)
            if isinstance(caller, auth.Denial):
                await send_json(send, caller.status, caller.body, [*caller.headers, *(cors or ())])
                return
        try:
            body = await read_limited(scope, receive, MAX_BODY_BYTES)
        except BodyTooLarge as exc:
            await send_json(send, 413, orjson.dumps({"error": str(exc)}), cors)
            return
        svc = self.app.state.services
        queued = request_queued_seconds(svc, scope["headers"])
        admission = svc.admission
        in_flight = self.in_flight
        shed = admission is not None and not admission.admit(in_flight)
        self.in_flight = in_flight + 1
        started = time.perf_counter()
        try:
            status, answer = await decide_bytes(svc, body, shed=shed)
        finally:
            self.in_flight -= 1
        # a decision degraded by a slow Redis counts too: waiting on Redis makes answers late like waiting on
        # the CPU, and shedding then spares Redis the reads. The wait before the process read the request
        # (stamped by a proxy) counts like the wait inside it.
        if admission is not None and not shed and status == 200:
            if admission.update(queued + time.perf_counter() - started):
                svc.metrics.admission_cuts.inc()
            svc.metrics.admission_limit.value = admission.limit
        await send_json(send, status, answer, cors)


_rng = random.Random()
