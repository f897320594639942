"""Consent per purpose: what a visitor allowed, read from their profile's ``k*`` fields (``engine.layout``).

Purposes: ``personalisation``, ``analytics``, and marketing per channel (``marketing_email``,
``marketing_push``, ``marketing_sms``, ``marketing_web``; a consent event's ``marketing`` is either one
boolean for every channel or an object per channel). Without a recorded choice a purpose is allowed in
``opt_out`` mode and refused in ``opt_in`` mode (``[privacy] consent_mode``).

>>> personalisation_allowed({}, "opt_out"), personalisation_allowed({}, "opt_in")
(True, False)
>>> personalisation_allowed({"personalisation": True}, "opt_in"), personalisation_allowed(
...     {"personalisation": False}, "opt_out")
(True, False)
>>> consent_choices({"personalisation": False, "marketing": {"email": True, "sms": False}})
[('personalisation', False), ('marketing_email', True), ('marketing_sms', False)]
>>> consent_choices({"personalisation": True, "analytics": True, "marketing": False})[-1]
('marketing_web', False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.config import OPT_OUT

PERSONALISATION, ANALYTICS = "personalisation", "analytics"
#: The marketing channels consent is given for one by one.
MARKETING_CHANNELS = ("email", "push", "sms", "web")
#: Every purpose, in the order they are stored and reported.
PURPOSES = (PERSONALISATION, ANALYTICS, *(f"marketing_{c}" for c in MARKETING_CHANNELS))


def personalisation_allowed(consent: Mapping[str, bool], mode: str) -> bool:
    """Whether a visitor with these recorded choices may be personalised in this consent mode."""
    return consent.get(PERSONALISATION, mode == OPT_OUT)


def consent_choices(properties: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """The (purpose, granted) choices a consent event's properties make, in ``PURPOSES`` order."""
    out: list[tuple[str, bool]] = []
    for p in (PERSONALISATION, ANALYTICS):
        if p in properties:
            out.append((p, bool(properties[p])))
    marketing = properties.get("marketing")
    if isinstance(marketing, Mapping):
        out += [(f"marketing_{c}", bool(marketing[c])) for c in MARKETING_CHANNELS if c in marketing]
    elif marketing is not None:
        out += [(f"marketing_{c}", bool(marketing)) for c in MARKETING_CHANNELS]
    return out
