"""The worker: a Faust application hosting the write side.

* ``StreamService``: ``events`` and ``decisions`` in batches on a plain aiokafka group consumer
  (``streams/consumer.py``; Faust's per-event stream cost more CPU than our whole feature pipeline):
  events -> profile features in Redis (+ rewards into the join, interactions to co-visitation),
  decisions -> reward windows opened, impressions counted; offsets committed by hand after the batch's
  Redis writes and Kafka sends are done;
* ``learn`` (a Faust agent): ``learning`` (keyed by placement) -> River/numpy models -> signed snapshots;
* a timer settles decisions whose reward window ended (default reward).

Roles (``settings.worker_roles``): ``python -m streams worker -l info`` runs both in one process (the
simplest deployment); ``python -m streams ingest`` runs only the write side and ``python -m streams learner``
only the learning. Splitting them is what we run under load: learning (co-visitation from every
interaction, snapshot pickling every few seconds) then no longer shares the ingest loop, whose events
would otherwise wait behind it (measured in docs/performance.md). Scale ingest by starting more
processes (partitions are shared by the consumer group); the learning topic is keyed by placement, so
learners scale by placements.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
import mode
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from engine.catalogue_store import CatalogueStore
from engine.catalogue_watch import POLL_S as CATALOGUE_POLL_S
from engine.catalogue_watch import CatalogueWatch
from engine.config import parse_config
from engine.config.compose import load_document
from engine.erasure import ErasureStore
from engine.faults import is_infrastructure
from engine.identity import IdentityPolicy
from engine.learning_store import LearningStore
from engine.production import production_problems, refuse_to_start
from engine.profile_store import ProfileStore
from engine.redis_connection import HiredisPackedConnection, make_redis
from engine.runtime import batch_young_threshold, freeze_startup_heap
from engine.settings import load_settings
from streams.attribution import AttributionFeed
from streams.clusters import ClusterFeed
from streams.collaborative import CollaborativeFeed
from streams.consent import ConsentGate, ConsentWithdrawals
from streams.consumer import BatchLoop, Outbox, Write
from streams.faust_auth import faust_credentials
from streams.learner import PlacementLearner
from streams.metrics import WorkerMetrics
from streams.pipeline import BatchProcessor, PreparedBatch, Record
from streams.rewards import RewardJoiner
from streams.segments import SegmentTracker

log = logging.getLogger(__name__)
settings = load_settings()
refuse_to_start("worker", production_problems(settings))  # outside PULSE_ENV=dev: no development secrets
seed = load_document(settings.engine_config)  # also the catalogue's seed (engine/catalogue.py)
config = parse_config(seed, str(settings.engine_config))
signing_key = settings.model_signing_key.encode()
INGEST, LEARN = "ingest" in settings.worker_roles, "learn" in settings.worker_roles
#: The longest wait between two attempts while Redis or Kafka is away.
MAX_BACKOFF_S = 5.0

app = faust.App(
    # the Faust group consumes only ``learning``: an ingest-only process stays out of it, so scaling ingest
    # does not rebalance the learners
    settings.worker_app_id if LEARN else f"{settings.worker_app_id}-ingest",
    broker=[f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")],
    broker_credentials=faust_credentials(settings.kafka_security),
    store="memory://",
    datadir=settings.worker_data_dir,
    web_enabled=False,
    topic_partitions=settings.events_partitions,
    topic_allow_declare=False,  # topics are created by infra/topics.py with their partition counts
    broker_commit_every=1000,
    broker_commit_interval=1.0,
    producer_acks=-1,
    consumer_auto_offset_reset="earliest",
    # a crashed worker's partitions move to the others after this long (Kafka's default is 45 s)
    broker_session_timeout=settings.worker_session_timeout,
    broker_heartbeat_interval=min(3.0, settings.worker_session_timeout / 3),
)


def raw_topic(name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


learning_topic = raw_topic(settings.learning_topic)


class Components:
    """Created on first use inside the worker's event loop (Redis and Kafka clients bind to a loop)."""

    def __init__(self) -> None:
        self.redis = make_redis(settings.redis_url, cluster=settings.redis_cluster, decode_responses=True,
                                connection_class=HiredisPackedConnection)
        self.learning_store = LearningStore(self.redis, settle_lease=settings.reward_settle_lease)
        # dead letters and learning examples: a commit waits for their acknowledgements (streams/consumer.py)
        self.outbox = Outbox(settings.kafka_bootstrap, kafka_kwargs=settings.kafka_security.client_kwargs())
        self.joiner = RewardJoiner(self.learning_store, config, self.send_learning_example, self.send_dead_letter)
        store = ProfileStore(self.redis, config)
        erasures = ErasureStore(self.redis, config, settings.erasure_retention_days * 86400)
        withdrawals = ConsentWithdrawals(store, erasures, self.send_learning_example, config.collaborative.enabled)
        feed = CollaborativeFeed(config, self.send_learning_example, ConsentGate(store, config))
        hooks = [self.joiner.on_events, feed.on_events, withdrawals.on_events]
        #: touches and conversions credited in the stream (engine/attribution.py)
        self.attribution = AttributionFeed(self.redis, config) if config.attribution.enabled else None
        if self.attribution is not None:
            hooks.append(self.attribution.on_events)
        self.processor = BatchProcessor(store, self.send_dead_letter, hooks=hooks,
                                        limits=settings.event_limits, identity=IdentityPolicy.from_settings(settings),
                                        views=bool(config.segments))
        self.segments = SegmentTracker(self.redis, config, self.send_segment_change)
        self.clusters = ClusterFeed(self.redis, config, self.send_learning_example)
        self.learner = PlacementLearner(config)
        # the learner reads actions (their features, for examples that do not carry them) and attribution (which
        # actions it counts by name, their placements): both follow the catalogue's admin changes
        self.catalogue = CatalogueWatch(CatalogueStore(self.redis), seed, self._use_catalogue)
        self.restored = False
        self._ready = asyncio.Lock()

    async def ready(self) -> Components:
        async with self._ready:
            await self.outbox.start()
        return self

    def _use_catalogue(self, changed: Any, _catalogue: Any) -> None:
        self.learner.config = changed
        if self.attribution is not None:
            self.attribution.config = changed

    async def send_dead_letter(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        await self.outbox.send(settings.dlq_topic, key, value, headers)

    async def send_learning_example(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        return await self.outbox.send(settings.learning_topic, key, value)

    async def send_segment_change(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        return await self.outbox.send(settings.segments_topic, key, value)

    async def ingest(self, prepared: PreparedBatch, sent: Callable[[], None]) -> None:
        """Write a batch, then publish the segment changes of the profiles it touched (both idempotent, so a
        retry after a fault repeats nothing that was done)."""
        stats = await self.processor.apply(prepared, sent)
        if self.clusters:  # profile vectors for the behavioural clusters' learner (streams/clusters.py)
            await self.clusters.on_owners(stats.owners, time.time())
        if self.segments:
            published = await self.segments.update(stats.owners, time.time(), views=stats.views)
            if published:
                await self.processor.store.incr_worker_counters({"segment_changes": published})


_components: Components | None = None


def components() -> Components:
    global _components
    if _components is None:
        _components = Components()
    return _components


async def retry_forever(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Never drop a batch: on an infrastructure fault (Redis unreachable, out of memory or restarted, Kafka
    away; ``engine.faults``) wait with a bounded exponential backoff and run ``fn`` again (offsets are not
    committed meanwhile, and every write is idempotent). The pause is logged and, once over, counted in the
    worker counters (``pulse_worker_infra_pauses_total``, ``pulse_worker_infra_pause_seconds_total``)."""
    delay, started = 0.1, None
    while True:
        try:
            result = await fn()
        except Exception as exc:
            if not (is_infrastructure(exc) or isinstance(exc, KafkaError)):
                raise
            if started is None:
                started = time.monotonic()
                log.warning("%s paused: %s (%r); retrying with backoff", what, type(exc).__name__, exc)
            else:
                log.info("%s still paused (%r); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        if started is not None:
            paused = time.monotonic() - started
            log.warning("%s resumed after %.1fs", what, paused)
            with contextlib.suppress(Exception):  # a counter must not fail the batch it follows
                store = components().processor.store
                await store.incr_worker_counters({"infra_pauses": 1})
                await store.add_worker_seconds({"infra_pause": paused})
        return result


def stream_consumer() -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.worker_stream_group or f"{settings.worker_app_id}-stream",
        client_id=f"{settings.worker_app_id}-stream",
        enable_auto_commit=False,  # committed by BatchLoop after the batch is applied and its sends acked
        auto_offset_reset="earliest",
        max_poll_records=settings.worker_batch_size,
        session_timeout_ms=int(settings.worker_session_timeout * 1000),
        heartbeat_interval_ms=int(min(3.0, settings.worker_session_timeout / 3) * 1000),
        **settings.kafka_security.client_kwargs(),
    )


def quiet_root_logger() -> None:
    """Faust's start-up spinner (``-l warn``) sets the root logger to DEBUG, so every ``log.debug`` of aiokafka
    and Faust would build a record: put the root level back to the console handler's once started."""
    root = logging.getLogger()
    levels = [h.level for h in root.handlers if type(h).__name__ != "SpinnerHandler" and h.level > logging.NOTSET]
    if root.level < logging.INFO:
        root.setLevel(min(levels) if levels else logging.WARNING)


class StreamService(mode.Service):
    """Runs the batch loop over ``events`` and ``decisions`` for the lifetime of the worker."""

    loop_: BatchLoop | None = None
    metrics: WorkerMetrics | None = None
    _metrics_server: Any = None

    async def on_start(self) -> None:
        c = await components().ready()
        self._published = {}
        self._faults: dict[str, int] = {}
        self._kafka_paused = 0.0

        async def events(records: Sequence[Record]) -> Write:
            prepared = await c.processor.prepare(records)  # no Redis: parsed and dead-lettered once
            return lambda sent: retry_forever("ingest", lambda: c.ingest(prepared, sent))

        async def decisions(records: Sequence[Record]) -> Write:
            logged = await c.joiner.prepare_decisions(records)
            return lambda sent: retry_forever("decisions", lambda: c.joiner.apply_decisions(logged, time.time()))

        handlers = {settings.events_topic: events, settings.decisions_topic: decisions}
        self.loop_ = BatchLoop(stream_consumer, [settings.events_topic, settings.decisions_topic], handlers, c.outbox,
                               max_records=settings.worker_batch_size,
                               commit_interval=settings.worker_commit_interval)
        await self.loop_.start()
        # the worker's own metrics, on its own port (the API exports only its own)
        self.metrics = WorkerMetrics()
        c.processor.store.on_counters, c.processor.store.on_seconds = self.metrics.count, self.metrics.add_seconds
        self._metrics_server = (self.metrics.serve(settings.worker_metrics_port)
                                if settings.worker_metrics_port else None)
        quiet_root_logger()
        # per-batch garbage no longer makes the collector re-scan the start-up heap, nor the batches in flight
        freeze_startup_heap(batch_young_threshold(settings.worker_batch_size))

    @mode.Service.task
    async def _run(self) -> None:
        assert self.loop_ is not None
        await self.loop_.run()

    _published: dict[str, float]

    @mode.Service.timer(1.0)
    async def _publish_loop_seconds(self) -> None:
        """Where the batch loop's wall time went, added to the worker counters (/metrics shows
        ``pulse_worker_loop_<step>_seconds_total``): a loop whose time goes to ``wait_writes`` and ``head_start``
        waits on Redis, one that spends it in ``prepare`` needs CPU."""
        if self.loop_ is None:
            return
        now = dict(self.loop_.seconds)
        delta = {f"loop_{k}": v - self._published.get(k, 0.0) for k, v in now.items()}
        store = components().processor.store
        await retry_forever("loop seconds", lambda: store.add_worker_seconds(delta))
        self._published = now
        # Kafka faults the loop waited out: sends sent again, sends given up, commits retried
        outbox = components().outbox
        faults = {"kafka_resends": outbox.resent, "kafka_dropped": outbox.dropped,
                  "kafka_commit_failures": self.loop_.commit_failures,
                  "kafka_pauses": self.loop_.kafka.pauses,
                  "rewards_resent": components().joiner.stats.resent}
        counts = {k: v - self._faults.get(k, 0) for k, v in faults.items()}
        if any(counts.values()):
            await retry_forever("fault counters", lambda: store.incr_worker_counters(counts))
            self._faults = faults
        paused = self.loop_.kafka.seconds - self._kafka_paused
        if paused > 0:  # pulse_worker_kafka_pause_seconds_total
            await retry_forever("fault counters", lambda: store.add_worker_seconds({"kafka_pause": paused}))
            self._kafka_paused += paused

    @mode.Service.timer(1.0)
    async def _publish_lag(self) -> None:
        """Consumer lag per partition, for ``pulse_worker_consumer_lag``."""
        if self.loop_ is not None and self.metrics is not None:
            self.metrics.set_lag(await self.loop_.lag())

    async def on_stop(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self.loop_ is not None:
            await self.loop_.stop()


async def learn(stream: faust.StreamT[Any]) -> None:
    c = await components().ready()
    if not c.restored:
        await retry_forever("model restore", lambda: c.learner.restore(c.learning_store, signing_key))
        c.restored = True
        freeze_startup_heap(batch_young_threshold(settings.worker_batch_size))
    # faust's StreamT protocol omits take_events, which its Stream (what agents get) has
    async for events in stream.take_events(  # type: ignore[attr-defined]  # see above
            settings.worker_batch_size, within=settings.worker_batch_timeout):
        for e in events:
            try:
                c.learner.learn(orjson.loads(e.message.value))
            except Exception as exc:  # a malformed example must not stop learning
                log.warning("skipping learning example at %s/%s: %r", e.message.partition, e.message.offset, exc)
        for placement in c.learner.due_snapshots():
            await retry_forever("snapshot",
                                functools.partial(c.learner.snapshot, c.learning_store, signing_key, placement))


async def settle_expired_rewards() -> None:
    c = await components().ready()
    await retry_forever("reward expiry", lambda: c.joiner.expire(time.time()))


async def publish_due_snapshots() -> None:
    """Time-based snapshots also happen when no new example arrives."""
    c = await components().ready()
    for placement in c.learner.due_snapshots():
        await retry_forever("snapshot", functools.partial(c.learner.snapshot, c.learning_store, signing_key, placement))


async def publish_clock_segment_changes() -> None:
    """Segments that time alone changes (no visit in 30 days): the profiles whose time has come."""
    c = await components().ready()
    published = await retry_forever("segment clock", lambda: c.segments.tick(time.time()))
    if published:
        await retry_forever("segment counters",
                            lambda: c.processor.store.incr_worker_counters({"segment_changes": published}))


async def follow_catalogue() -> None:
    """Catalogue changes made through the admin API, within ``CATALOGUE_POLL_S`` (engine/catalogue_watch.py)."""
    c = await components().ready()
    try:
        await c.catalogue.poll()
    except Exception as exc:  # Redis away or a bad entry: keep the catalogue loaded, try again next time
        log.warning("catalogue not refreshed: %r", exc)


if INGEST:
    app.service(StreamService)
    app.timer(interval=1.0)(settle_expired_rewards)
    if config.segments:
        app.timer(interval=1.0)(publish_clock_segment_changes)
if LEARN:
    app.agent(learning_topic, name="streams.app.learn")(learn)
    app.timer(interval=1.0)(publish_due_snapshots)
    app.timer(interval=CATALOGUE_POLL_S)(follow_catalogue)
