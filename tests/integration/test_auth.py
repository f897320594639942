"""API keys on the real API process (real Kafka and Redis): every route needs its role, both ways of sending
a key work, CORS from allowed origins only, events carry their source, and production refuses dev secrets."""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from engine import trust
from engine.production import EXIT_CONFIG
from serving import auth
from serving.auth import ADMIN, PUBLIC, ROLES, SERVER
from tests.support import (
    TEST_KEYS,
    TEST_ORIGIN,
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    read_topic,
    wait_http_ready,
    without_key,
    worker_process,
)

pytestmark = pytest.mark.integration

#: Routes anyone may call: liveness and readiness (which say ok or not, nothing more).
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz")}
#: Files for browsers, open as any script or page is: the snippet, the demo shop (development only) and the
#: dashboard's page (it holds no data: it asks for an admin key and reads the admin-only reports with it)
STATIC_ROUTES = {("GET", "/sdk/pulse.js"), ("GET", "/sdk/pulse.d.ts"), ("GET", "/demo/"),
                 ("GET", "/demo/shop.js"), ("GET", "/demo/shop.css"), ("GET", "/demo/config.json"),
                 ("GET", "/dashboard"), ("GET", "/dashboard/"), ("GET", "/dashboard/dashboard.js"),
                 ("GET", "/dashboard/dashboard.css")}
OPEN_ROUTES |= STATIC_ROUTES
EVIL_ORIGIN = "https://evil.example"


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_KEYS[role]}"}


def app_routes() -> list[tuple[str, str, str | None]]:
    """(method, path, role required) of every route of the app, as ``serving.app`` builds it."""
    from serving.app import create_app

    return auth.route_roles(create_app().routes)


