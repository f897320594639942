"""engine.kafka_client: the KAFKA_* security settings, strictly checked, and used by every Kafka client."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest

from engine.kafka_client import KafkaSecurity, kafka_client_kwargs, kafka_security
from engine.settings import SettingsError

ROOT = Path(__file__).resolve().parent.parent
SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "worker", "KAFKA_SASL_PASSWORD": "pw"}


def test_plaintext_by_default() -> None:
    security = kafka_security({})
    assert security == KafkaSecurity() and not security.explicit
    assert kafka_client_kwargs({}) == {"security_protocol": "PLAINTEXT"}
    assert kafka_security({"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}).explicit


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "scram-sha-512"])
def test_sasl_plaintext_kwargs(mechanism: str) -> None:
    kwargs = kafka_client_kwargs({**SASL, "KAFKA_SASL_MECHANISM": mechanism})
    assert kwargs == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism.upper(),
                      "sasl_plain_username": "worker", "sasl_plain_password": "pw"}


def test_tls_trusts_the_system_or_the_given_cas(tmp_path: Path) -> None:
    kwargs = kafka_client_kwargs({"KAFKA_SECURITY_PROTOCOL": "SSL"})
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    kwargs = kafka_client_kwargs({**SASL, "KAFKA_SECURITY_PROTOCOL": "sasl_ssl"})
    assert kwargs["security_protocol"] == "SASL_SSL" and isinstance(kwargs["ssl_context"], ssl.SSLContext)


def test_the_password_is_not_in_the_repr() -> None:
    assert "pw" not in repr(kafka_security(SASL))


@pytest.mark.parametrize(("env", "expected"), [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"},
     "KAFKA_SECURITY_PROTOCOL='TLS': expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM='GSSAPI': expected PLAIN, SCRAM-SHA-256 or"),
    ({**SASL, "KAFKA_SASL_MECHANISM": ""}, "KAFKA_SASL_MECHANISM='': expected"),
    ({**SASL, "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME='': expected a user name (required with"),
    ({**SASL, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD is empty"),
    ({"KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_PASSWORD is set but"),
    ({**SASL, "KAFKA_SSL_CAFILE": "/etc/hosts"}, "KAFKA_SSL_CAFILE='/etc/hosts': set, but"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent.pem"}, "expected a readable PEM file"),
])
def test_errors_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        kafka_security(env)
    assert expected in str(info.value)


def test_a_cafile_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(SettingsError, match="KAFKA_SSL_CAFILE=.*expected PEM certificates"):
        kafka_security({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(bad)})


def test_settings_carry_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.settings import Settings

    for name, value in SASL.items():
        monkeypatch.setenv(name, value)
    assert Settings().kafka_security == kafka_security(SASL)
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "MD5")
    with pytest.raises(SettingsError, match="KAFKA_SASL_MECHANISM"):
        Settings()


# -- every client of the project passes them -----------------------------------------------------------

CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in CLIENTS or (name == "App" and ast.unparse(node.func) == "faust.App"):
                out.append((name, node))
    return out


def _passes_security(name: str, call: ast.Call) -> bool:
    if name == "App":
        return any(k.arg == "broker_credentials" for k in call.keywords)
    return any(k.arg is None and "kafka_kwargs" in ast.unparse(k.value) or k.arg is None
               and "client_kwargs" in ast.unparse(k.value) for k in call.keywords)


def test_every_kafka_client_in_the_repository_gets_the_security_settings() -> None:
    files = [p for d in ("engine", "streams", "serving", "infra", "bench", "tests") for p in (ROOT / d).rglob("*.py")]
    found: list[str] = []
    missing: list[str] = []
    for path in files:
        for name, call in _calls(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{call.lineno} {name}"
            found.append(where)
            if not _passes_security(name, call):
                missing.append(where)
    assert len(found) >= 10, found  # the scan sees the clients
    assert not missing, "pass **kafka_client_kwargs() / **settings.kafka_security.client_kwargs() " \
                        "(faust.App: broker_credentials=): " + ", ".join(missing)


def test_the_scan_can_fail() -> None:
    tree = ast.parse("AIOKafkaProducer(bootstrap_servers=b)\nfaust.App('x', broker='kafka://a')")
    assert [_passes_security(n, c) for n, c in _calls(tree)] == [False, False]
    tree = ast.parse("AIOKafkaProducer(bootstrap_servers=b, **kafka_client_kwargs())")
    assert [_passes_security(n, c) for n, c in _calls(tree)] == [True]


