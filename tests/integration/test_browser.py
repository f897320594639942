"""The browser test harness itself: headless Chromium reaches the real API and screenshots what it shows."""

from __future__ import annotations

from playwright.sync_api import BrowserContext

from tests.integration.browser_support import screenshot
from tests.support import without_key


def test_chromium_reaches_the_api(api: str, browser_context: BrowserContext) -> None:
    page = browser_context.new_page()
    answer = page.goto(without_key(api) + "/healthz")
    assert answer is not None and answer.status == 200
    assert '"status":"ok"' in page.inner_text("body")
    path = screenshot(page, "browser-healthz")
    assert path.stat().st_size > 1000
