"""The catalogue's admin API (``/v1/admin/...``, the admin role): actions and placements changed at run time.

Entries live in Redis (``engine/catalogue_store.py``) on top of the configuration file's actions
(``engine/catalogue.py`` says which wins); every change is one new catalogue version, live in this process
at once and in every other API process and worker within about a second (``engine/catalogue_watch.py``).
Bodies are checked by the configuration loader: a problem names the field (``tags``, or ``items[3].tags`` in
a bulk upload). Each action has an ``ETag`` (the version of its last change, ``"0"`` for the file's
unchanged one); ``If-Match`` makes a change conditional on it (412 otherwise), ``If-None-Match: *`` makes a
``PUT`` create only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from engine.catalogue import (
    ACTIVE,
    MAX_ACTION_BYTES,
    MAX_BULK_BYTES,
    MAX_BULK_ITEMS,
    MAX_ENTRIES,
    RETIRED,
    Catalogue,
    Entry,
    PlacementEntry,
    check_actions,
    check_placement,
    effective_tables,
    oversized,
    placement_sizes,
    seed_actions,
    view,
)
from engine.catalogue_store import CatalogueStore, Conflict
from engine.config.errors import Problem
from serving import auth
from serving.asgi import BodyTooLarge, read_limited
from serving.services import REDIS_CALL_TIMEOUT_S, Services

#: every route here is the admin's (routes added later included)
router = APIRouter(dependencies=[auth.require(auth.ADMIN)])
#: one action's body (a bulk upload has its own bound)
MAX_BODY_BYTES = MAX_ACTION_BYTES
MAX_PAGE = 1000


class Refused(Exception):
    """An answer other than 200: status, message and the problems (field, message) if any."""

    def __init__(self, status: int, error: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, list(problems)


def _json(body: Mapping[str, Any], status: int = 200, etag: int | None = None) -> Response:
    headers = {"ETag": f'"{etag}"'} if etag is not None else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _refused(exc: Refused) -> Response:
    body: dict[str, Any] = {"error": exc.error}
    if exc.problems:
        body["problems"] = [{"field": f, "message": m} for f, m in exc.problems]
    return _json(body, exc.status)


def _invalid(problems: Sequence[Problem]) -> Refused:
    first = f"{problems[0][0]}: {problems[0][1]}" if problems[0][0] else problems[0][1]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return Refused(422, first + more, problems)


def _services(request: Request) -> tuple[Services, CatalogueStore]:
    svc: Services = request.app.state.services
    assert svc.catalogue is not None, "Services.start creates the catalogue watch"
    return svc, svc.catalogue.store


async def _body(request: Request, limit: int) -> bytes:
    try:
        return await read_limited(request.scope, request.receive, limit)
    except BodyTooLarge as exc:
        raise Refused(413, f"body: larger than {exc.limit} bytes") from None


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"body: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise Refused(422, "body: expected a JSON object", [("", "expected a JSON object")])
    return body


def _etags(header: str | None) -> list[str] | None:
    if header is None:
        return None
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def _precondition(request: Request, rev: int | None, what: str) -> None:
    """``If-Match`` (the current ETag, or ``*``: it exists) and ``If-None-Match: *`` (it does not)."""
    match, none_match = _etags(request.headers.get("if-match")), _etags(request.headers.get("if-none-match"))
    if match is not None and not (rev is not None and ("*" in match or str(rev) in match)):
        current = "it does not exist" if rev is None else f'its ETag is "{rev}"'
        raise Refused(412, f"If-Match: {what} changed ({current}); read it again and retry")
    if none_match is not None and "*" in none_match and rev is not None:
        raise Refused(412, f'If-None-Match: *: {what} exists (ETag "{rev}")')


def _rev(seed: Mapping[str, Any], cat: Catalogue, action_id: str) -> int | None:
    entry = cat.actions.get(action_id)
    return entry.rev if entry is not None else 0 if action_id in seed_actions(seed) else None


async def _change(svc: Services, store: CatalogueStore, plan: Any) -> int:
    try:
        async with asyncio.timeout(REDIS_CALL_TIMEOUT_S * 4):
            version, _ = await store.change(plan)
    except Conflict as exc:
        raise Refused(409, str(exc)) from None
    assert svc.catalogue is not None
    await svc.catalogue.poll()  # this process serves the change from its next decision
    return version


async def invalid_query_response(request: Request, exc: Exception) -> Response:
    """FastAPI's validation of query parameters (the only ones it checks here), in this API's 422 shape."""
    assert isinstance(exc, RequestValidationError)
    problems = [(".".join(str(p) for p in e["loc"][1:]), str(e["msg"])) for e in exc.errors()]
    return _refused(_invalid(problems or [("", "invalid request")]))


async def refused_response(request: Request, exc: Exception) -> Response:
    """The app's handler of :class:`Refused` (``serving/app.py``)."""
    assert isinstance(exc, Refused)
    return _refused(exc)


