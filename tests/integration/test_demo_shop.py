"""The demo shop (``/demo/``) in headless Chromium, on the real API, Kafka, worker and Redis: its slots are
filled by the snippet and change as the visitor browses; a refusal of consent sends nothing; impressions and
clicks reach the events topic with their decision id. Also the snippet's route and the key-in-body rule of the
collector (what ``navigator.sendBeacon`` sends). Screenshots: ``test-artifacts/demo-*.png``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from playwright.sync_api import BrowserContext, Page

from engine.config import load_config
from serving.auth import ADMIN, PUBLIC, SERVER
from tests.integration.browser_support import off_loop, screenshot
from tests.support import (
    CONFIG_PATH,
    TEST_KEYS,
    Stack,
    api_process,
    event,
    free_port,
    read_topic,
    wait_http_ready,
)

pytestmark = pytest.mark.integration

HERO = "#hero [data-pulse-action]"


@pytest.fixture(scope="module")
def shop(stack: Stack, worker: object, log_dir: Path) -> Iterator[str]:
    """The API serving the demo: its public key allows the API's own origin (the demo page is served there)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    keys = f"{PUBLIC}:{TEST_KEYS[PUBLIC]}:{base},{SERVER}:{TEST_KEYS[SERVER]},{ADMIN}:{TEST_KEYS[ADMIN]}"
    proc = api_process(stack, log_dir, port, API_KEYS=keys, DEMO_PUBLIC_KEY=TEST_KEYS[PUBLIC],
                       IDENTITY_PROOFS="true").start()
    wait_http_ready(base, proc)
    yield base
    proc.stop()


