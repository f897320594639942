"""The Faust app's broker credentials, from the same :class:`engine.kafka_client.KafkaSecurity` as every other
Kafka client (Faust builds its own producer, consumer and admin client from them)."""

from __future__ import annotations

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from engine.kafka_client import KafkaSecurity


def faust_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """``broker_credentials`` for ``faust.App``: None for PLAINTEXT.

    >>> from engine.kafka_client import kafka_security
    >>> faust_credentials(kafka_security({})) is None
    True
    >>> c = faust_credentials(kafka_security({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    ...     "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}))
    >>> c.protocol.value, c.mechanism.value, c.username
    ('SASL_PLAINTEXT', 'SCRAM-SHA-256', 'u')
    """
    if security.sasl:
        return SASLCredentials(username=security.sasl_username, password=security.sasl_password,
                               mechanism=security.sasl_mechanism, ssl_context=security.ssl_context())
    if security.tls:
        return SSLCredentials(security.ssl_context())
    return None
