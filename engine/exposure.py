"""Exposure counters on the profile hash: what the contact policy (``engine.contact_policy``) decides by.

Kept on the customer's one hash (``engine.layout``), so decide reads them in the same ``HGETALL`` as the profile
(no extra Redis round trip), and written by the same Lua script as every other feature (operation ``x``):

===================  ===============================================================================
field                value: an *exposure record* ``<unclicked>,<mark>[,<t1>,...,<tk>]``
===================  ===============================================================================
``X:<action_id>``    per action: times shown since its last click, the minute of its last dismissal (empty:
                     never), the minutes of its last impressions, oldest first
``Y:<channel>``      per channel: the minutes of its last impressions (``unclicked`` and ``mark`` unused)
``P:<item_id>``      a purchased item: ``mark`` is the minute of its last purchase
===================  ===============================================================================

Minutes are epoch minutes in base 36 (5 characters until 2200), so a record of 10 times stays in Redis's
compact listpack encoding (64 bytes). Why times and not counts per calendar bucket: a calendar period is the
customer's, in *their* time zone, which decide knows (the request's ``context.timezone``, the profile's ``tz``:
``engine.timing.customer_zone``) and the worker does not (a batch's ops are built before the profile is read).
With the last ``k`` times kept, ``k`` the largest cap that counts them, "how many since the start of this local
day / week / hour" is exact for every cap up to ``k``, whatever the time zone, and a change of time zone never
splits a count. The script keeps at most ``k`` times, drops those older than ``HORIZON_MIN`` (8 days: the
longest period, a week, in any time zone) and at most ``max_tracked_actions`` / ``max_tracked_purchases``
records of each kind (a new one evicts the one touched least recently), so a profile cannot grow without limit.

Events (``properties`` as in ``schemas/json``):

* ``impression``: ``action_id`` shown once more (``X:``), on ``channel`` (``properties.channel``, else
  ``context.channel``, else ``web``: ``Y:``);
* ``click`` with an ``action_id``, or ``feedback`` of kind ``click``/``conversion``: its "shown without a click"
  count starts again from 0;
* ``feedback`` of kind ``dismiss``: the dismissal's minute (the cool-down starts);
* ``purchase``: each bought item (``item_id`` and line items' ``item_id``) marked.

>>> from engine.config import parse_config
>>> cfg = parse_config({"contact_policy": {"enabled": True, "action_caps": {"day": 3, "week": 10},
...                     "channel_caps": {"email": {"day": 1}}, "contact_pressure": {"week": 5}}})
>>> ex = Exposure(cfg.contact_policy)
>>> ex.ops("impression", 600.0, {"action_id": "a1", "channel": "email"}, {})
[['x', 'm', 'X:', 'a1', 10, 10, 50], ['x', 't', 'Y:', 'email', 10, 5, 8]]
>>> ex.ops("feedback", 660.0, {"action_id": "a1", "kind": "dismiss", "decision_id": "d"}, {})
[['x', 'd', 'X:', 'a1', 11, 10, 50]]
>>> parse("3,b,a,b")
Record(unclicked=3, mark=11, times=[10, 11])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.config.model import ContactPolicySettings

Op = list[Any]
ACTION_PREFIX, CHANNEL_PREFIX, PURCHASE_PREFIX = "X:", "Y:", "P:"
#: Times older than this (minutes) before the newest are dropped: a week in any time zone, with a day to spare.
HORIZON_MIN = 8 * 1440
#: Channels an impression may name (``schemas/json/impression.v1.schema.json``); records of at most this many.
CHANNELS = ("web", "app", "email", "push", "sms", "in_app")
MAX_CHANNEL_RECORDS = 8
DEFAULT_CHANNEL = "web"
_MAX_ID = 128


@dataclass(slots=True)
class Record:
    unclicked: int = 0
    #: minute of the last dismissal (``X:``) or purchase (``P:``), None: never
    mark: int | None = None
    #: minutes of the last impressions, oldest first
    times: list[int] = field(default_factory=list)


def parse(value: str | None) -> Record:
    """An exposure record as stored (a malformed one reads as empty: it was never written by the script).

    >>> parse(None), parse("0,")
    (Record(unclicked=0, mark=None, times=[]), Record(unclicked=0, mark=None, times=[]))
    """
    if not value:
        return Record()
    parts = value.split(",")
    try:
        return Record(int(parts[0] or 0), int(parts[1], 36) if len(parts) > 1 and parts[1] else None,
                      [int(t, 36) for t in parts[2:] if t])
    except ValueError:
        return Record()


def _largest(*caps: int | None) -> int:
    return max([c for c in caps if c is not None], default=0)


class Exposure:
    """The profile operations of the events the contact policy counts."""

    def __init__(self, policy: ContactPolicySettings, action_caps: tuple[int | None, ...] = ()) -> None:
        self.policy = policy
        a = policy.action_caps
        #: times kept per action: its largest cap (catalogue caps of actions included, ``action_caps``)
        self.action_k = _largest(a.hour, a.day, a.week, *action_caps)
        p = policy.contact_pressure
        self.channel_k = _largest(p.hour, p.day, p.week,
                                  *(n for c in policy.channel_caps.values() for n in (c.hour, c.day, c.week)))
        self.max_actions = policy.max_tracked_actions
        self.max_purchases = policy.max_tracked_purchases

    def ops(self, event_type: str, ts: float, properties: Mapping[str, Any], context: Mapping[str, Any]) -> list[Op]:
        minute = int(ts // 60)
        if event_type == "impression":
            out: list[Op] = []
            aid = _id(properties.get("action_id"))
            if aid is not None:
                out.append(["x", "m", ACTION_PREFIX, aid, minute, self.action_k, self.max_actions])
            ch = properties.get("channel") or context.get("channel") or DEFAULT_CHANNEL
            if ch in CHANNELS:
                out.append(["x", "t", CHANNEL_PREFIX, ch, minute, self.channel_k, MAX_CHANNEL_RECORDS])
            return out
        if event_type == "click" or event_type == "feedback":
            aid = _id(properties.get("action_id"))
            if aid is None:
                return []
            kind = "d" if event_type == "feedback" and properties.get("kind") == "dismiss" else "k"
            return [["x", kind, ACTION_PREFIX, aid, minute, self.action_k, self.max_actions]]
        if event_type == "purchase" and (self.policy.suppress_purchased):
            items = [properties.get("item_id")]
            for line in properties.get("items") or ():
                if isinstance(line, Mapping):
                    items.append(line.get("item_id"))
            return [["x", "p", PURCHASE_PREFIX, i, minute, 0, self.max_purchases]
                    for i in dict.fromkeys(_id(v) for v in items) if i is not None]
        return []

    def merge_op(self, field_name: str, value: str) -> Op | None:
        """The operation that folds another profile's record into this one (identity merge): the times of both
        (the newest kept), shown-without-click counts added, the later mark.

        >>> ex = Exposure(ContactPolicySettings(enabled=True))
        >>> ex.merge_op("X:a1", "2,,a"), ex.merge_op("cv", "3")
        (['x', 'M', 'X:', 'a1', '2,,a', 0, 50], None)
        """
        prefix = field_name[:2]
        if prefix == ACTION_PREFIX:
            return ["x", "M", prefix, field_name[2:], value, self.action_k, self.max_actions]
        if prefix == CHANNEL_PREFIX:
            return ["x", "M", prefix, field_name[2:], value, self.channel_k, MAX_CHANNEL_RECORDS]
        if prefix == PURCHASE_PREFIX:
            return ["x", "M", prefix, field_name[2:], value, 0, self.max_purchases]
        return None


def _id(value: Any) -> str | None:
    """An id as a record key: a non-empty string without the record's separator, bounded like every id."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > _MAX_ID or "," in value:
        return None
    return value
