"""Next-best action in ``POST /v1/decide``: channel, send time and value arbitration for a placement.

A placement takes this path when it answers channels (``channels = [...]``) or arbitrates by value
(``arbitration``, ``min_expected_value``, or actions with a ``value``/``lever``); every other placement ranks
exactly as before. Per decision, once per channel of the placement (not per action): consent, the customer's
time zone, their best hour (``engine.timing``) and engagement rate (``engine.channels``); then per action its
best reachable channel, an action with none being left out (the explanation says why); then the order
(``engine.arbitration``), cut to ``n``, and "nothing now" (``below_threshold``) when the best expected value is
below the placement's ``min_expected_value``.

The population's hours and channel rates (``pop:{global}:contact``) are read in the background, like
popularity, never per request.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine import arbitration, channels, timing
from engine.config import BASELINE_POLICY, Action
from engine.config.model import Placement
from engine.features import Profile
from engine.layout import CONTACT_PRIOR_LANDMARK, TIMEZONE_FIELD, contact_prior_key, popularity_hash
from engine.policies import Candidate

if TYPE_CHECKING:
    from engine.contact_policy import PolicyView
    from serving.decide import DecideRequest
    from serving.services import Services

#: The "nothing now" reason of a decision whose best expected value is below ``min_expected_value``.
BELOW_THRESHOLD = "below_threshold"


@dataclass(frozen=True, slots=True)
class ContactPrior:
    """The population's activity hours (UTC), weekdays and engagement rate per channel."""

    hours: Sequence[float] = (1.0,) * 24
    days: Sequence[float] = (1.0,) * 7
    rates: Mapping[str, float] = field(default_factory=lambda: channels.population_rates({}))

    @classmethod
    def from_scores(cls, scores: Mapping[str, float]) -> ContactPrior:
        """From the contact zset's members (decayed by one common factor, which shares and rates ignore).

        >>> p = ContactPrior.from_scores({"h9": 3.0, "d0": 2.0, "E:email": 1.0, "I:email": 20.0})
        >>> p.hours[9], p.hours[10], p.days[0], p.rates["email"]
        (3.0, 0.0, 2.0, 0.05)
        """
        return cls([scores.get(f"h{i}", 0.0) for i in range(24)], [scores.get(f"d{i}", 0.0) for i in range(7)],
                   channels.population_rates(scores))


async def refresh_contact_prior(svc: Services) -> None:
    """The contact zset of every popularity shard (one on a single Redis), brought to the newest landmark."""
    shards = svc.store.shards
    pipe = svc.redis.pipeline(transaction=False)
    for shard in range(shards):
        pipe.zrange(contact_prior_key(shard), 0, -1, withscores=True)
        pipe.hget(popularity_hash(shard), CONTACT_PRIOR_LANDMARK)
    replies = await pipe.execute()
    if shards == 1:
        svc.contact_prior = ContactPrior.from_scores({m: float(s) for m, s in replies[0]})
        return
    hl = svc.config.contact.activity_half_life_days * 86400.0
    landmarks = [float(replies[i + 1]) if replies[i + 1] is not None else None for i in range(0, len(replies), 2)]
    newest = max((x for x in landmarks if x is not None), default=0.0)
    scores: dict[str, float] = {}
    for i in range(shards):
        factor = 2.0 ** (((landmarks[i] or newest) - newest) / hl)
        for m, s in replies[2 * i]:
            scores[m] = scores.get(m, 0.0) + float(s) * factor
    svc.contact_prior = ContactPrior.from_scores(scores)


def applies(placement: Placement) -> bool:
    return bool(placement.channels) or placement.arbitration != "policy"


@dataclass(slots=True)
class ChannelState:
    channel: str
    #: None: the channel cannot reach the customer now (``why`` says why)
    send_at: float | None
    rate: float
    why: str | None = None
    #: what left it out: the contact policy's category (``capped``, ``contact_pressure``), ``consent``, else
    #: ``other`` (contact hours)
    category: str = "other"