# --------------------------------------------------------------------------------------------------
# the catalogue and its actions


@router.get("/v1/admin/catalogue", summary="The catalogue's version and size, stored and loaded here")
async def catalogue(request: Request) -> Response:
    svc, store = _services(request)
    assert svc.catalogue is not None
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        cat = await store.load()
    states = [e.state for e in cat.actions.values()]
    return _json({
        "version": cat.version, "loaded_version": svc.catalogue_version,
        "rebuilt_at": svc.catalogue.rebuilt_at, "rebuild_seconds": svc.catalogue.rebuild_seconds,
        "actions": {"file": len(seed_actions(svc.catalogue.seed)), "entries": len(cat.actions),
                    "active_entries": states.count(ACTIVE), "retired_entries": states.count(RETIRED),
                    "loaded": len(svc.config.actions)},
        "placements": placement_sizes(svc.catalogue.seed, cat),
    })


@router.get("/v1/admin/actions", summary="Actions, the file's and the admin API's, by page")
async def list_actions(request: Request, placement: str | None = None,
                       state: Literal["any", "active", "retired"] = "any",
                       offset: int = Query(0, ge=0, le=10 * MAX_ENTRIES),
                       limit: int = Query(100, ge=1, le=MAX_PAGE)) -> Response:
    svc, store = _services(request)
    assert svc.catalogue is not None
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        cat = await store.load()
    seed = svc.catalogue.seed
    ids = [aid for aid, table in effective_tables(seed, cat).items()
           if (placement is None or placement in (table.get("placements") or ()))
           and (state == "any" or (cat.actions[aid].state if aid in cat.actions else ACTIVE) == state)]
    page = [view(seed, cat, aid) for aid in ids[offset:offset + limit]]
    return _json({"version": cat.version, "total": len(ids), "offset": offset, "actions": page})


@router.get("/v1/admin/actions/{action_id}", summary="One action: its table, state, source and ETag")
async def get_action(action_id: str, request: Request) -> Response:
    svc, store = _services(request)
    assert svc.catalogue is not None
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        cat = await store.load()
    found = view(svc.catalogue.seed, cat, action_id)
    if found is None:
        raise Refused(404, f"unknown action {action_id!r}")
    return _json(found, etag=found["rev"])


@router.put("/v1/admin/actions/{action_id}", summary="Create or replace an action (a retired one comes back)")
async def put_action(action_id: str, request: Request) -> Response:
    svc, store = _services(request)
    assert svc.catalogue is not None
    seed = svc.catalogue.seed
    table = _object(await _body(request, MAX_BODY_BYTES))
    if table.setdefault("id", action_id) != action_id:
        raise _invalid([("id", f"{table['id']!r} differs from the id in the path, {action_id!r}")])
    problems = check_actions(seed, [table], None)
    if problems:
        raise _invalid(problems)
    created: list[bool] = []

    def plan(before: Catalogue, version: int) -> tuple[dict[str, Entry], dict[str, PlacementEntry]]:
        rev = _rev(seed, before, action_id)
        _precondition(request, rev, f"action {action_id!r}")
        if action_id not in before.actions and len(before.actions) >= MAX_ENTRIES:
            raise Refused(409, f"the catalogue holds {MAX_ENTRIES} entries, its limit; retire or reset some")
        entry = Entry(version, ACTIVE, table)
        too_big = oversized(seed, dataclasses.replace(before, actions={**before.actions, action_id: entry}))
        if too_big:
            raise _invalid(too_big)
        created[:] = [rev is None]
        return {action_id: entry}, {}

    version = await _change(svc, store, plan)
    return _json({"catalogue_version": version, "created": created[0], "action": table},
                 201 if created[0] else 200, etag=version)


