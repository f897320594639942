"""Runtime settings, read once from environment variables.

Every setting has a documented default that works with the local services started by ``infra/``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from schemas.limits import DEFAULT_LIMITS, EventLimits

if TYPE_CHECKING:
    from engine.kafka_client import KafkaSecurity

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class SettingsError(ValueError):
    """An environment variable holds a value the setting cannot take; the message names both."""


def _bad(name: str, value: str, expected: str) -> SettingsError:
    return SettingsError(f"{name}={value!r}: expected {expected}")


def _int(name: str, default: int, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer setting in ``[minimum, maximum]``.

    >>> os.environ["PULSE_DOCTEST_INT"] = "abc"
    >>> _int("PULSE_DOCTEST_INT", 1)
    Traceback (most recent call last):
    ...
    engine.settings.SettingsError: PULSE_DOCTEST_INT='abc': expected an integer >= 1
    >>> del os.environ["PULSE_DOCTEST_INT"]
    """
    expected = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    value = _env(name, str(default))
    try:
        number = int(value)
    except ValueError:
        raise _bad(name, value, expected) from None
    if number < minimum or (maximum is not None and number > maximum):
        raise _bad(name, value, expected)
    return number


def _float(name: str, default: float, *, minimum: float = 0.0, positive: bool = True) -> float:
    """A finite number setting: ``> minimum`` when ``positive``, else ``>= minimum``."""
    expected = f"a finite number {'>' if positive else '>='} {minimum:g}"
    value = _env(name, str(default))
    try:
        number = float(value)
    except ValueError:
        raise _bad(name, value, expected) from None
    if not math.isfinite(number) or number < minimum or (positive and number == minimum):
        raise _bad(name, value, expected)
    return number


