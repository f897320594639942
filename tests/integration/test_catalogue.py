"""The catalogue as data on the real stack: admin changes through one API process are live in another's decide
within seconds (no restart), a bulk upload of 5,000 items is decided among and personalised by the worker's
profiles, problems name the field, only admin keys may change anything, decision records carry the version."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from engine.catalogue import MAX_ACTION_BYTES, MAX_BULK_ITEMS
from engine.layout import CATALOGUE_ACTIONS_KEY, CATALOGUE_PLACEMENTS_KEY, CATALOGUE_VERSION_KEY
from infra import local
from tests.support import (
    PUBLIC,
    SERVER,
    Stack,
    api_process,
    event,
    free_port,
    keys_env,
    produce,
    read_topic,
    wait_http_ready,
    wait_until,
    with_key,
    without_key,
)

pytestmark = pytest.mark.integration
CATALOGUE_KEYS = (CATALOGUE_VERSION_KEY, CATALOGUE_ACTIONS_KEY, CATALOGUE_PLACEMENTS_KEY)


def own_database(redis_server: local.RedisService, db: int) -> Iterator[str]:
    """The URL of database ``db`` of the session's Redis, its catalogue cleared before and after."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    with redis.Redis.from_url(url) as r:
        r.delete(*CATALOGUE_KEYS)
    yield url
    with redis.Redis.from_url(url) as r:
        r.delete(*CATALOGUE_KEYS)


@pytest.fixture(scope="module")
def redis_url(redis_server: local.RedisService) -> Iterator[str]:
    """A database of its own: this module's catalogue changes must not reach other modules' API processes."""
    yield from own_database(redis_server, 7)


@pytest.fixture(scope="module")
def stack(kafka: local.KafkaService, redis_url: str) -> Stack:
    s = Stack(kafka.bootstrap, redis_url)
    s.create_topics()
    return s


@pytest.fixture(scope="module")
def other_api(stack: Stack, log_dir: Path, api: str) -> Iterator[str]:
    """A second API process: changes made through ``api`` reach it by the catalogue's poll only."""
    port = free_port()
    proc = api_process(stack, log_dir, port, **keys_env()).start()
    base = f"http://127.0.0.1:{port}"
    wait_http_ready(base, proc)
    yield with_key(base)
    proc.stop()


def decide(api: str, visitor: str, placement: str = "home_hero", **extra: object) -> httpx.Response:
    return httpx.post(f"{api}/v1/decide", json={"anonymous_id": visitor, "placement": placement, **extra},
                      timeout=10)


def shown(api: str, visitor: str, **extra: object) -> list[str]:
    r = httpx.post(f"{api}/v1/decide", json={"anonymous_id": visitor, "placement": "home_hero", **extra}, timeout=10)
    assert r.status_code == 200, r.text
    return [a["action_id"] for a in r.json()["actions"]]