@router.post("/v1/admin/actions/{action_id}/retire", summary="Retire an action: never eligible again, kept")
async def retire_action(action_id: str, request: Request) -> Response:
    svc, store = _services(request)
    assert svc.catalogue is not None
    seed = svc.catalogue.seed
    retired_at = time.time()

    def plan(before: Catalogue, version: int) -> tuple[dict[str, Entry], dict[str, PlacementEntry]]:
        rev = _rev(seed, before, action_id)
        if rev is None:
            raise Refused(404, f"unknown action {action_id!r}")
        _precondition(request, rev, f"action {action_id!r}")
        table = effective_tables(seed, before)[action_id]
        return {action_id: Entry(version, RETIRED, table, retired_at)}, {}

    version = await _change(svc, store, plan)
    return _json({"catalogue_version": version, "id": action_id, "state": RETIRED, "retired_at": retired_at},
                 etag=version)


@router.post("/v1/admin/actions/{action_id}/reset", summary="Drop the admin API's version: the file's applies")
async def reset_action(action_id: str, request: Request) -> Response:
    svc, store = _services(request)
    assert svc.catalogue is not None
    seed = svc.catalogue.seed

    def plan(before: Catalogue, version: int) -> tuple[dict[str, Entry | None], dict[str, PlacementEntry]]:
        if action_id not in seed_actions(seed):
            known = action_id in before.actions
            raise Refused(409 if known else 404, f"action {action_id!r} is not in the configuration file"
                          + ("; retire it instead" if known else ""))
        if action_id not in before.actions:
            raise Refused(409, f"action {action_id!r} has no admin version: it is the file's already")
        _precondition(request, before.actions[action_id].rev, f"action {action_id!r}")
        return {action_id: None}, {}

    version = await _change(svc, store, plan)
    return _json({"catalogue_version": version, "id": action_id, "source": "file"}, etag=0)


def bulk_items(raw: bytes, content_type: str) -> list[Any]:
    """A JSON array, or JSON lines (one action per line; blank lines skipped); bounded in count and size.

    >>> bulk_items(b'{"id": "a"}\\n\\n{"id": "b"}', "application/x-ndjson")
    [{'id': 'a'}, {'id': 'b'}]
    >>> bulk_items(b'[1, {"id": "' + b"x" * MAX_ACTION_BYTES + b'"}]', "application/json")
    Traceback (most recent call last):
    ...
    serving.admin.Refused: items[1]: 65545 bytes, more than 65536
    """
    text = raw.lstrip()
    if text.startswith(b"[") and "ndjson" not in content_type and "jsonl" not in content_type:
        try:
            items = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, f"body: not a JSON array ({exc})") from None
        if not isinstance(items, list):
            raise Refused(400, "body: not a JSON array")
        _count(len(items))
        for i, item in enumerate(items):
            size = len(orjson.dumps(item))
            if size > MAX_ACTION_BYTES:
                raise Refused(413, f"items[{i}]: {size} bytes, more than {MAX_ACTION_BYTES}")
        return items
    lines = [line for line in raw.split(b"\n") if line.strip()]
    _count(len(lines))
    out = []
    for i, line in enumerate(lines):
        if len(line) > MAX_ACTION_BYTES:
            raise Refused(413, f"items[{i}]: {len(line)} bytes, more than {MAX_ACTION_BYTES}")
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise Refused(400, f"items[{i}]: not JSON ({exc})") from None
    return out


