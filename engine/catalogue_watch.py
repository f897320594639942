"""Picking catalogue changes up without a restart, in serving and in the workers.

A background task calls :meth:`CatalogueWatch.poll` every ``POLL_S``: one ``GET`` of the version. When it
moved, every entry is read (one transaction), the configuration rebuilt with them off the event loop
(``engine.catalogue.build``: the configuration loader's checks over the whole catalogue), and handed to
``apply``, which swaps it in at once (between two requests: the swap is synchronous on the event loop).
The decide path itself never reads the catalogue from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.catalogue import Catalogue, build
from engine.catalogue_store import CatalogueStore
from engine.config import EngineConfig

log = logging.getLogger(__name__)

#: How often the version is polled: a change is live within about this long (docs/catalogue.md).
POLL_S = 1.0


class CatalogueWatch:
    def __init__(self, store: CatalogueStore, seed: Mapping[str, Any],
                 apply: Callable[[EngineConfig, Catalogue], None]) -> None:
        self.store, self.seed, self.apply = store, seed, apply
        self.catalogue = Catalogue()
        #: when the last rebuild took place, and how long it took (``/v1/admin/catalogue`` reports both)
        self.rebuilt_at: float | None = None
        self.rebuild_seconds = 0.0

    @property
    def version(self) -> int:
        return self.catalogue.version

    async def poll(self, force: bool = False) -> bool:
        """Swap a newer catalogue in; True when one was."""
        if not force and await self.store.version() == self.catalogue.version:
            return False
        cat = await self.store.load()
        if cat.version == self.catalogue.version and not force:
            return False
        started = time.perf_counter()
        config = await asyncio.to_thread(build, self.seed, cat, f"catalogue v{cat.version}")
        if cat.version < self.catalogue.version:  # a slower concurrent poll already swapped a newer one in
            return False
        self.apply(config, cat)
        self.catalogue = cat
        self.rebuilt_at, self.rebuild_seconds = time.time(), time.perf_counter() - started
        log.info("catalogue v%s: %s actions (%.3f s)", cat.version, len(config.actions), self.rebuild_seconds)
        return True