def channel_states(svc: Services, req: DecideRequest, placement: Placement, profile: Profile | None,
                   now: float, policy: PolicyView | None = None) -> dict[str, ChannelState]:
    """Per channel of the placement: whether it can reach the customer, when, and how they engage with it;
    with the contact policy (``engine.contact_policy``), a capped channel (or any but web under contact
    pressure) is not a candidate."""
    contact = svc.config.contact
    raw: Mapping[str, str] = profile.raw if profile is not None else {}
    consent = profile.consent if profile is not None else {}
    allowed = set(channels.consented(consent, svc.config.privacy.consent_mode, placement.channels))
    prior = svc.contact_prior
    tz = timing.customer_zone(req.context, raw.get(TIMEZONE_FIELD), contact.default_timezone)
    hl = contact.activity_half_life_days * 86400.0
    own_hours, own_days = timing.customer_activity(raw, hl, now)
    hours = timing.mix(own_hours, prior.hours, contact.activity_prior_strength)
    days = timing.mix(own_days, prior.days, contact.activity_prior_strength)
    counts = channels.customer_counts(raw)
    strength = contact.engagement_prior_strength
    business = contact.business_hours if placement.business_hours else None
    out: dict[str, ChannelState] = {}
    for ch in placement.channels:
        engaged, shown = counts.get(ch, (0, 0))
        rate = channels.rate(engaged, shown, prior.rates.get(ch, channels.DEFAULT_RATE), strength)
        if ch not in allowed:
            out[ch] = ChannelState(ch, None, rate, f"consent: marketing_{ch} not given", "consent")
            continue
        if policy is not None and (hit := policy.channel(ch)) is not None:
            out[ch] = ChannelState(ch, None, rate, hit[1], hit[0])
            continue
        if ch == "web":  # the visitor is on the site: shown now, contact hours are for reaching out
            out[ch] = ChannelState(ch, now, rate)
            continue
        at = timing.next_send_at(now, tz, contact.hours.get(ch), placement.business_hours, hours, days,
                                 contact.send_within_hours, business)
        out[ch] = ChannelState(ch, at, rate, None if at is not None else
                               f"contact hours: no open hour for {ch} within {timing.SEARCH_DAYS} days")
    return out


def reachable(actions: Sequence[Action], placement: Placement, states: Mapping[str, ChannelState],
              categories: dict[str, str] | None = None) -> tuple[list[Action], dict[str, ChannelState], dict[str, str]]:
    """The actions with a channel that can reach the customer, each one's best channel, and why the others
    were left out (``categories``: filled with what left each out, for the "nothing now" reason)."""
    kept: list[Action] = []
    chosen: dict[str, ChannelState] = {}
    excluded: dict[str, str] = {}
    # actions share a few channel lists: choose once per list (50 candidates, 4 channels: <= 15 lists)
    best_of: dict[tuple[str, ...], str | None] = {}
    for a in actions:
        offered = a.channels or placement.channels
        key = tuple(offered)
        if key in best_of:
            best = best_of[key]
        else:
            open_ = [c for c in offered if (s := states.get(c)) is not None and s.send_at is not None]
            best = best_of[key] = channels.choose({c: states[c].rate for c in open_}, open_)
        if best is None:
            reasons = sorted({states[c].why or "" for c in offered if c in states})
            excluded[a.id] = "channel: " + ("; ".join(r for r in reasons if r) or "none of its channels is offered")
            if categories is not None:
                # a channel the customer never allowed does not say why now: the ones they allow do
                # (an action none of whose channels the customer allows is theirs never, like an audience rule)
                cats = {states[c].category for c in offered if c in states} - {"consent"} or {"consent"}
                categories[a.id] = cats.pop() if len(cats) == 1 else (
                    "other" if "other" in cats else "contact_pressure")
            continue
        kept.append(a)
        chosen[a.id] = states[best]
    return kept, chosen, excluded