def _count(n: int) -> None:
    if n > MAX_BULK_ITEMS:
        raise Refused(413, f"items: {n} actions, more than {MAX_BULK_ITEMS} per request")
    if n == 0:
        raise Refused(422, "items: no action given", [("items", "expected at least one action")])


@router.post("/v1/admin/actions/bulk", summary="Create or replace many actions at once (one version)")
async def bulk_actions(request: Request) -> Response:
    """The body: a JSON array of actions, or JSON lines (``application/x-ndjson``). All are checked first; one
    problem refuses the whole upload (422, every problem with its ``items[i].field``)."""
    svc, store = _services(request)
    assert svc.catalogue is not None
    seed = svc.catalogue.seed
    items = bulk_items(await _body(request, MAX_BULK_BYTES), request.headers.get("content-type", ""))
    problems = await asyncio.to_thread(check_actions, seed, items, "items")
    if problems:
        raise _invalid(problems[:100])
    counts = {"created": 0, "updated": 0}

    def plan(before: Catalogue, version: int) -> tuple[dict[str, Entry], dict[str, PlacementEntry]]:
        entries = {item["id"]: Entry(version, ACTIVE, item) for item in items}
        new = sum(1 for k in entries if k not in before.actions)
        if len(before.actions) + new > MAX_ENTRIES:
            raise Refused(409, f"the catalogue would hold {len(before.actions) + new} entries, more than "
                               f"{MAX_ENTRIES}; retire or reset some")
        too_big = oversized(seed, dataclasses.replace(before, actions={**before.actions, **entries}))
        if too_big:
            raise _invalid(too_big)
        counts["created"] = sum(1 for k in entries if _rev(seed, before, k) is None)
        counts["updated"] = len(entries) - counts["created"]
        return entries, {}

    version = await _change(svc, store, plan)
    return _json({"catalogue_version": version, **counts})


# --------------------------------------------------------------------------------------------------
# placements


def _placement_view(svc: Services, cat: Catalogue, placement: str) -> dict[str, Any]:
    assert svc.catalogue is not None
    table = next(p for p in svc.catalogue.seed.get("placement", []) if p.get("id") == placement)
    entry = cat.placements.get(placement)
    live = [aid for aid, t in effective_tables(svc.catalogue.seed, cat).items()
            if placement in (t.get("placements") or ()) and cat.actions.get(aid, Entry(0, ACTIVE, {})).state == ACTIVE]
    return {"id": placement, "rev": entry.rev if entry else 0,
            "max_items": (entry.table if entry else {}).get("max_items", table.get("max_items", 5)),
            "policy": table.get("policy", "affinity_popularity"), "actions": live}


def _known_placement(svc: Services, placement: str) -> None:
    assert svc.catalogue is not None
    if placement not in {p.get("id") for p in svc.catalogue.seed.get("placement", [])}:
        raise Refused(404, f"unknown placement {placement!r} (placements are declared in the configuration file)")


@router.get("/v1/admin/placements/{placement}", summary="A placement: max_items, policy, its live actions")
async def get_placement(placement: str, request: Request) -> Response:
    svc, store = _services(request)
    _known_placement(svc, placement)
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        cat = await store.load()
    found = _placement_view(svc, cat, placement)
    return _json(found, etag=found["rev"])