def test_an_admin_change_is_live_in_another_process_within_seconds(api: str, other_api: str) -> None:
    new = f"promo-new-{uuid.uuid4().hex[:6]}"
    refused = decide(other_api, "anon-cat-1", candidates=[new])
    assert refused.status_code == 400 and "unknown action" in refused.json()["error"]
    r = httpx.put(f"{api}/v1/admin/actions/{new}", json={"placements": ["home_hero"], "category": "socks",
                                                         "title": "Socks", "payload": {"url": "/socks"}})
    assert r.status_code == 201, r.text
    version = r.json()["catalogue_version"]
    assert r.headers["etag"] == f'"{version}"'
    # the process that made the change serves it at once; the other one after its next poll (~1 s)
    assert shown(api, "anon-cat-1", candidates=[new]) == [new]
    assert wait_until(lambda: decide(other_api, "anon-cat-1", candidates=[new]).status_code == 200, timeout=10,
                      what="the change in the other API process")
    answer = decide(other_api, "anon-cat-1", candidates=[new]).json()["actions"][0]
    assert answer["title"] == "Socks" and answer["payload"] == {"url": "/socks"}
    # an update, conditional on the ETag: a stale one is refused, the current one applies
    stale = httpx.put(f"{api}/v1/admin/actions/{new}", json={"placements": ["home_hero"], "title": "Old"},
                      headers={"If-Match": '"0"'})
    assert stale.status_code == 412 and "ETag" in stale.json()["error"]
    create_only = httpx.put(f"{api}/v1/admin/actions/{new}", json={"placements": ["home_hero"]},
                            headers={"If-None-Match": "*"})
    assert create_only.status_code == 412
    updated = httpx.put(f"{api}/v1/admin/actions/{new}", json={"placements": ["home_hero"], "title": "Wool socks"},
                        headers={"If-Match": r.headers["etag"]})
    assert updated.status_code == 200 and not updated.json()["created"], updated.text
    wait_until(lambda: decide(other_api, "anon-cat-1", candidates=[new]).json()["actions"][0]["title"]
               == "Wool socks", timeout=10, what="the update in the other process")
    # retired: known (no 400), never eligible, kept with its state for reports
    retired = httpx.post(f"{api}/v1/admin/actions/{new}/retire", headers={"If-Match": updated.headers["etag"]})
    assert retired.status_code == 200, retired.text
    wait_until(lambda: decide(other_api, "anon-cat-1", candidates=[new]).json()["actions"] == [], timeout=10,
               what="the retirement in the other process")
    got = httpx.get(f"{api}/v1/admin/actions/{new}").json()
    assert got["state"] == "retired" and got["source"] == "admin" and got["action"]["title"] == "Wool socks"
    # a file action changed by the admin API wins until reset
    seed = "promo-winter-jackets"
    changed = httpx.put(f"{api}/v1/admin/actions/{seed}", json={"placements": ["home_hero"], "category": "jackets",
                                                                "title": "Jackets -30%"})
    assert changed.status_code == 200 and httpx.get(f"{api}/v1/admin/actions/{seed}").json()["source"] == \
        "admin over file"
    assert decide(api, "anon-cat-1", candidates=[seed]).json()["actions"][0]["title"] == "Jackets -30%"
    reset = httpx.post(f"{api}/v1/admin/actions/{seed}/reset")
    assert reset.status_code == 200, reset.text
    assert decide(api, "anon-cat-1", candidates=[seed]).json()["actions"][0]["title"] == "Winter jackets are in"
    assert httpx.post(f"{api}/v1/admin/actions/{new}/reset").status_code == 409  # not in the file: retire it
    # a placement's max_items
    placed = httpx.put(f"{api}/v1/admin/placements/home_hero", json={"max_items": 1})
    assert placed.status_code == 200, placed.text
    wait_until(lambda: len(shown(other_api, "anon-cat-2")) == 1, timeout=10, what="max_items in the other process")
    assert httpx.put(f"{api}/v1/admin/placements/home_hero", json={"max_items": 3}).status_code == 200


def test_problems_name_the_field_and_bounds_are_enforced(api: str) -> None:
    r = httpx.put(f"{api}/v1/admin/actions/bad-1", json={"placements": ["nowhere"], "tags": "sale", "colour": 1})
    assert r.status_code == 422
    fields = {p["field"]: p["message"] for p in r.json()["problems"]}
    assert fields["tags"] == 'expected an array, got "sale"'
    assert fields["placements[0]"].startswith('unknown placement "nowhere"')
    assert "unknown key" in fields["colour"]
    mismatch = httpx.put(f"{api}/v1/admin/actions/bad-1", json={"id": "other", "placements": ["home_hero"]})
    assert mismatch.status_code == 422 and mismatch.json()["problems"][0]["field"] == "id"
    items: list[dict[str, object]] = [{"id": f"b-{i}", "placements": ["home_hero"]} for i in range(5)]
    items[3]["category"] = 7
    items[4]["id"] = "b-0"
    bulk = httpx.post(f"{api}/v1/admin/actions/bulk", json=items)
    assert bulk.status_code == 422
    fields = {p["field"]: p["message"] for p in bulk.json()["problems"]}
    assert fields["items[3].category"] == "expected a string, got 7"
    assert fields["items[4].id"] == 'duplicate action id "b-0" (first at items[0])'
    too_many = httpx.post(f"{api}/v1/admin/actions/bulk",
                          content=b"\n".join(b'{"id":"x%d","placements":["home_hero"]}' % i
                                             for i in range(MAX_BULK_ITEMS + 1)),
                          headers={"Content-Type": "application/x-ndjson"})
    assert too_many.status_code == 413 and too_many.json()["error"].startswith("items: 10001 actions")
    big = [{"id": "ok", "placements": ["home_hero"]},
           {"id": "big", "placements": ["home_hero"], "payload": {"x": "y" * MAX_ACTION_BYTES}}]
    too_big = httpx.post(f"{api}/v1/admin/actions/bulk", json=big)
    assert too_big.status_code == 413 and too_big.json()["error"].startswith("items[1]: ")
    assert httpx.post(f"{api}/v1/admin/actions/bulk", content=b"[{").status_code == 400
    policy = httpx.put(f"{api}/v1/admin/placements/home_hero", json={"policy": "linucb"})
    assert policy.status_code == 422 and policy.json()["problems"][0]["field"] == "policy"
    assert httpx.put(f"{api}/v1/admin/placements/nowhere", json={"max_items": 2}).status_code == 404
    # nothing of the refused requests was written
    assert httpx.get(f"{api}/v1/admin/actions/bad-1").status_code == 404
    assert httpx.get(f"{api}/v1/admin/actions/b-0").status_code == 404


