"""Headless Chromium for integration tests: Debian's ``chromium`` driven by Playwright.

``playwright install`` cannot download browsers here (closed network), so Playwright drives the system's
Chromium (``/usr/bin/chromium``, installed by ``infra/install-deps.sh``; ``PULSE_CHROMIUM`` names another).
The flags keep Chromium from calling home (component updates, sync, QUIC probes...), which a closed network
answers by refusing connections; Playwright gives each launch a fresh ``--user-data-dir`` of its own.

Fixtures (imported by ``tests/integration/conftest.py``): ``browser`` (one Chromium per test module, as it
takes seconds to start) and ``browser_context`` (a fresh context per test: no cookies, no storage, i.e. a new
visitor). :func:`screenshot` saves a page as a test artefact under ``test-artifacts/`` (``TEST_ARTIFACTS_DIR``
overrides; gitignored; CI keeps the directory). With ``CI=true`` a missing browser or Playwright fails the
tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

from engine.settings import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

#: The browser Playwright launches (it cannot download its own here).
CHROMIUM = os.environ.get("PULSE_CHROMIUM", "/usr/bin/chromium")
#: Without these Chromium's own background connections are refused by the closed network and slow it down.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
T = TypeVar("T")
#: Where screenshots go (one PNG per call of :func:`screenshot`).
ARTIFACTS_DIR = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO_ROOT / "test-artifacts")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"headless Chromium unavailable (CI=true: failing, not skipping): {reason}", pytrace=False)
    pytest.skip(f"headless Chromium unavailable: {reason}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the test module."""
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} not found (infra/install-deps.sh installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"Playwright is not installed ({exc}; pip install -e '.[test]')")
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        except Exception as exc:
            _unavailable(f"{CHROMIUM} did not start: {exc}")
        yield b
        b.close()


@pytest.fixture
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    """A new browser context (a new visitor: no cookies or storage), closed after the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in another thread: Playwright's sync API keeps an event loop running in the test's
    thread, where ``asyncio.run`` (the Kafka and Redis helpers of ``tests.support``) refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as ``<ARTIFACTS_DIR>/<name>.png`` and return the path."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
