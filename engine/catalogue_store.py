"""The catalogue's entries in Redis (``engine/catalogue.py``; keys in ``engine/layout.py``).

A change is one optimistic transaction: ``WATCH`` the version, read what the change depends on, then
``MULTI``: the entries and the version + 1. A concurrent change makes ``EXEC`` fail and the change is retried
on the new state, so versions never repeat and a precondition (``If-Match``) is checked against what is
really stored. Readers poll the version (one ``GET``) and read everything again when it moved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from engine.catalogue import Catalogue, Entry, PlacementEntry
from engine.layout import CATALOGUE_ACTIONS_KEY, CATALOGUE_PLACEMENTS_KEY, CATALOGUE_VERSION_KEY

#: A change that lost the race this many times in a row gives up (the caller answers 409).
MAX_ATTEMPTS = 20


class Conflict(Exception):
    """The change could not be applied: a precondition failed, or too many concurrent changes."""


#: Given the catalogue as stored and the version the change will have, the entries to write (None deletes).
Plan = Callable[[Catalogue, int], tuple[Mapping[str, Entry | None], Mapping[str, PlacementEntry | None]]]


class CatalogueStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def version(self) -> int:
        raw = await self.redis.get(CATALOGUE_VERSION_KEY)
        return int(raw) if raw else 0

    async def load(self) -> Catalogue:
        """Every entry and the version, read in one transaction (a consistent snapshot)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(CATALOGUE_VERSION_KEY)
            pipe.hgetall(CATALOGUE_ACTIONS_KEY)
            pipe.hgetall(CATALOGUE_PLACEMENTS_KEY)
            version, actions, placements = await pipe.execute()
        return _catalogue(version, actions, placements)

    async def change(self, plan: Plan) -> tuple[int, Catalogue]:
        """Apply the entries ``plan`` asks for as one new version; returns it and the catalogue before.

        ``plan`` may raise (a failed precondition, a validation error): nothing is written then."""
        for _ in range(MAX_ATTEMPTS):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(CATALOGUE_VERSION_KEY)
                    raw_version = await pipe.get(CATALOGUE_VERSION_KEY)
                    actions = await pipe.hgetall(CATALOGUE_ACTIONS_KEY)
                    placements = await pipe.hgetall(CATALOGUE_PLACEMENTS_KEY)
                    before = _catalogue(raw_version, actions, placements)
                    version = before.version + 1
                    action_changes, placement_changes = plan(before, version)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    _write(pipe, CATALOGUE_ACTIONS_KEY, action_changes)
                    _write(pipe, CATALOGUE_PLACEMENTS_KEY, placement_changes)
                    pipe.set(CATALOGUE_VERSION_KEY, version)
                    await pipe.execute()
                    return version, before
                except WatchError:
                    continue
        raise Conflict(f"the catalogue changed {MAX_ATTEMPTS} times while this change was applied; try again")


def _write(pipe: Any, key: str, changes: Mapping[str, Entry | PlacementEntry | None]) -> None:
    deleted = [k for k, v in changes.items() if v is None]
    written = {k: v.to_json() for k, v in changes.items() if v is not None}
    if deleted:
        pipe.hdel(key, *deleted)
    if written:
        pipe.hset(key, mapping=written)


def _catalogue(version: Any, actions: Mapping[Any, Any], placements: Mapping[Any, Any]) -> Catalogue:
    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    return Catalogue(
        int(version) if version else 0,
        {text(k): Entry.from_json(v) for k, v in actions.items()},
        {text(k): PlacementEntry.from_json(v) for k, v in placements.items()},
    )
