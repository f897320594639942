"""Which channel: among those a customer consented to and that can reach them, the one they engage with most.

A next-best-action placement declares its channels (``channels = ["web", "email", "push", "sms"]``), an action
the ones it can go out on. A channel is a candidate for a customer when

- they consented to it: the consent purpose ``marketing_<channel>`` (``engine.consent``; ``opt_out`` mode:
  allowed until withdrawn, ``opt_in``: once granted);
- it can reach them: ``web`` is answered now; another channel needs an open contact hour
  (``engine.timing``), its ``send_at``;
- (caps, once declared, come on top: a capped channel is not a candidate).

Engagement per channel is learned in the stream: an ``impression`` with ``properties.channel`` counts one
shown on that channel (``I:<channel>``), a click, feedback or purchase with ``context.channel`` one reward
(``E:<channel>``). A customer's rate is a Beta posterior mean whose prior is the population's rate on that
channel (the same counts summed per batch into ``pop:{global}:contact``) worth
``engagement_prior_strength`` impressions: ``(E + m p0) / (max(I, E) + m)``. The posterior mean, not a
draw: the same customer gets the same channel from one decision to the next (a message series does not hop
between channels), and the explanation can show the figure it chose by.

>>> rate(engaged=0, shown=0, prior=0.02, strength=20)      # a newcomer: the population's rate
0.02
>>> round(rate(engaged=6, shown=10, prior=0.02, strength=20), 3)
0.213
>>> choose({"email": 0.05, "push": 0.12, "web": 0.03}, ["web", "email", "push"])
'push'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.config import OPT_OUT
from engine.layout import CHANNEL_ENGAGED_PREFIX, CHANNEL_SHOWN_PREFIX

Op = list[Any]
CHANNELS = ("web", "email", "push", "sms")
#: Events whose ``context.channel`` says on which channel a customer engaged.
ENGAGEMENT_EVENTS = frozenset({"click", "feedback", "purchase"})
#: The population's rate before any impression was counted on a channel (a neutral Beta(1, 1) mean would say
#: 50%; a rate that low only lets the first real counts decide).
DEFAULT_RATE = 0.05
#: How many impressions the population's rate needs before its own counts outweigh ``DEFAULT_RATE``.
POPULATION_PRIOR = 20.0
_SHOWN = {c: CHANNEL_SHOWN_PREFIX + c for c in CHANNELS}
_ENGAGED = {c: CHANNEL_ENGAGED_PREFIX + c for c in CHANNELS}


def channel_of(event_type: str, properties: Mapping[str, Any], context: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, channel) an event counts on, or None: an impression's ``properties.channel`` (shown), an
    engagement's ``context.channel`` (earned).

    >>> channel_of("impression", {"channel": "email"}, {}), channel_of("click", {}, {"channel": "push"})
    (('I:email', 'email'), ('E:push', 'push'))
    >>> channel_of("click", {}, {"channel": "fax"}), channel_of("page_view", {}, {"channel": "web"})
    (None, None)
    """
    if event_type == "impression":
        c = properties.get("channel")
        return (_SHOWN[c], c) if isinstance(c, str) and c in _SHOWN else None
    if event_type in ENGAGEMENT_EVENTS:
        c = context.get("channel")
        return (_ENGAGED[c], c) if isinstance(c, str) and c in _ENGAGED else None
    return None


def channel_ops(event_type: str, properties: Mapping[str, Any], context: Mapping[str, Any]) -> list[Op]:
    hit = channel_of(event_type, properties, context)
    return [["i", hit[0], 1]] if hit else []


def prior_ops(event_type: str, properties: Mapping[str, Any], context: Mapping[str, Any], ts: float,
              half_life_s: float, key_index: int, landmark: str) -> list[Op]:
    """The same count on the population's zset (decayed like the activity hours: rates of the recent past)."""
    hit = channel_of(event_type, properties, context)
    return [["z", key_index, hit[0], 1.0, ts, half_life_s, 256, landmark]] if hit else []


def customer_counts(h: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """channel -> (engaged, shown) of a raw profile hash.

    >>> customer_counts({"E:email": "2", "I:email": "9", "cv": "4"})
    {'email': (2, 9)}
    """
    out: dict[str, tuple[int, int]] = {}
    for c in CHANNELS:
        e, s = h.get(_ENGAGED[c]), h.get(_SHOWN[c])
        if e is not None or s is not None:
            out[c] = (int(e or 0), int(s or 0))
    return out


def population_rates(scores: Mapping[str, float]) -> dict[str, float]:
    """channel -> the population's rate, from the contact zset's decayed ``E:``/``I:`` members: engagement
    counted only up to impressions (a site that sends purchases by email but no email impressions has no
    email rate, not one of 100%), smoothed towards ``DEFAULT_RATE`` by ``POPULATION_PRIOR`` impressions.

    >>> round(population_rates({"E:email": 3.0, "I:email": 100.0, "h3": 7.0})["email"], 4)
    0.0333
    >>> population_rates({"E:push": 3.0, "I:push": 2.0})["push"], population_rates({})["sms"]
    (0.1364, 0.05)
    """
    out = {}
    for c in CHANNELS:
        engaged, shown = scores.get(_ENGAGED[c], 0.0), scores.get(_SHOWN[c], 0.0)
        out[c] = round((min(engaged, shown) + POPULATION_PRIOR * DEFAULT_RATE) / (shown + POPULATION_PRIOR), 4)
    return out


def rate(engaged: int, shown: int, prior: float, strength: float) -> float:
    """A customer's engagement rate on a channel: Beta posterior mean with the population's prior (rewards
    without impressions, e.g. no impression events sent for a channel, never make it exceed 1)."""
    n = max(shown, engaged) + strength
    return (engaged + strength * prior) / n if n > 0 else prior


def consented(consent: Mapping[str, bool], mode: str, channels: Sequence[str]) -> list[str]:
    """The channels whose marketing purpose the customer allows in this consent mode.

    >>> consented({"marketing_email": False}, "opt_out", ["web", "email"]), consented({}, "opt_in", ["web"])
    (['web'], [])
    """
    default = mode == OPT_OUT
    return [c for c in channels if consent.get(f"marketing_{c}", default)]


def choose(rates: Mapping[str, float], candidates: Sequence[str]) -> str | None:
    """The candidate channel with the best rate; ties go to the one listed first (the placement's order)."""
    best, best_rate = None, -1.0
    for c in candidates:
        r = rates.get(c, 0.0)
        if r > best_rate:
            best, best_rate = c, r
    return best
