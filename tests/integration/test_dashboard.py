"""The dashboard in headless Chromium against the real API, worker, Kafka and Redis: it asks for the admin key,
renders its charts, and its numbers change after decisions and events are sent. Screenshots are kept
(``test-artifacts/dashboard-*.png``)."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page

from serving.auth import ADMIN, PUBLIC
from tests.integration.browser_support import screenshot
from tests.support import TEST_KEYS, Stack, event, produce, wait_until, with_key, without_key

pytestmark = pytest.mark.integration


def number(page: Page, element_id: str) -> float:
    text = page.inner_text(f"#{element_id}").replace(",", "")
    return float(text) if text not in ("-", "?", "off") else -1.0


def test_summary_and_report_need_the_admin_key(api: str) -> None:
    base = without_key(api)
    assert httpx.get(f"{base}/v1/reports/summary").status_code == 401
    assert httpx.get(f"{with_key(base, PUBLIC)}/v1/reports/attribution").status_code == 403
    page = httpx.get(f"{base}/dashboard")  # the page holds no data: public
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{base}/dashboard/dashboard.js").headers["content-type"].startswith("text/javascript")


def test_the_dashboard_draws_live_numbers(stack: Stack, worker: object, api: str,
                                          browser_context: BrowserContext) -> None:
    base = without_key(api)
    page = browser_context.new_page()
    page.goto(f"{base}/dashboard")
    assert page.is_visible("#key-form") and not page.is_visible("#main")
    page.fill("#key", TEST_KEYS[ADMIN])
    page.click("#key-form button")
    # two samples at least: the rates and the time series need two (polled from here: the page's CSP forbids
    # the string evaluation Playwright's wait_for_function uses)
    wait_until(lambda: int(page.get_attribute("body", "data-samples") or 0) >= 2, timeout=20, what="two samples")
    decisions_before, events_before = number(page, "kpi-decisions-total"), number(page, "kpi-events-total")
    assert decisions_before >= 0 and events_before >= 0
    assert page.locator("#experiments .exp").count() >= 2  # one per placement
    assert page.eval_on_selector("#chart-segments", "e => Number(e.dataset.bars)") >= 1
    screenshot(page, "dashboard-before")

    # traffic: decisions through the API, impressions of what they chose, a purchase
    visitor = f"anon-dash-{uuid.uuid4().hex[:6]}"
    shown = []
    for i in range(12):
        r = httpx.post(f"{api}/v1/decide", json={"anonymous_id": f"{visitor}-{i}", "placement": "home_hero"})
        assert r.status_code == 200, r.text
        d = r.json()
        shown.append((f"{visitor}-{i}", d["decision_id"], d["actions"][0]["action_id"]))
    now = int(time.time() * 1000)
    events = ([event("impression", v, ts_ms=now, action_id=a, decision_id=d, placement="home_hero", channel="web")
               for v, d, a in shown]
              + [event("purchase", shown[0][0], ts_ms=now + 1000, order_id=f"o-{visitor}", value=42.5)])
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API runs an event loop in this thread
        pool.submit(produce, stack.bootstrap, stack.events_topic, events).result()
    wait_until(lambda: number(page, "kpi-decisions-total") >= decisions_before + 12, timeout=60,
               what="the decisions on the dashboard")
    wait_until(lambda: number(page, "kpi-events-total") >= events_before + 13, timeout=60,
               what="the events on the dashboard")
    wait_until(lambda: number(page, "kpi-revenue") >= 42.5, timeout=60, what="the attributed revenue")
    # the charts carry what was just sent: attribution bars, a table row per action shown, a decisions line
    assert page.eval_on_selector("#chart-attr-actions", "e => Number(e.dataset.bars)") >= 1
    assert page.locator("#attr-table tbody tr").count() >= 1
    assert page.eval_on_selector("#chart-decisions", "e => Number(e.dataset.points)") >= 3
    assert page.locator("#chart-decisions polyline").count() == 1
    assert "home_hero" in page.inner_text("#experiments")
    screenshot(page, "dashboard-after")

    # forgetting the key stops the refresh and asks again
    page.click("#forget")
    assert page.is_visible("#key-form")
    assert page.evaluate("sessionStorage.getItem('pulse-admin-key')") is None
