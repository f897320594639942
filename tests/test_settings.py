import pytest

from engine.settings import Settings, SettingsError


def test_defaults_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP", "WORKER_BATCH_SIZE", "DECIDE_BUDGET_MS", "WORKER_ROLES"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.worker_batch_size == 2000 and s.decide_budget_ms == 25.0 and s.worker_roles == {"ingest", "learn"}


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("WORKER_BATCH_SIZE", "500", "worker_batch_size", 500),
        ("EVENTS_PARTITIONS", "3", "events_partitions", 3),
        ("WORKER_BATCH_TIMEOUT", "0", "worker_batch_timeout", 0.0),
        ("DECIDE_SHED_TARGET_MS", "0", "decide_shed_target_ms", 0.0),
        ("DECIDE_BUDGET_MS", "12.5", "decide_budget_ms", 12.5),
        ("KAFKA_BOOTSTRAP", "a:9092,b:9093", "kafka_bootstrap", "a:9092,b:9093"),
        ("REDIS_URL", "unix:///tmp/redis.sock", "redis_url", "unix:///tmp/redis.sock"),
        ("DECIDE_QUEUE_HEADER", "X-Request-Start", "decide_queue_header", "X-Request-Start"),
        ("WORKER_ROLES", "learn", "worker_roles", frozenset({"learn"})),
        ("IDENTITY_PROOFS", "true", "identity_proofs", True),
        ("IDENTITY_PROOFS", "0", "identity_proofs", False),
        ("ERASURE_RETENTION_DAYS", "45", "erasure_retention_days", 45.0),
        ("ERASURES_TOPIC", "gdpr.erasures", "erasures_topic", "gdpr.erasures"),
    ],
)
def test_good_values_are_read(monkeypatch: pytest.MonkeyPatch, name: str, value: str, attribute: str,
                              expected: object) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(Settings(), attribute) == expected


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("WORKER_BATCH_SIZE", "abc", "expected an integer >= 1"),
        ("WORKER_BATCH_SIZE", "0", "expected an integer >= 1"),
        ("WORKER_BATCH_SIZE", "1.5", "expected an integer >= 1"),
        ("EVENTS_PARTITIONS", "-2", "expected an integer >= 1"),
        ("DECIDE_SHED_MIN_IN_FLIGHT", "x", "expected an integer >= 1"),
        ("DECIDE_BUDGET_MS", "fast", "expected a finite number > 0"),
        ("DECIDE_BUDGET_MS", "0", "expected a finite number > 0"),
        ("DECIDE_BUDGET_MS", "nan", "expected a finite number > 0"),
        ("WORKER_SESSION_TIMEOUT", "inf", "expected a finite number > 0"),
        ("WORKER_BATCH_TIMEOUT", "-1", "expected a finite number >= 0"),
        ("WORKER_COMMIT_INTERVAL", "soon", "expected a finite number >= 0"),
        ("DECIDE_SHED_TARGET_MS", "-5", "expected a finite number >= 0"),
        ("KAFKA_BOOTSTRAP", "", "expected comma-separated host:port pairs"),
        ("KAFKA_BOOTSTRAP", "host:port", "expected comma-separated host:port pairs"),
        ("KAFKA_BOOTSTRAP", "a:9092,,b:1", "expected comma-separated host:port pairs"),
        ("REDIS_URL", "127.0.0.1:6379", "expected a redis://, rediss:// or unix:// URL"),
        ("EVENTS_TOPIC", "my events", "expected a Kafka topic name"),
        ("DLQ_TOPIC", "", "expected a Kafka topic name"),
        ("WORKER_APP_ID", "", "expected a non-empty string"),
        ("MODEL_SIGNING_KEY", "", "expected a non-empty string"),
        ("ENGINE_CONFIG", "", "expected a non-empty string"),
        ("DECIDE_QUEUE_HEADER", "X Request", "expected an HTTP header name or empty"),
        ("WORKER_ROLES", "ingest,serve", "expected a comma-separated subset of ingest, learn"),
        ("WORKER_ROLES", "", "expected a comma-separated subset of ingest, learn"),
        ("IDENTITY_PROOFS", "maybe", "expected true or false"),
        ("ERASURE_RETENTION_DAYS", "0", "expected a finite number > 0"),
        ("ERASURES_TOPIC", "era sures", "expected a Kafka topic name"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                    expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        Settings()
    assert str(info.value).startswith(f"{name}={value!r}: {expected}")


def test_the_admission_bounds_are_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECIDE_SHED_MIN_IN_FLIGHT", "10")
    monkeypatch.setenv("DECIDE_SHED_MAX_IN_FLIGHT", "5")
    with pytest.raises(SettingsError, match=r"^DECIDE_SHED_MAX_IN_FLIGHT=5: expected an integer >= "
                                            r"DECIDE_SHED_MIN_IN_FLIGHT \(10\)$"):
        Settings()
