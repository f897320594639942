"""Feeds profile vectors to the behavioural clusters' learner (engine/clusters.py).

After a batch is applied, the profiles it changed (at most ``max_profiles_per_batch`` of them) are read in one
pipeline, turned into vectors and sent as one ``profiles`` message to the ``learning`` topic under one key, so
exactly one learner owns the model. A profile whose owner withdrew consent to personalisation is left out.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import redis.asyncio as aioredis

from engine.clusters import CLUSTERS_KEY, vector
from engine.config import EngineConfig
from engine.features import RawProfile, decode
from engine.layout import subject_id, subject_profile_key
from engine.learning_messages import profiles_message
from streams.rewards import ExampleSink


class ClusterFeed:
    def __init__(self, redis: aioredis.Redis, config: EngineConfig, emit: ExampleSink) -> None:
        self.redis, self.config, self.emit = redis, config, emit
        self.settings = config.clusters
        self.sent = 0

    def __bool__(self) -> bool:
        return self.settings.enabled

    async def on_owners(self, owners: Collection[str], now: float) -> int:
        """Send the vectors of these profiles (subjects, ``engine.layout``); returns how many."""
        if not self.settings.enabled or not owners:
            return 0
        chosen = list(dict.fromkeys(owners))[: self.settings.max_profiles_per_batch]
        pipe = self.redis.pipeline(transaction=False)
        for owner in chosen:
            pipe.hgetall(subject_profile_key(owner))
        hashes = cast(list[dict[str, str]], await pipe.execute())
        rows: list[list[object]] = []
        for owner, h in zip(chosen, hashes, strict=True):
            if not h:
                continue
            profile = decode(subject_id(owner), RawProfile(hash=h), self.config, now)
            if profile.exists and profile.personalisation_allowed:
                rows.append([vector(profile, self.settings.feature, now), max(0.0, profile.monetary)])
        if rows:
            await self.emit(CLUSTERS_KEY, profiles_message(rows))
            self.sent += len(rows)
        return len(rows)