@dataclass(slots=True)
class Outcome:
    actions: list[tuple[Action, float]]
    propensity: float
    top: str | None
    #: action id -> (channel, send_at ISO or None for web)
    delivery: dict[str, tuple[str, str | None]]
    #: action id -> what arbitration weighed (for explanations)
    details: dict[str, dict[str, Any]]
    excluded: dict[str, str]
    reason: str | None = None
    #: action id -> what left it out (``reachable``'s categories)
    categories: dict[str, str] = field(default_factory=dict)


def decide(svc: Services, req: DecideRequest, placement: Placement, policy_name: str, profile: Profile | None,
           personalised: bool, context: dict[str, float], actions: list[Action], candidates: list[Candidate],
           collaborative: Mapping[str, float], now: float, rng: random.Random,
           policy: PolicyView | None = None) -> Outcome:
    """Channels, then the order by value, cut to ``req.n``; ``candidates``: the policy's, one per action."""
    chosen: dict[str, ChannelState] = {}
    excluded: dict[str, str] = {}
    categories: dict[str, str] = {}
    if placement.channels:
        states = channel_states(svc, req, placement, profile if personalised else None, now, policy)
        keep, chosen, excluded = reachable(actions, placement, states, categories)
        if len(keep) < len(actions):
            ids = {a.id for a in keep}
            candidates = [c for c in candidates if c.action_id in ids]
            actions = keep
    learns_value = placement.learning.reward.conversion_value
    if policy_name == BASELINE_POLICY:
        affinities = profile.affinities if personalised and profile is not None else None
        scores = svc.scorer.score(actions, affinities, svc.popularity, collaborative)
        props = arbitration.shares(scores)
        epsilon = 0.0
        learns_value = False  # the baseline learns nothing: its shares are propensities
    else:
        model = svc.models.get(req.placement, policy_name)
        props = arbitration.estimates(model.policy, context, candidates, learns_value)
        epsilon = float(placement.learning.params.get("epsilon", arbitration.DEFAULT_EPSILON))
    mode = placement.arbitration if placement.arbitration != "policy" else "propensity"
    values = [1.0 if learns_value else a.value for a in actions]
    levers = [a.lever for a in actions]
    result = arbitration.arbitrate([a.id for a in actions], props, values, levers, mode, epsilon, rng)
    details: dict[str, dict[str, Any]] = {}
    if req.explain:  # what arbitration weighed, per candidate: built only when asked
        details = {a.id: {"propensity": round(p, 6), "value": a.value, "lever": a.lever,
                          "expected_value": round(arbitration.expected_value(p, a.value, learns_value), 6),
                          "priority": round(pr, 6)}
                   for a, p, pr in zip(actions, props, result.priorities, strict=True)}
    order = result.order[: req.n]
    ranked = [(actions[i], result.priorities[i]) for i in order]
    delivery = {a.id: (chosen[a.id].channel, None if chosen[a.id].channel == "web" else
                       timing.iso(chosen[a.id].send_at)) for a, _ in ranked if a.id in chosen}
    for aid, (ch, at) in delivery.items() if req.explain else ():
        details[aid].update(channel=ch, send_at=at, channel_rate=round(chosen[aid].rate, 6))
    top = ranked[0][0] if ranked else None
    threshold = placement.min_expected_value
    if top is not None and threshold is not None:
        i = order[0]
        if arbitration.expected_value(props[i], actions[i].value, learns_value) < threshold:
            return Outcome([], 1.0, None, {}, details, excluded, BELOW_THRESHOLD, categories)
    return Outcome(ranked, result.propensity, top.id if top else None, delivery, details, excluded,
                   categories=categories)


def answer_extra(delivery: tuple[str, str | None]) -> bytes:
    """The members an action of a next-best-action answer adds after its score.

    >>> answer_extra(("email", "2025-12-02T18:00:00Z")), answer_extra(("web", None))
    (b',"channel":"email","send_at":"2025-12-02T18:00:00Z"', b',"channel":"web"')
    """
    ch, at = delivery
    return b',"channel":"' + ch.encode() + (b'","send_at":"' + at.encode() + b'"' if at else b'"')