@pytest.mark.parametrize("role", [PUBLIC, SERVER])
def test_keys_below_admin_get_403(api: str, role: str) -> None:
    base = with_key(api, role)
    headers = {"Origin": "https://shop.test"} if role == PUBLIC else {}
    assert httpx.get(f"{base}/v1/admin/catalogue", headers=headers).status_code == 403
    assert httpx.put(f"{base}/v1/admin/actions/x", json={"placements": ["home_hero"]},
                     headers=headers).status_code == 403
    assert httpx.post(f"{base}/v1/admin/actions/bulk", json=[], headers=headers).status_code == 403
    assert httpx.get(f"{without_key(api)}/v1/admin/actions").status_code == 401


def test_bulk_upload_of_5000_items_then_decide_among_them(stack: Stack, worker: object, api: str) -> None:
    tag = uuid.uuid4().hex[:6]
    lines = b"\n".join(orjson.dumps({"id": f"sku-{tag}-{i}", "placements": ["home_hero"], "item_id": f"sku-{tag}-{i}",
                                     "category": f"cat-{tag}-{i % 100}", "title": f"Item {i}"})
                       for i in range(5000))
    r = httpx.post(f"{api}/v1/admin/actions/bulk", content=lines, headers={"Content-Type": "application/x-ndjson"},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["created"] == 5000
    version = r.json()["catalogue_version"]
    summary = httpx.get(f"{api}/v1/admin/catalogue").json()
    assert summary["loaded_version"] == version and summary["placements"]["home_hero"] >= 5000
    page = httpx.get(f"{api}/v1/admin/actions", params={"placement": "home_hero", "limit": 10, "offset": 100}).json()
    assert page["total"] >= 5000 and len(page["actions"]) == 10
    # the worker's profile of a visitor who clicked one uploaded category: its items rank first
    visitor = f"anon-bulk-{tag}"
    produce(stack.bootstrap, stack.events_topic,
            [event("click", visitor, category=f"cat-{tag}-42", item_id=f"sku-{tag}-42") for _ in range(3)])

    def personalised() -> list[str] | None:
        answer = decide(api, visitor, n=3).json()
        return [a["action_id"] for a in answer["actions"]] if answer["personalised"] else None

    top = wait_until(personalised, timeout=60, what="the visitor's profile")
    assert top and all(int(a.rsplit("-", 1)[1]) % 100 == 42 for a in top if a.startswith(f"sku-{tag}-")), top
    assert top[0].startswith(f"sku-{tag}-"), top
    # the decision record names the catalogue version it chose from, and all 5,000 candidates
    decision_id = decide(api, visitor, n=3).json()["decision_id"]
    records = read_topic(stack.bootstrap, stack.decisions_topic,
                         lambda got: bool(got), keep=lambda m: orjson.loads(m.value)["decision_id"] == decision_id)
    assert records, "the decision record"
    record = orjson.loads(records[0].value)
    assert record["catalogue_version"] == version and len(record["candidates"]) >= 5000
