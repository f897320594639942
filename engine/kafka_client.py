"""How every Kafka client of the project connects: security protocol, SASL credentials, TLS trust.

One place turns the environment into aiokafka keyword arguments, so that a producer, consumer or admin
client added anywhere connects the same way (``tests/test_kafka_client.py`` checks every construction in
the repository passes them). Managed Kafka (Confluent Cloud, MSK, Aiven, Redpanda Cloud ...) is
``SASL_SSL`` with ``PLAIN`` or ``SCRAM-SHA-512`` and a username and password; the compose file runs
``SASL_PLAINTEXT`` with ``SCRAM-SHA-256`` on its private network.

==========================  =================================================================================
variable                    meaning
==========================  =================================================================================
``KAFKA_SECURITY_PROTOCOL`` ``PLAINTEXT`` (default), ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``
``KAFKA_SASL_MECHANISM``    ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``: required with ``SASL_*``
``KAFKA_SASL_USERNAME``     required with ``SASL_*``, refused otherwise
``KAFKA_SASL_PASSWORD``     required with ``SASL_*``, refused otherwise
``KAFKA_SSL_CAFILE``        PEM file of the CAs to trust with ``SSL``/``SASL_SSL`` (default: the system's)
==========================  =================================================================================

Every error is a :class:`~engine.settings.SettingsError` naming the variable:

>>> env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
...        "KAFKA_SASL_USERNAME": "pulse-api", "KAFKA_SASL_PASSWORD": "s3cret"}
>>> security = kafka_security(env)
>>> security
KafkaSecurity(protocol='SASL_SSL', sasl_mechanism='SCRAM-SHA-512', sasl_username='pulse-api', ssl_cafile=None)
>>> kwargs = security.client_kwargs()
>>> sorted(kwargs), kwargs["sasl_plain_password"]
(['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol', 'ssl_context'], 's3cret')
>>> try:
...     kafka_security({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"})
... except SettingsError as exc:
...     print(exc)
KAFKA_SASL_MECHANISM='': expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with KAFKA_SECURITY_PROTOCOL=SASL_SSL)
>>> kafka_security({}).client_kwargs()
{'security_protocol': 'PLAINTEXT'}
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.settings import SettingsError

__all__ = ["MECHANISMS", "PROTOCOLS", "KafkaSecurity", "kafka_client_kwargs", "kafka_security"]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: the variables this module reads (docs/security.md, infra/.env.example)
VARIABLES = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
             "KAFKA_SSL_CAFILE")


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Validated connection security; :meth:`client_kwargs` gives aiokafka's keyword arguments."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    #: True when KAFKA_SECURITY_PROTOCOL was set (an operator's statement, also for PLAINTEXT)
    explicit: bool = field(default=False, repr=False, compare=False)

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """Certificate and host name checked against ``ssl_cafile`` (or the system's CAs) when TLS is on."""
        return ssl.create_default_context(cafile=self.ssl_cafile) if self.tls else None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AIOKafkaProducer``, ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient``."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password)
        return kwargs


def kafka_security(environ: Mapping[str, str] | None = None) -> KafkaSecurity:
    """Read and check the ``KAFKA_*`` security variables (``environ``: default ``os.environ``)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str:
        return env.get(name, "").strip()

    protocol = get("KAFKA_SECURITY_PROTOCOL").upper() or "PLAINTEXT"
    if protocol not in PROTOCOLS:
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={get('KAFKA_SECURITY_PROTOCOL')!r}: expected "
                            f"{_one_of(PROTOCOLS)}")
    mechanism, username, password, cafile = (get("KAFKA_SASL_MECHANISM").upper(), get("KAFKA_SASL_USERNAME"),
                                             env.get("KAFKA_SASL_PASSWORD", ""), get("KAFKA_SSL_CAFILE"))
    if protocol.startswith("SASL_"):
        needed = f"(required with KAFKA_SECURITY_PROTOCOL={protocol})"
        if mechanism not in MECHANISMS:
            raise SettingsError(f"KAFKA_SASL_MECHANISM={get('KAFKA_SASL_MECHANISM')!r}: expected "
                                f"{_one_of(MECHANISMS)} {needed}")
        if not username:
            raise SettingsError(f"KAFKA_SASL_USERNAME={username!r}: expected a user name {needed}")
        if not password:
            raise SettingsError(f"KAFKA_SASL_PASSWORD is empty: expected the user's password {needed}")
    else:
        for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
            if env.get(name):
                raise SettingsError(f"{name} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use it: "
                                    "expected SASL_PLAINTEXT or SASL_SSL with credentials, or no SASL variables")
    if cafile:
        if protocol not in ("SSL", "SASL_SSL"):
            raise SettingsError(f"KAFKA_SSL_CAFILE={cafile!r}: set, but KAFKA_SECURITY_PROTOCOL={protocol} "
                                "uses no TLS (expected SSL or SASL_SSL)")
        if not Path(cafile).is_file():
            raise SettingsError(f"KAFKA_SSL_CAFILE={cafile!r}: expected a readable PEM file")
        try:
            ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"KAFKA_SSL_CAFILE={cafile!r}: expected PEM certificates ({exc})") from None
    sasl = protocol.startswith("SASL_")
    return KafkaSecurity(protocol, mechanism if sasl else None, username if sasl else None,
                         password if sasl else None, cafile or None, explicit=bool(get("KAFKA_SECURITY_PROTOCOL")))


def kafka_client_kwargs(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:meth:`KafkaSecurity.client_kwargs` of the environment: for the tools, tests and benchmarks, which read
    no :class:`~engine.settings.Settings`."""
    return kafka_security(environ).client_kwargs()