def person_keys(redis_url: str) -> set[str]:
    """Every Redis key but the shared ones (popularity, co-visitation, worker stats, models: ``{global}``,
    ``{worker}``, per placement)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {k for k in client.scan_iter(count=1000)
                if "{global}" not in k and "{worker}" not in k and not k.startswith("model:")}
    finally:
        client.close()


def events_of(stack: Stack, done: Any = lambda got: False, timeout: float = 3.0) -> list[Any]:
    """The events topic's records (all of it: the stack is this module's), until ``done`` or ``timeout``."""
    return off_loop(read_topic, stack.bootstrap, stack.events_topic, done, timeout)


def record_requests(page: Page) -> list[tuple[str, str, Any]]:
    seen: list[tuple[str, str, Any]] = []
    page.on("request", lambda r: seen.append((r.method, r.url, r.post_data)))
    return seen


def test_declined_consent_sends_nothing(shop: str, stack: Stack, browser_context: BrowserContext,
                                        redis_url: str) -> None:
    # first in the module: the stack's events topic is still empty
    keys_before = person_keys(redis_url)
    page = browser_context.new_page()
    requests = record_requests(page)
    page.goto(shop + "/demo/?consent=opt_in")
    page.wait_for_selector(HERO)
    page.wait_for_selector("#consent:not([hidden])")
    screenshot(page, "demo-opt-in-banner")
    page.click("#consent-decline")
    cards = page.locator("#products [data-pulse-item]")
    for i in range(4):
        cards.nth(i).click()
    page.locator("#recs").scroll_into_view_if_needed()
    page.evaluate("window.pulse.flush(); window.pulse.refresh()")
    page.wait_for_load_state("networkidle")
    screenshot(page, "demo-declined")

    events = [u for m, u, _ in requests if "/v1/events" in u]
    assert events == [], f"the page sent events without consent: {events}"
    decides = [orjson.loads(body) for m, u, body in requests if u.endswith("/v1/decide")]
    assert decides, "the slots were filled by decide"
    assert all("anonymous_id" not in d and "customer_id" not in d for d in decides), decides
    cookies = {c["name"]: c["value"] for c in browser_context.cookies()}
    assert "pulse_aid" not in cookies and "pulse_consent" in cookies, cookies
    assert page.evaluate("window.pulse.anonymousId()") is None
    assert events_of(stack, timeout=2.0) == [], "nothing reached the events topic"
    assert person_keys(redis_url) == keys_before, "no profile, identity or decision was stored"


def test_slot_is_filled_and_changes_after_clicks_on_one_category(shop: str, browser_context: BrowserContext,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    page = browser_context.new_page()
    # the page refreshes its slots 300 ms and 1.2 s after loading: by then its own page view may have been
    # applied and the panel shows a personalised decision; keep the first explanation it rendered
    page.add_init_script("new MutationObserver(() => { const el = document.querySelector('#why-home_hero');"
                         " if (el && el.querySelector('table') && window.__firstWhy === undefined)"
                         " window.__firstWhy = el.innerText; })"
                         ".observe(document, {subtree: true, childList: true});")
    page.goto(shop + "/demo/")
    page.wait_for_selector(HERO)
    page.wait_for_selector("#recs [data-pulse-action]")
    page.wait_for_selector("#why-home_hero table")
    screenshot(page, "demo-first-visit")
    first = page.get_attribute(HERO, "data-pulse-action")
    first_category = page.get_attribute(HERO, "data-pulse-category")
    assert first and page.get_attribute("#hero", "data-pulse-decision")
    first_why = page.evaluate("window.__firstWhy")
    # a new visitor: their own page view may already be applied (personalised), but nothing they chose yet
    # scores an action (no affinity term)
    assert first_why and " affinity " not in first_why, first_why
    page.click("#consent-accept")  # opt_out: OK
    page.wait_for_selector("#consent", state="hidden")

    # a category with a hero promotion of its own, other than the one shown first
    config = load_config(CONFIG_PATH)
    categories = {a.category for a in config.actions_for("home_hero") if a.item_id and a.category} - {first_category}
    target = sorted(categories)[0]
    cards = page.locator(f"#products [data-pulse-category='{target}']")
    assert cards.count() >= 3
    for i in range(cards.count()):
        cards.nth(i).click()
    clicked = time.monotonic()
    # generous: a loaded machine may take longer than the page's own refresh (300 ms, 1.2 s, then every 5 s)
    page.wait_for_function("want => { const a = document.querySelector('#hero [data-pulse-action]');"
                           " return a && a.dataset.pulseCategory === want; }", arg=target, timeout=30_000)
    delay_ms = (time.monotonic() - clicked) * 1000
    with capsys.disabled():
        print(f"\n[demo] hero changed from {first} to {page.get_attribute(HERO, 'data-pulse-action')} "
              f"{delay_ms:.0f} ms after the last of {cards.count()} clicks on {target} (observed, not asserted)")
    # the panel shows the explanation of the latest decision, which may still be one from before the clicks
    # were applied: wait for the one whose score the category term made
    try:
        page.wait_for_function("() => { const t = document.querySelector('#why-home_hero').innerText;"
                               " return t.includes('· arm') && !t.includes('not personalised')"
                               " && t.includes('category'); }", timeout=15_000)
    except Exception:  # noqa: BLE001 - the assertion below says what the panel showed instead
        pass
    why = page.inner_text("#why-home_hero")
    assert "category" in why, why  # the term that made the score
    screenshot(page, "demo-after-clicks")


def test_impressions_and_clicks_reach_the_stream_with_their_decision_id(shop: str, stack: Stack,
                                                                       browser_context: BrowserContext) -> None:
    page = browser_context.new_page()
    page.goto(shop + "/demo/")
    page.wait_for_selector(HERO)
    page.wait_for_selector("#recs [data-pulse-action]")
    visitor = page.evaluate("window.pulse.anonymousId()")
    hero_decision = page.get_attribute("#hero", "data-pulse-decision")
    hero_action = page.get_attribute(HERO, "data-pulse-action")
    page.locator("#recs").scroll_into_view_if_needed()
    rec = page.locator("#recs [data-pulse-action]").first
    rec_action = rec.get_attribute("data-pulse-action")
    assert rec_action is not None
    recs_decision = page.get_attribute("#recs", "data-pulse-decision")  # read before the click re-renders
    rec.click()
    screenshot(page, "demo-clicked-recommendation")

    def mine(got: list[Any]) -> list[dict[str, Any]]:
        return [e for e in (orjson.loads(m.value) for m in got) if e.get("anonymous_id") == visitor]

    def found(got: list[Any]) -> bool:
        evs = mine(got)
        return any(e["type"] == "impression" and e["properties"].get("decision_id") == hero_decision for e in evs) \
            and any(e["type"] == "click" and e["properties"].get("decision_id") == recs_decision for e in evs)

    records = events_of(stack, found, timeout=30.0)
    evs = mine(records)
    assert found(records), [(e["type"], e["properties"]) for e in evs]
    impression = next(e for e in evs if e["type"] == "impression" and e["properties"]["decision_id"] == hero_decision)
    assert impression["properties"] == {"action_id": hero_action, "decision_id": hero_decision,
                                        "placement": "home_hero", "position": 0, "channel": "web"}
    click = next(e for e in evs if e["type"] == "click" and e["properties"].get("decision_id") == recs_decision)
    assert click["properties"]["action_id"] == rec_action and click["properties"]["placement"] == "product_recs"
    assert click["properties"]["item_id"] == load_config(CONFIG_PATH).actions[rec_action].item_id
    # sent by sendBeacon with the public key in the body: stamped as from a page
    headers = {k: v for m in records if orjson.loads(m.value)["event_id"] == click["event_id"] for k, v in m.headers}
    assert headers["pulse-source"] == b"public"


def test_the_snippet_is_served_cached_and_gzipped(shop: str) -> None:
    plain = httpx.get(f"{shop}/sdk/pulse.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/javascript")
    assert plain.text == (Path(__file__).parents[2] / "sdk" / "js" / "pulse.js").read_text()
    assert plain.headers["cache-control"].startswith("public, max-age=300")
    zipped = httpx.get(f"{shop}/sdk/pulse.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    size = int(zipped.headers["content-length"])
    assert size < 5 * 1024, f"{size} bytes gzipped"
    assert zipped.content == plain.content  # httpx decoded the gzip
    again = httpx.get(f"{shop}/sdk/pulse.js", headers={"If-None-Match": plain.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_events_take_the_public_key_from_a_text_plain_body_and_refuse_a_server_key_there(shop: str) -> None:
    def beacon(key: str | None, origin: str = shop) -> httpx.Response:
        body: dict[str, Any] = {"batch": [event("page_view", f"a-{uuid.uuid4().hex[:8]}", url="https://x/")]}
        if key is not None:
            body["writeKey"] = key
        return httpx.post(f"{shop}/v1/events", content=orjson.dumps(body),
                          headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": origin})

    assert beacon(TEST_KEYS[PUBLIC]).status_code == 202
    refused = beacon(TEST_KEYS[SERVER])
    assert refused.status_code == 403 and "only a public key" in refused.json()["error"], refused.text
    assert beacon(TEST_KEYS[ADMIN]).status_code == 403
    assert beacon(None).status_code == 401 and "writeKey" in beacon(None).json()["error"]
    assert beacon("pulse_public_not-a-key-of-this-api").status_code == 401
    assert beacon(TEST_KEYS[PUBLIC], origin="https://evil.example").status_code == 403
    not_json = httpx.post(f"{shop}/v1/events", content=b"{oops", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 401  # who asks is unknown: nothing about the body is said