def _bool(name: str, default: bool) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off)."""
    value = _env(name, "true" if default else "false")
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise _bad(name, value, "true or false")


def _text(name: str, default: str, *, pattern: str = r".+", expected: str = "a non-empty string") -> str:
    """A string setting matching ``pattern`` (whole)."""
    value = _env(name, default)
    if not re.fullmatch(pattern, value):
        raise _bad(name, value, expected)
    return value


#: An HTTP header name (RFC 9110 token), or empty.
_HEADER = r"[!#$%&'*+.^_`|~0-9A-Za-z-]*"
#: Kafka's rule for topic names.
_TOPIC = r"[A-Za-z0-9._-]{1,249}"


def _topic(name: str, default: str) -> str:
    return _text(name, default, pattern=_TOPIC, expected="a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)")


def _header(name: str, default: str) -> str:
    return _text(name, default, pattern=_HEADER, expected="an HTTP header name or empty")


def _bootstrap(value: str) -> str:
    """``host:port[,host:port...]``; a port, when given, is 1-65535."""
    for server in value.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not server.strip() or (sep and (not host or not port.isdigit() or not 1 <= int(port) <= 65535)):
            raise _bad("KAFKA_BOOTSTRAP", value, "comma-separated host:port pairs")
    return value


def _redis_url(value: str) -> str:
    """A URL; with ``REDIS_CLUSTER`` the seed nodes may be a comma-separated ``host:port`` list in it
    (``redis://<user>:<password>@h1:7000,h2:7001``, also without the scheme: ``h1:7000,h2:7001``).

    >>> _redis_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    >>> os.environ["REDIS_CLUSTER"] = "1"
    >>> _redis_url("127.0.0.1:7000,127.0.0.1:7001")
    'redis://127.0.0.1:7000,127.0.0.1:7001'
    >>> _redis_url("unix:///tmp/redis.sock")
    Traceback (most recent call last):
    ...
    engine.settings.SettingsError: REDIS_URL='unix:///tmp/redis.sock': expected seed nodes host:port[,...]
    >>> del os.environ["REDIS_CLUSTER"]
    """
    if not _bool("REDIS_CLUSTER", False):
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise _bad("REDIS_URL", value, "a redis://, rediss:// or unix:// URL")
        return value
    if "://" not in value:
        value = "redis://" + value
    from engine.redis_connection import cluster_seeds  # engine.redis_connection imports redis-py

    try:
        cluster_seeds(value)
    except ValueError:
        raise _bad("REDIS_URL", value, "seed nodes host:port[,...]") from None
    return value


def _kafka_security() -> KafkaSecurity:
    from engine.kafka_client import kafka_security  # imported here: engine.kafka_client uses SettingsError

    return kafka_security()


#: What a worker process runs: ``ingest`` (events and decisions -> profiles, reward join) and ``learn``
#: (learning examples -> models, snapshots).
WORKER_ROLES = ("ingest", "learn")


def _roles(value: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in value.split(",") if r.strip())
    unknown = roles - set(WORKER_ROLES)
    if unknown or not roles:
        raise _bad("WORKER_ROLES", value, f"a comma-separated subset of {', '.join(WORKER_ROLES)}")
    return roles


@dataclass(frozen=True, slots=True)
class Settings:
    #: Kafka bootstrap servers, comma separated.
    kafka_bootstrap: str = field(default_factory=lambda: _bootstrap(_env("KAFKA_BOOTSTRAP", "127.0.0.1:9092")))
    #: How every Kafka client connects: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME,
    #: KAFKA_SASL_PASSWORD, KAFKA_SSL_CAFILE (engine/kafka_client.py, docs/security.md).
    kafka_security: KafkaSecurity = field(default_factory=_kafka_security)
    #: Redis URL holding profiles, identity map and model snapshots; ``redis://<user>:<password>@host:port/db``
    #: with the service's ACL user (outside dev a password is required: engine/production.py).
    redis_url: str = field(default_factory=lambda: _redis_url(_env("REDIS_URL", "redis://127.0.0.1:6379/0")))
    #: ``REDIS_CLUSTER=1``: Redis is a Redis Cluster, ``REDIS_URL`` its seed nodes (docs/cluster.md).
    redis_cluster: bool = field(default_factory=lambda: _bool("REDIS_CLUSTER", False))
    #: Topic names.
    events_topic: str = field(default_factory=lambda: _topic("EVENTS_TOPIC", "events"))
    dlq_topic: str = field(default_factory=lambda: _topic("DLQ_TOPIC", "events.dlq"))
    decisions_topic: str = field(default_factory=lambda: _topic("DECISIONS_TOPIC", "decisions"))
    learning_topic: str = field(default_factory=lambda: _topic("LEARNING_TOPIC", "learning"))
    #: segment entries and exits (``streams/segments.py``), for email and CRM tools
    segments_topic: str = field(default_factory=lambda: _topic("SEGMENTS_TOPIC", "segments"))
    #: Partition count used when the project creates the events/decisions topics.
    events_partitions: int = field(default_factory=lambda: _int("EVENTS_PARTITIONS", 8, maximum=10_000))
    #: Declared configuration: features, catalogue, placements (TOML).
    engine_config: Path = field(
        default_factory=lambda: Path(_text("ENGINE_CONFIG", str(REPO_ROOT / "config" / "engine.toml")))
    )
    #: Faust application id (consumer group) and its local state directory.
    worker_app_id: str = field(default_factory=lambda: _text("WORKER_APP_ID", "pulse-worker"))
    worker_data_dir: str = field(default_factory=lambda: _text("WORKER_DATA_DIR", str(REPO_ROOT / ".cache" / "faust")))
    #: Roles of this worker process (``python -m streams ingest`` / ``learner`` set them; ``worker`` runs both).
    worker_roles: frozenset[str] = field(default_factory=lambda: _roles(_env("WORKER_ROLES", "ingest,learn")))
    #: Events taken from the stream per batch (at most: a batch is what Kafka has ready; the ingest loop takes
    #: what has arrived, it never waits to fill a batch). 2000 rather than 500: more customers appear twice in
    #: a batch, so fewer Lua calls per event (docs/performance-history.md, "WORKER_BATCH_SIZE").
    worker_batch_size: int = field(default_factory=lambda: _int("WORKER_BATCH_SIZE", 2000, maximum=1_000_000))
    #: The learner's longest wait to fill a batch of learning examples (seconds). Models are published as
    #: snapshots every few seconds, so waiting 50 ms costs no freshness, and an idle learner wakes less.
    worker_batch_timeout: float = field(default_factory=lambda: _float("WORKER_BATCH_TIMEOUT", 0.05, positive=False))
    #: Consumer group of the worker's batch loop over events and decisions (default ``<worker_app_id>-stream``;
    #: the Faust app, which only consumes ``learning``, keeps ``worker_app_id`` as its group).
    worker_stream_group: str = field(default_factory=lambda: _env("WORKER_STREAM_GROUP", ""))
    #: Offsets of applied batches are committed at most this often (seconds), and on rebalance and shutdown:
    #: a crash replays at most that much, which the idempotent Lua scripts absorb.
    worker_commit_interval: float = field(default_factory=lambda: _float("WORKER_COMMIT_INTERVAL", 1.0, positive=False))
    #: How long the group waits for a silent worker before handing its partitions to others (seconds).
    worker_session_timeout: float = field(default_factory=lambda: _float("WORKER_SESSION_TIMEOUT", 10.0))
    #: A final decision whose learning example Kafka did not acknowledge within this long is sent again
    #: (a worker died between the reward expiry and the flush; streams/rewards.py).
    reward_settle_lease: float = field(default_factory=lambda: _float("REWARD_SETTLE_LEASE_S", 120.0))
    #: Hard time budget of one /v1/decide call; past it the answer is non-personalised and degraded.
    decide_budget_ms: float = field(default_factory=lambda: _float("DECIDE_BUDGET_MS", 25.0))
    #: Load shedding: a decision past the admission limit (decisions in progress in one API process) is shed:
    #: answered at once from the non-personalised ranking (``"degraded": true``) without reading Redis, so
    #: that an overloaded API stays fast instead of queueing. The limit starts at its maximum and is lowered
    #: while even the fastest decisions end later than this target (ms, from request body to answer, inside
    #: the process, plus the wait a proxy stamped when ``decide_queue_header`` is set):
    #: ``serving.admission.LatencyLimit``. 0 turns shedding off.
    decide_shed_target_ms: float = field(default_factory=lambda: _float("DECIDE_SHED_TARGET_MS", 5.0, positive=False))
    #: Bounds of the admission limit: it starts at (and never passes) the maximum, the best fixed limit of
    #: ``python -m bench.admission`` before it adapted; the minimum keeps some full decisions flowing.
    decide_shed_min_in_flight: int = field(default_factory=lambda: _int("DECIDE_SHED_MIN_IN_FLIGHT", 4))
    decide_shed_max_in_flight: int = field(default_factory=lambda: _int("DECIDE_SHED_MAX_IN_FLIGHT", 48))
    #: Decision records an API process may hold that Kafka has not acknowledged (buffered, or in the producer);
    #: past it a record is dropped and counted (``decision_log_overflow``). What a SIGKILL of the process can
    #: lose: ``serving.decision_log``, measured by ``tests/integration/test_chaos.py``.
    decision_log_max_buffered: int = field(default_factory=lambda: _int("DECISION_LOG_MAX_BUFFERED", 20_000,
                                                                        maximum=1_000_000))
    #: Header in which the proxy in front stamps when it received a request (``t=<epoch s|ms|us>``, as nginx,
    #: Heroku and HAProxy set ``X-Request-Start``): the wait before the process read the request is then
    #: exported (``pulse_decide_queue_seconds``) and counted in the latency the admission limit judges. Empty
    #: (the default): no such header is read. Set it only behind a proxy that overwrites the header and shares
    #: the API's clock: a client could otherwise send old stamps and have decisions shed.
    decide_queue_header: str = field(default_factory=lambda: _header("DECIDE_QUEUE_HEADER", ""))
    #: Largest body of ``POST /v1/events`` (bytes): a larger one is answered 413 while it is read, not after.
    collector_max_body_bytes: int = field(default_factory=lambda: _int(
        "COLLECTOR_MAX_BODY_BYTES", DEFAULT_LIMITS.max_body_bytes, minimum=1024, maximum=64 << 20))
    #: How far after the receiving server's clock an event's timestamp may be (seconds), at the collector and
    #: in the worker (events produced straight to the topic): a far-future time would move the decay landmarks
    #: there and zero every later contribution. Other bounds: ``schemas/limits.py``, docs/limits.md.
    event_max_future_s: float = field(default_factory=lambda: _float(
        "EVENT_MAX_FUTURE_S", DEFAULT_LIMITS.max_future_s))
    #: Secret used to sign model snapshots (HMAC-SHA256). Change it in production.
    model_signing_key: str = field(default_factory=lambda: _text("MODEL_SIGNING_KEY", "dev-only-signing-key"))


    @property
    def event_limits(self) -> EventLimits:
        """The bounds on an event, with the ones these settings change."""
        return replace(DEFAULT_LIMITS, max_body_bytes=self.collector_max_body_bytes,
                       max_future_s=self.event_max_future_s)

    def __post_init__(self) -> None:
        if self.decide_shed_max_in_flight < self.decide_shed_min_in_flight:
            raise SettingsError(
                f"DECIDE_SHED_MAX_IN_FLIGHT={self.decide_shed_max_in_flight!r}: expected an integer >= "
                f"DECIDE_SHED_MIN_IN_FLIGHT ({self.decide_shed_min_in_flight})")

    # --- API keys and the production checks (serving/auth.py, engine/production.py, docs/security.md) ---
    #: ``dev`` allows development defaults (no API keys: every endpoint open; the default signing key).
    #: Anything else, unset included, is production: the API and the workers refuse those defaults.
    pulse_env: str = field(default_factory=lambda: _env("PULSE_ENV", "prod"))
    #: API keys, comma separated: ``role:key`` or ``role:key:origin|origin`` (roles: public, server, admin).
    api_keys: str = field(default_factory=lambda: _env("API_KEYS", ""))
    #: A TOML or JSON file of API keys (role, key or key_sha256, origins, name); used with ``API_KEYS``.
    api_keys_file: str = field(default_factory=lambda: _env("API_KEYS_FILE", ""))
    # --- end of the API keys block ---

    # --- identity, consent and erasure (engine/identity.py, engine/erasure.py, docs/security.md) ---
    #: Accept browser ``identify`` and ``consent`` events for a customer id when they carry
    #: ``properties.user_hash = HMAC-SHA256(IDENTITY_SECRET, customer_id)`` (hex), computed by the site's back
    #: end. Off: only server keys and direct producers can link ids or set a customer's consent.
    identity_proofs: bool = field(default_factory=lambda: _bool("IDENTITY_PROOFS", False))
    #: The secret of those proofs, shared with the site's back end (at least 32 bytes outside dev).
    identity_secret: str = field(default_factory=lambda: _env("IDENTITY_SECRET", ""))
    #: How long an erasure marker keeps the worker from writing anything for an erased person (events in
    #: flight, a replay of the events topic): keep it longer than the events topic's retention.
    erasure_retention_days: float = field(default_factory=lambda: _float("ERASURE_RETENTION_DAYS", 30.0))
    #: Compacted topic on which every erasure is published (key: the erased id), for downstream systems.
    erasures_topic: str = field(default_factory=lambda: _topic("ERASURES_TOPIC", "erasures"))
    # --- end of the identity block ---
    #: The public API key the demo shop (``/demo/``, development only) embeds in its page; empty: none (an API
    #: without keys needs none). Never served outside ``PULSE_ENV=dev``; a server or admin key is refused.
    demo_public_key: str = field(default_factory=lambda: _env("DEMO_PUBLIC_KEY", ""))

    # --- operations (streams/metrics.py, docs/operations.md) ---
    #: The port each stream worker serves its own Prometheus metrics on (``/metrics``; 0: not served). Several
    #: workers on one host need one port each.
    worker_metrics_port: int = field(default_factory=lambda: _int("WORKER_METRICS_PORT", 9464, minimum=0,
                                                                  maximum=65535))
    # --- end of the operations block ---


def load_settings() -> Settings:
    return Settings()
