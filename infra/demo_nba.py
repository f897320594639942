"""``make demo``'s next-best-action walk-through: one customer, one ``next_best_action`` placement, and each
part of the decision at work on the running pipeline (config/engine.toml's segments, channels, contact hours,
value arbitration, explanations, and a catalogue change through the admin API without a restart).

Everything goes through the public HTTP API with the run's keys: events from the site's back end (the
``server`` key: consent and identify for a customer id need a trusted source), decisions, the admin API.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from infra.handles import wait_until

PLACEMENT = "next_best_action"


def _event(kind: str, customer: str, **properties: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "type": kind, "timestamp": int(time.time() * 1000),
            "customer_id": customer, "context": {"channel": "web"}, "properties": properties}


def _line(answer: dict[str, Any], zone: str = "Europe/Paris") -> str:
    if not answer["actions"]:
        return f"nothing now (reason: {answer.get('reason', '?')})"
    a = answer["actions"][0]
    when = " now"
    if a.get("send_at"):
        local = datetime.fromisoformat(a["send_at"].replace("Z", "+00:00")).astimezone(ZoneInfo(zone))
        when = f" at {a['send_at']} ({local:%H:%M} in {zone.split('/')[-1].replace('_', ' ')})"
    return f"{a['action_id']} by {a.get('channel', 'web')}{when}"


class Walkthrough:
    """The steps, each a decision before and after one thing changed."""

    def __init__(self, base: str, server: dict[str, str], admin: dict[str, str]) -> None:
        self.base, self.server, self.admin = base, server, admin
        self.customer = f"cust-demo-{uuid.uuid4().hex[:6]}"
        self.client = httpx.Client(timeout=10)

    def decide(self, **body: Any) -> dict[str, Any]:
        r = self.client.post(f"{self.base}/v1/decide", headers=self.server,
                             json={"customer_id": self.customer, "placement": PLACEMENT, **body})
        r.raise_for_status()
        return dict(r.json())

    def send(self, *events: dict[str, Any]) -> None:
        r = self.client.post(f"{self.base}/v1/events", headers=self.server, json=list(events))
        assert r.status_code == 202, r.text

    def until(self, check: Callable[[dict[str, Any]], bool], what: str, **body: Any) -> tuple[dict[str, Any], float]:
        """Decide until ``check`` holds (the stream applied what was sent); the answer and how long it took."""
        t0 = time.perf_counter()
        answer = wait_until(lambda: (lambda a: a if check(a) else None)(self.decide(**body)), timeout=30,
                            interval=0.01, what=what)
        return answer, (time.perf_counter() - t0) * 1000

    def run(self) -> None:
        c = self.customer
        print(f"\nNext best action for customer '{c}' (placement {PLACEMENT}: action + channel + send_at):")
        # no web consent: the answer has to go out on a channel with contact hours
        self.send(_event("consent", c, marketing={"web": False, "email": True, "push": True, "sms": False}))
        first, _ = self.until(lambda a: all(e.get("channel") != "web" for e in a["actions"]), "the consent",
                              context={"timezone": "Asia/Tokyo"})
        print(f"  consents to email and push only; asking as in Tokyo:  {_line(first, 'Asia/Tokyo')}")
        ny = self.decide(context={"timezone": "America/New_York"})
        print(f"  the same customer as in New York:                    {_line(ny, 'America/New_York')}")
        print("    (send_at: their best hour inside the channel's contact hours in their time zone)")

        self.send(_event("add_to_cart", c, category="jackets", item_id="sku-jacket-1", quantity=1, price=120.0))
        carted, ms = self.until(lambda a: "has_cart" in a.get("segments", []), "the cart",
                                context={"timezone": "Europe/Paris"}, explain=True)
        print(f"  they put a jacket in the cart: segment has_cart after {ms:.0f} ms -> {_line(carted)}")
        for entry in carted["explanation"]["candidates"]:
            mark = (f"excluded: {entry['excluded_by']}" if not entry.get("eligible", True)
                    else f"eligible, {entry.get('channel') or '-'} (rate {entry.get('channel_rate', 0):.3f})")
            print(f"    {entry['action_id']:<20} {mark}")

        channel = carted["actions"][0].get("channel") if carted["actions"] else "email"
        self.send(_event("consent", c, marketing={channel: False}))
        moved, ms = self.until(lambda a: all(e.get("channel") != channel for e in a["actions"]),
                               "the withdrawal", context={"timezone": "Europe/Paris"})
        print(f"  they withdraw {channel} consent ({ms:.0f} ms later):        {_line(moved)}")

        chosen = carted["actions"][0]["action_id"] if carted["actions"] else "nba-cart-reminder"
        r = self.client.post(f"{self.base}/v1/admin/actions/{chosen}/retire", headers=self.admin)
        assert r.status_code == 200, r.text
        gone, ms = self.until(lambda a: all(e["action_id"] != chosen for e in a["actions"]),
                              "the retired action to go", context={"timezone": "Europe/Paris"})
        print(f"  an admin retires {chosen} (POST /v1/admin/actions/{chosen}/retire):")
        print(f"    gone from decide {ms:.0f} ms later, no restart ->     {_line(gone)}")
        self.client.post(f"{self.base}/v1/admin/actions/{chosen}/reset", headers=self.admin)

        # the contact policy: the site reports what it actually sent (impressions), caps count them
        sent = gone["actions"][0] if gone["actions"] else {"action_id": "nba-running-shoes", "channel": "push"}
        self.send(*(_event("impression", c, action_id=sent["action_id"], channel=sent.get("channel", "push"),
                           decision_id=gone.get("decision_id", uuid.uuid4().hex)) for _ in range(3)))
        capped, ms = self.until(lambda a: not a["actions"], "the cap", context={"timezone": "Europe/Paris"},
                                explain=True)
        why = {e["action_id"]: e.get("excluded_by", "?") for e in capped["explanation"]["candidates"]}
        print(f"  three {sent.get('channel')} notifications of {sent['action_id']} sent (impression events):")
        print(f"    {ms:.0f} ms later ->                                  {_line(capped)}")
        print(f"    {sent['action_id']}: {why.get(sent['action_id'])}")
        self.client.close()