def probe(base: str, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    url = base + re.sub(r"\{[^}]+\}", "probe-" + uuid.uuid4().hex[:6], path)
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    return httpx.request(method, url, content=body, headers=headers, timeout=10)


def test_every_route_answers_401_without_a_key_and_403_with_a_lower_role(api: str) -> None:
    base = without_key(api)
    routes = app_routes()
    assert {(m, p) for m, p, _ in routes} >= {("POST", "/v1/decide"), ("POST", "/v1/events"), ("GET", "/metrics"),
                                              ("GET", "/docs"), ("GET", "/openapi.json")}
    unguarded = [(m, p) for m, p, role in routes if role is None and (m, p) not in OPEN_ROUTES]
    assert not unguarded, f"routes without an API key role (add auth.require(...)): {unguarded}"
    for method, path, role in routes:
        if role is None:  # open: answers without a key and shows no address or error text
            r = probe(base, method, path)
            assert r.status_code in (200, 503), (path, r.status_code)
            assert "127.0.0.1" not in r.text, r.text
            assert (method, path) in STATIC_ROUTES or "Error" not in r.text, r.text  # scripts may name Error
            continue
        r = probe(base, method, path)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert r.json()["required_role"] == role and r.headers["www-authenticate"].startswith("Bearer")
        r = probe(base, method, path, {"Authorization": f"Bearer {auth.new_key(ADMIN)}"})  # a key nobody issued
        assert r.status_code == 401, (method, path, r.status_code)
        for lower in ROLES[:ROLES.index(role)]:
            r = probe(base, method, path, bearer(lower))
            assert r.status_code == 403, (method, path, lower, r.status_code, r.text)
            assert r.json()["required_role"] == role
        for enough in ROLES[ROLES.index(role):]:  # the role and those above it pass the key check
            r = probe(base, method, path, bearer(enough))
            assert r.status_code not in (401, 403), (method, path, enough, r.status_code, r.text)


def test_bearer_and_basic_with_the_key_as_user_name(api: str) -> None:
    base = without_key(api)
    missing = f"{base}/v1/profiles/nobody-{uuid.uuid4().hex}"
    assert httpx.get(missing, headers=bearer(ADMIN)).status_code == 404
    assert httpx.get(missing, auth=(TEST_KEYS[ADMIN], "")).status_code == 404  # what the Segment SDKs send
    basic = "Basic " + base64.b64encode(f"{TEST_KEYS[SERVER]}:".encode()).decode()
    ev = event("page_view", f"a-{uuid.uuid4().hex[:8]}", url="https://shop.test/")
    assert httpx.post(f"{base}/v1/events", json=ev, headers={"Authorization": basic}).status_code == 202
    body = {"anonymous_id": "a-basic", "placement": "home_hero"}
    for headers in (bearer(PUBLIC), {"Authorization": basic}):  # decide takes any role
        assert httpx.post(f"{base}/v1/decide", json=body, headers=headers).status_code == 200
    assert httpx.get(missing, auth=(TEST_KEYS[SERVER], "")).status_code == 403


@pytest.mark.parametrize("path", ["/v1/decide", "/v1/events"])
def test_preflight_from_an_allowed_origin_is_granted_and_from_another_refused(api: str, path: str) -> None:
    base = without_key(api)
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx.options(f"{base}{path}", headers={"Origin": TEST_ORIGIN, **ask})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"]
    refused = httpx.options(f"{base}{path}", headers={"Origin": EVIL_ORIGIN, **ask})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers


def test_decide_and_events_from_an_allowed_origin_work_and_from_another_are_refused(api: str) -> None:
    base = without_key(api)
    body = {"anonymous_id": f"a-{uuid.uuid4().hex[:8]}", "placement": "home_hero"}
    page = {**bearer(PUBLIC), "Origin": TEST_ORIGIN}
    r = httpx.post(f"{base}/v1/decide", json=body, headers=page)
    assert r.status_code == 200 and r.json()["actions"]
    assert r.headers["access-control-allow-origin"] == TEST_ORIGIN
    r = httpx.post(f"{base}/v1/decide", json=body, headers={**page, "Origin": EVIL_ORIGIN})
    assert r.status_code == 403 and EVIL_ORIGIN in r.json()["error"]
    assert "access-control-allow-origin" not in r.headers
    # a server key lists no origin: a page may not use it
    assert httpx.post(f"{base}/v1/decide", json=body, headers={**bearer(SERVER), "Origin": TEST_ORIGIN}
                      ).status_code == 403
    ev = event("page_view", body["anonymous_id"], url="https://shop.test/")
    r = httpx.post(f"{base}/v1/events", json=ev, headers=page)
    assert r.status_code == 202 and r.headers["access-control-allow-origin"] == TEST_ORIGIN
    assert httpx.post(f"{base}/v1/events", json=ev, headers={**page, "Origin": EVIL_ORIGIN}).status_code == 403


def read_headers(stack: Stack, event_ids: set[str], timeout: float = 30.0) -> dict[str, dict[str, bytes]]:
    """The Kafka headers of the events with these ids, read from the events topic."""
    def ids(msgs: list) -> set[str]:
        return {orjson.loads(m.value)["event_id"] for m in msgs}
    found = read_topic(stack.bootstrap, stack.events_topic, lambda got: ids(got) >= event_ids, timeout,
                       keep=lambda m: orjson.loads(m.value)["event_id"] in event_ids)
    return {orjson.loads(m.value)["event_id"]: dict(m.headers or ()) for m in found}


def test_public_keys_send_browser_events_only_and_events_carry_their_source(api: str, stack: Stack) -> None:
    base = without_key(api)
    visitor = f"a-{uuid.uuid4().hex[:8]}"
    purchase = event("purchase", visitor, order_id="o-1", items=[{"item_id": "sku-1", "price": 5.0}], value=5.0)
    browsing = [event(t, visitor, item_id="sku-1", category="shoes") for t in ("page_view", "click", "add_to_cart")]
    r = httpx.post(f"{base}/v1/events", json=[*browsing, purchase], headers=bearer(PUBLIC))
    assert r.status_code == 403, r.text
    assert r.json()["required_role"] == SERVER and r.json()["errors"] == [{"index": 3, "type": "purchase"}]
    assert httpx.post(f"{base}/v1/events", json=browsing, headers=bearer(PUBLIC)).status_code == 202
    assert httpx.post(f"{base}/v1/events", json=purchase, headers=bearer(SERVER)).status_code == 202, r.text
    admin_event = event("page_view", visitor, url="https://shop.test/x")
    assert httpx.post(f"{base}/v1/events", json=admin_event, headers=bearer(ADMIN)).status_code == 202

    headers = read_headers(stack, {e["event_id"] for e in [*browsing, purchase, admin_event]})
    for e in browsing:
        assert headers[e["event_id"]] == {trust.SOURCE_HEADER: b"public", trust.KEY_HEADER: b"public-1"}
        assert not trust.is_trusted(headers[e["event_id"]].items())
    assert headers[purchase["event_id"]] == {trust.SOURCE_HEADER: b"server", trust.KEY_HEADER: b"server-1"}
    assert headers[admin_event["event_id"]] == {trust.SOURCE_HEADER: b"server", trust.KEY_HEADER: b"admin-1"}
    assert trust.is_trusted(headers[purchase["event_id"]].items())


# -- production refuses development secrets ---------------------------------------------------------------

STRONG_SIGNING_KEY = secrets.token_hex(32)


def start_refused(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def prod_env(stack: Stack, **extra: str) -> dict[str, str]:
    env = stack.env(**{"PULSE_ENV": "prod", "OPENBLAS_NUM_THREADS": "1", **extra})
    for name in ("API_KEYS", "API_KEYS_FILE", "MODEL_SIGNING_KEY"):
        if name not in extra:
            env.pop(name, None)
    return env


@pytest.mark.parametrize(("extra", "reasons"), [
    ({}, ["MODEL_SIGNING_KEY is the development default", "no API keys"]),
    ({"PULSE_ENV": ""}, ["MODEL_SIGNING_KEY is the development default", "no API keys"]),
    ({"MODEL_SIGNING_KEY": "too-short-a-secret"}, ["MODEL_SIGNING_KEY is 18 bytes; at least 32", "no API keys"]),
    ({"MODEL_SIGNING_KEY": STRONG_SIGNING_KEY}, ["no API keys"]),
    ({"MODEL_SIGNING_KEY": "dev-only-signing-key", **keys_env()}, ["MODEL_SIGNING_KEY is the development default"]),
    ({"MODEL_SIGNING_KEY": STRONG_SIGNING_KEY, "API_KEYS": "admin:short"}, ["at least 24"]),
    # keys and a strong signing key, but Redis and Kafka that anyone may use (test_secured_infra.py: the API
    # starting in production on authenticated ones)
    ({"MODEL_SIGNING_KEY": STRONG_SIGNING_KEY, **keys_env()},
     ["REDIS_URL carries no password", "KAFKA_SECURITY_PROTOCOL is not set"]),
    # the placeholders of infra/.env.example are refused in dev too
    ({"PULSE_ENV": "dev", "MODEL_SIGNING_KEY": "CHANGE_ME_to_a_random_secret_of_32_bytes",
      "API_KEYS": "admin:CHANGE_ME_admin_key_of_24_characters"},
     ["MODEL_SIGNING_KEY holds the CHANGE_ME placeholder", "API_KEYS holds the CHANGE_ME placeholder"]),
])
def test_the_api_refuses_to_start_outside_dev_and_says_why(stack: Stack, tmp_path: Path, extra: dict[str, str],
                                                          reasons: list[str]) -> None:
    proc = api_process(stack, tmp_path, free_port())
    env = prod_env(stack, **extra)
    if extra.get("PULSE_ENV") == "":
        env.pop("PULSE_ENV")  # unset is production too
    out = start_refused(proc.argv, env)
    assert out.returncode == EXIT_CONFIG, (out.returncode, out.stderr[-2000:])
    assert "pulse API: refusing to start" in out.stderr
    for reason in reasons:
        assert reason in out.stderr, out.stderr[-2000:]


def test_the_worker_refuses_the_default_signing_key_outside_dev(stack: Stack, tmp_path: Path) -> None:
    proc = worker_process(stack, tmp_path)
    out = start_refused(proc.argv, prod_env(stack))
    assert out.returncode == EXIT_CONFIG, (out.returncode, out.stderr[-2000:])
    assert "pulse worker: refusing to start" in out.stderr
    assert "MODEL_SIGNING_KEY is the development default" in out.stderr


def test_dev_without_keys_is_open_and_warns(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    proc = api_process(stack, tmp_path, port)
    for name in ("API_KEYS", "API_KEYS_FILE"):
        proc.env.pop(name, None)
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(base, proc)
        assert httpx.get(f"{base}/metrics").status_code == 200
        preflight = httpx.options(f"{base}/v1/decide", headers={"Origin": "http://localhost:5173"})
        assert preflight.status_code == 204
        assert "EVERY endpoint is open" in proc.log_tail()
    finally:
        proc.stop()
