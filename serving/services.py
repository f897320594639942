"""Everything a request handler needs, created once at start-up and passed explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from engine.config import EngineConfig, load_config
from engine.profile_store import ProfileStore
from engine.scoring import AffinityPopularityScorer, PopularitySnapshot
from engine.settings import Settings
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)
POPULARITY_REFRESH_S = 1.0


@dataclass(slots=True)
class Services:
    settings: Settings
    config: EngineConfig
    redis: aioredis.Redis
    store: ProfileStore
    producer: AIOKafkaProducer
    scorer: AffinityPopularityScorer
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    popularity: PopularitySnapshot = field(default_factory=PopularitySnapshot)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        config = load_config(settings.engine_config)
        budget_s = settings.decide_budget_ms / 1000.0
        redis = aioredis.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=max(budget_s, 0.5),
            socket_connect_timeout=max(budget_s, 0.5), health_check_interval=0,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
            linger_ms=1, request_timeout_ms=10_000,
        )
        await producer.start()
        svc = cls(settings=settings, config=config, redis=redis, store=ProfileStore(redis, config),
                  producer=producer, scorer=AffinityPopularityScorer(config.scoring))
        svc._tasks.append(asyncio.create_task(svc._refresh_popularity_forever()))
        return svc

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.producer.stop()
        await self.redis.aclose()

    async def refresh_popularity(self) -> None:
        landmarks, tops = await self.store.read_popularity()
        now = time.time()
        scores: dict[str, dict[str, float]] = {}
        hl_s = self.config.scoring.popularity_half_life_hours * 3600.0
        for name, pairs in tops.items():
            landmark = float(landmarks.get(f"L:{name}", now))
            factor = 2.0 ** ((landmark - now) / hl_s)
            scores[name] = {m: s * factor for m, s in pairs}
        self.popularity = PopularitySnapshot(scores, now)

    async def _refresh_popularity_forever(self) -> None:
        while True:
            try:
                await self.refresh_popularity()
            except Exception as exc:  # keep the last snapshot; the next refresh may succeed
                self.metrics.errors.inc("popularity_refresh")
                log.debug("popularity refresh failed: %r", exc)
            await asyncio.sleep(POPULARITY_REFRESH_S)