@router.put("/v1/admin/placements/{placement}", summary="Change a placement's max_items and which actions it holds")
async def put_placement(placement: str, request: Request) -> Response:
    """``{"max_items": 4, "actions": ["a", "b"]}`` (either): ``actions`` is the complete list of the actions the
    placement holds: listed ones are added to it, others taken out (an action in no other placement cannot
    be taken out: retire it)."""
    svc, store = _services(request)
    assert svc.catalogue is not None
    seed = svc.catalogue.seed
    _known_placement(svc, placement)
    body = _object(await _body(request, MAX_BULK_BYTES))
    wanted = body.pop("actions", None)
    if wanted is not None and (not isinstance(wanted, list) or not all(isinstance(a, str) for a in wanted)):
        raise _invalid([("actions", "expected an array of action ids")])
    if wanted is not None and len(set(wanted)) < len(wanted):
        raise _invalid([("actions", "an action id is listed twice")])

    def plan(before: Catalogue, version: int) -> tuple[dict[str, Entry], dict[str, PlacementEntry]]:
        entry = before.placements.get(placement)
        _precondition(request, entry.rev if entry else 0, f"placement {placement!r}")
        problems = check_placement(seed, before, placement, body) if body else []
        changes: dict[str, Entry] = {}
        if wanted is not None:
            tables = effective_tables(seed, before)
            listed = set(wanted)
            for i, aid in enumerate(wanted):
                if aid not in tables or (aid in before.actions and before.actions[aid].state == RETIRED):
                    problems.append((f"actions[{i}]", f"unknown or retired action {aid!r}"))
            for aid, table in tables.items():
                names = list(table.get("placements") or ())
                if (aid in listed) == (placement in names):
                    continue
                names = [*names, placement] if aid in listed else [p for p in names if p != placement]
                if not names:
                    problems.append(("actions", f"action {aid!r} is in no other placement: retire it instead"))
                    continue
                state = before.actions[aid].state if aid in before.actions else ACTIVE
                changes[aid] = Entry(version, state, {**table, "placements": names},
                                     before.actions[aid].retired_at if aid in before.actions else None)
        if problems:
            raise _invalid(problems)
        return changes, {placement: PlacementEntry(version, {**(entry.table if entry else {}), **body})}

    version = await _change(svc, store, plan)
    async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
        cat = await store.load()
    return _json({"catalogue_version": version, **_placement_view(svc, cat, placement)}, etag=version)


def documented_responses(r: Any, auth_responses: Mapping[str, Any], error: Mapping[str, Any],
                         json_object: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every status each route here answers, for ``serving/openapi_doc.py``."""
    problems = {"application/json": {"schema": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "problems": {"type": "array", "items": {
            "type": "object", "required": ["field", "message"],
            "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}}}}}}
    ok = r("done: the new catalogue_version, live here at once and everywhere within seconds", json_object)
    refused = {"409": r("too many concurrent changes, or the catalogue is full", error),
               "412": r("If-Match / If-None-Match not satisfied", error)}
    invalid = r("invalid: every problem with the field it names", problems)
    body = {"400": r("the body is not JSON", error), "413": r("the body is too large", error)}
    action = "/v1/admin/actions/{action_id}"
    return {
        ("get", "/v1/admin/catalogue"): {"200": r("version and sizes", json_object), **auth_responses},
        ("get", "/v1/admin/actions"): {"200": r("a page of actions", json_object), "422": invalid,
                                       **auth_responses},
        ("get", action): {"200": r("the action", json_object), "404": r("unknown action", error), **auth_responses},
        ("put", action): {"200": ok, "201": r("created", json_object), **body, "422": invalid, **refused,
                          **auth_responses},
        ("post", f"{action}/retire"): {"200": ok, "404": r("unknown action", error), **refused, **auth_responses},
        ("post", f"{action}/reset"): {"200": ok, "404": r("unknown action", error),
                                      **refused, "409": r("no admin version, or not in the file", error),
                                      **auth_responses},
        ("post", "/v1/admin/actions/bulk"): {"200": ok, **body, "422": invalid,
                                             "409": refused["409"], **auth_responses},
        ("get", "/v1/admin/placements/{placement}"): {"200": r("the placement", json_object),
                                                      "404": r("unknown placement", error), **auth_responses},
        ("put", "/v1/admin/placements/{placement}"): {"200": ok, "404": r("unknown placement", error), **body,
                                                      "422": invalid, **refused, **auth_responses},
    }
