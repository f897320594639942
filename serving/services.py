"""Everything a request handler needs, created once at start-up and passed explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from engine.catalogue import Catalogue
from engine.catalogue_store import CatalogueStore
from engine.catalogue_watch import POLL_S as CATALOGUE_POLL_S
from engine.catalogue_watch import CatalogueWatch
from engine.config import EngineConfig, parse_config
from engine.config.compose import load_document
from engine.decisions import action_features
from engine.kafka_producer import keep_batches_until_delivered
from engine.layout import popularity_landmark_field
from engine.learning_store import LearningStore
from engine.policies import Candidate
from engine.profile_store import ProfileStore
from engine.redis_connection import make_redis
from engine.scoring import AffinityPopularityScorer, PopularitySnapshot
from engine.segments import Segments
from engine.settings import Settings
from serving import nba
from serving.admission import LatencyLimit
from serving.decision_log import DecisionLog
from serving.metrics import ServingMetrics
from serving.models import ModelRegistry
from serving.read_batch import ReadBatcher

log = logging.getLogger(__name__)
POPULARITY_REFRESH_S = 1.0
MODEL_REFRESH_S = 0.5
#: deadline of Redis calls outside the decide hot path (the client itself has no socket timeout)
REDIS_CALL_TIMEOUT_S = 5.0
#: the producer's batch size per partition (aiokafka's default is 16 KiB)
DECISION_BATCH_BYTES = 256 << 10


class LeanConnectionPool(aioredis.ConnectionPool):
    """redis-py's pool without its per-call bookkeeping: redis-py 8 awaits observability hooks (connection
    counts by state, a "released" event) on every get and release, a large share of a small command's
    client CPU (docs/performance-history.md). Same checks otherwise: a
    connection is (re)connected, and must have no unread data, before use."""

    async def get_connection(self, command_name: object = None, *keys: object, **options: object) -> Any:
        connection = self.get_available_connection()  # synchronous: no other task can interleave
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: Any) -> None:
        self._in_use_connections.discard(connection)
        if connection.should_reconnect():
            await connection.disconnect()
        self._available_connections.append(connection)


@dataclass(slots=True)
class Services:
    settings: Settings
    config: EngineConfig
    redis: aioredis.Redis
    store: ProfileStore
    producer: AIOKafkaProducer
    scorer: AffinityPopularityScorer
    learning: LearningStore
    models: ModelRegistry
    metrics: ServingMetrics
    decision_log: DecisionLog | None = None
    reads: ReadBatcher | None = None  # the decisions' profile reads, one pipeline per event-loop turn
    admission: LatencyLimit | None = None  # None: load shedding off (DECIDE_SHED_TARGET_MS=0)
    #: the proxy's receipt-time header, as ASGI gives header names (lower case); b"": not read
    queue_header: bytes = b""
    popularity: PopularitySnapshot = field(default_factory=PopularitySnapshot)
    _placement_action_ids: dict[str, list[str]] = field(default_factory=dict)
    candidates: dict[str, Candidate] = field(default_factory=dict)
    segments: Segments = field(default_factory=lambda: Segments(()))
    #: per action id, the JSON of its entry in a decide answer before and after the score
    answer_parts: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: the admin-changed catalogue on top of the file (engine/catalogue.py); None: the file alone (tests)
    catalogue: CatalogueWatch | None = None
    #: next-best action: the population's activity hours and channel rates (serving/nba.py)
    contact_prior: nba.ContactPrior = field(default_factory=nba.ContactPrior)

    @property
    def placement_action_ids(self) -> dict[str, list[str]]:
        return self._placement_action_ids

    @property
    def catalogue_version(self) -> int:
        return self.catalogue.version if self.catalogue is not None else 0

    def __post_init__(self) -> None:
        self.segments = Segments(self.config.segments)
        self._derive()

    def use_catalogue(self, config: EngineConfig, catalogue: Catalogue | None = None) -> None:
        """Swap in a configuration whose actions and placements changed (engine/catalogue_watch.py): what is
        derived from the actions is rebuilt first, then everything is replaced with no await in between."""
        old = self.config
        self.config = config
        try:
            self._derive()
        except BaseException:
            self.config = old
            raise

    def _derive(self) -> None:
        self._placement_action_ids = {p: [a.id for a in self.config.actions_for(p)] for p in self.config.placements}
        # policy candidates are built once per action, not per request
        self.candidates = {a.id: Candidate(a.id, action_features(a, self.config.affinities))
                           for a in self.config.actions.values()}
        self.answer_parts = {
            a.id: (b'{"action_id":' + orjson.dumps(a.id) + b',"score":',
                   b"," + orjson.dumps({"title": a.title, "category": a.category, "payload": a.payload})[1:])
            for a in self.config.actions.values()}

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        seed = load_document(settings.engine_config)
        config = parse_config(seed, str(settings.engine_config))
        budget_s = settings.decide_budget_ms / 1000.0
        # No socket_timeout: with one, redis-py wraps every send in asyncio.wait_for (a task per command) and
        # every read in a timeout. Every call has its own deadline instead: the decide budget on the profile
        # read, REDIS_CALL_TIMEOUT_S on background refreshes and the admin routes, wait_for in health checks.
        redis = make_redis(
            settings.redis_url, cluster=settings.redis_cluster, pool_class=LeanConnectionPool,
            decode_responses=True, socket_timeout=None,
            socket_connect_timeout=max(budget_s, 0.5), health_check_interval=0,
            # redis-py's default pool (100) raises past 100 concurrent decides instead of waiting (per node)
            max_connections=1000,
        )
        # max_batch_size: the decision log hands over one batch per partition per flush, and a partition with a
        # batch in flight waits for it; with the default 16 KiB (~8 records of ~2 KB) a loaded machine shipped
        # fewer decisions than it made and the backlog grew (see serving.decision_log). 256 KiB per partition
        # stays well under the broker's 1 MiB message.max.bytes.
        producer = keep_batches_until_delivered(AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
            linger_ms=1, request_timeout_ms=10_000, max_batch_size=DECISION_BATCH_BYTES,
            **settings.kafka_security.client_kwargs(),
        ))  # an outage longer than request_timeout_ms must not break it for good (engine.kafka_producer)
        await producer.start()
        for topic in (settings.events_topic, settings.decisions_topic):
            # fetch partition metadata now, not on the first request (it costs a few hundred ms)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.partitions_for(topic), timeout=10)
        metrics = ServingMetrics()
        learning = LearningStore(redis)
        svc = cls(settings=settings, config=config, redis=redis, store=ProfileStore(redis, config),
                  producer=producer, scorer=AffinityPopularityScorer(config.scoring), learning=learning,
                  models=ModelRegistry(config, learning, settings.model_signing_key.encode(), metrics),
                  metrics=metrics)
        svc.decision_log = DecisionLog(producer, settings.decisions_topic, metrics,
                                       max_buffered=settings.decision_log_max_buffered)
        svc.reads = ReadBatcher(redis, metrics)
        svc.queue_header = settings.decide_queue_header.strip().lower().encode("latin-1")
        if settings.decide_shed_target_ms > 0:
            svc.admission = LatencyLimit(settings.decide_shed_target_ms / 1000.0,
                                         minimum=settings.decide_shed_min_in_flight,
                                         maximum=settings.decide_shed_max_in_flight)
            metrics.admission_limit.value = svc.admission.limit
        svc.catalogue = CatalogueWatch(CatalogueStore(redis), seed, svc.use_catalogue)
        try:  # serve what the admin API changed from the first request; Redis away: the file, until it is back
            async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
                await svc.catalogue.poll()
        except Exception as exc:
            log.warning("catalogue not read at start-up, serving the file's until it is: %r", exc)
        svc._tasks.append(asyncio.create_task(svc._every(CATALOGUE_POLL_S, svc.catalogue.poll)))
        svc._tasks.append(asyncio.create_task(svc._every(POPULARITY_REFRESH_S, svc.refresh_popularity)))
        svc._tasks.append(asyncio.create_task(svc._every(MODEL_REFRESH_S, svc.models.refresh)))
        if any(p.channels for p in config.placements.values()):
            svc._tasks.append(asyncio.create_task(svc._every(POPULARITY_REFRESH_S, svc.refresh_contact_prior)))
        return svc

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.decision_log is not None:
            await self.decision_log.close()
        await self.producer.stop()
        await self.redis.aclose()

    async def refresh_popularity(self) -> None:
        shards = await self.store.read_popularity()
        now = time.time()
        scores: dict[str, dict[str, float]] = {}
        hl_s = self.config.scoring.popularity_half_life_hours * 3600.0
        for landmarks, tops in shards:  # a Redis Cluster's shards, each with its own landmarks: summed
            for name, pairs in tops.items():
                landmark = float(landmarks.get(popularity_landmark_field(name), now))
                factor = 2.0 ** ((landmark - now) / hl_s)
                into = scores.setdefault(name, {})
                for m, s in pairs:
                    into[m] = into.get(m, 0.0) + s * factor
        self.popularity = PopularitySnapshot(scores, now)

    async def refresh_contact_prior(self) -> None:
        await nba.refresh_contact_prior(self)

    async def _every(self, seconds: float, refresh: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                async with asyncio.timeout(REDIS_CALL_TIMEOUT_S):
                    await refresh()
            except Exception as exc:  # keep what is loaded; the next refresh may succeed
                self.metrics.errors.inc(refresh.__name__)
                log.debug("%s failed: %r", refresh.__name__, exc)
            await asyncio.sleep(seconds)
