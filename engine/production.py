"""What the API and the workers refuse to start with outside development (``PULSE_ENV`` other than ``dev``).

``PULSE_ENV=dev`` (what ``make demo``, the tests and the benchmarks set) allows the development defaults: the
built-in model signing key, no API keys (every endpoint open, with a loud warning). Anything else, including
an unset ``PULSE_ENV``, is production: a process with a development secret exits at start-up and says why.

Production also needs authenticated infrastructure (docs/security.md):

* ``REDIS_URL`` must carry a password (``redis://<user>:<password>@host:port/db``, the service's ACL user);
  only a ``unix://`` socket, guarded by file permissions, may go without;
* Kafka must authenticate (``KAFKA_SECURITY_PROTOCOL=SASL_SSL`` or ``SASL_PLAINTEXT`` with credentials, or
  ``SSL``), unless the operator sets ``KAFKA_SECURITY_PROTOCOL=PLAINTEXT`` explicitly: a statement that only
  trusted services reach the brokers (a private network, a mesh with mTLS). The default is not that
  statement. ``PLAIN`` over ``SASL_PLAINTEXT`` is refused: it sends the password in clear.

In every mode, ``PULSE_ENV=dev`` included, the placeholders of ``infra/.env.example`` (``CHANGE_ME...``) are
refused wherever a secret goes: they are there so that an unedited copy cannot start.

>>> from engine.kafka_client import kafka_security
>>> from engine.settings import Settings
>>> secured = dict(redis_url="redis://api:s3cret@redis:6379/0",
...                kafka_security=kafka_security({"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}))
>>> for problem in production_problems(Settings(pulse_env="prod", model_signing_key="dev-only-signing-key",
...                                             **secured), api_keys=0):
...     print(problem.split(";")[0])
MODEL_SIGNING_KEY is the development default
no API keys: set API_KEYS or API_KEYS_FILE (docs/security.md)
>>> production_problems(Settings(pulse_env="prod", model_signing_key="x" * 32, **secured), api_keys=3)
[]
>>> [p.split(":")[0] for p in production_problems(Settings(pulse_env="prod", model_signing_key="x" * 32,
...     redis_url="redis://redis:6379/0", kafka_security=kafka_security({})), api_keys=3)]
['REDIS_URL carries no password', 'KAFKA_SECURITY_PROTOCOL is not set']
>>> production_problems(Settings(pulse_env="dev"), api_keys=0)
[]
>>> production_problems(Settings(pulse_env="dev", model_signing_key="CHANGE_ME_signing_key"))[0].split(";")[0]
'MODEL_SIGNING_KEY holds the CHANGE_ME placeholder of infra/.env.example'
>>> [p.split(";")[0] for p in production_problems(Settings(pulse_env="prod", model_signing_key="x" * 32,
...     identity_proofs=True, identity_secret="short", **secured))]
['IDENTITY_PROOFS is on but IDENTITY_SECRET is 5 bytes']
>>> production_problems(Settings(pulse_env="prod", model_signing_key="x" * 32, identity_proofs=True,
...                              identity_secret="y" * 32, **secured))
[]
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

from engine.identity import MIN_IDENTITY_SECRET_BYTES
from engine.settings import Settings

DEV = "dev"
#: The default of ``MODEL_SIGNING_KEY`` in engine/settings.py, which development uses.
DEV_SIGNING_KEY = "dev-only-signing-key"
MIN_SIGNING_KEY_BYTES = 32
#: What infra/.env.example holds where a secret goes; never a usable value, in any mode.
PLACEHOLDER = "CHANGE_ME"


def is_dev(settings: Settings) -> bool:
    return settings.pulse_env == DEV


def production_problems(settings: Settings, api_keys: int | None = None) -> list[str]:
    """Why this configuration must not run (outside development, or anywhere for a placeholder); ``api_keys``:
    the API's key count (``None`` for a worker, which takes no API calls)."""
    problems = placeholder_problems(settings)
    if is_dev(settings):
        return problems
    signing = settings.model_signing_key
    if signing == DEV_SIGNING_KEY:
        problems.append("MODEL_SIGNING_KEY is the development default; set a random secret of at least "
                        f"{MIN_SIGNING_KEY_BYTES} bytes (e.g. openssl rand -hex 32)")
    elif len(signing.encode()) < MIN_SIGNING_KEY_BYTES:
        problems.append(f"MODEL_SIGNING_KEY is {len(signing.encode())} bytes; at least {MIN_SIGNING_KEY_BYTES} "
                        "are required (e.g. openssl rand -hex 32)")
    if settings.identity_proofs:
        secret = settings.identity_secret.encode()
        if len(secret) < MIN_IDENTITY_SECRET_BYTES:
            size = f"{len(secret)} bytes" if secret else "unset"
            problems.append(f"IDENTITY_PROOFS is on but IDENTITY_SECRET is {size}"
                            f"; set a random secret of at least {MIN_IDENTITY_SECRET_BYTES} bytes shared with the "
                            "site's back end (docs/security.md, \"Identity\")")
    if api_keys == 0:
        problems.append("no API keys: set API_KEYS or API_KEYS_FILE (docs/security.md)")
    return problems + infrastructure_problems(settings)


def redis_password(url: str) -> str | None:
    """The password a Redis URL carries (user info or ``?password=``), None without one."""
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if name == "password" and value:
            return value
    return None


def placeholder_problems(settings: Settings) -> list[str]:
    """The secrets still holding infra/.env.example's placeholder."""
    secrets = {"MODEL_SIGNING_KEY": settings.model_signing_key, "API_KEYS": settings.api_keys,
               "KAFKA_SASL_PASSWORD": settings.kafka_security.sasl_password or "",
               "REDIS_URL": redis_password(settings.redis_url) or "", "IDENTITY_SECRET": settings.identity_secret}
    return [f"{name} holds the {PLACEHOLDER} placeholder of infra/.env.example; set a real secret there"
            for name, value in secrets.items() if PLACEHOLDER in value]


def infrastructure_problems(settings: Settings) -> list[str]:
    """Production needs a Redis that asks for a password and a Kafka that authenticates (module docstring)."""
    problems = []
    if urlsplit(settings.redis_url).scheme != "unix" and redis_password(settings.redis_url) is None:
        problems.append("REDIS_URL carries no password: use redis://<user>:<password>@host:port/db with the "
                        "service's ACL user (infra/redis/users.acl.template, docs/security.md)")
    kafka = settings.kafka_security
    if kafka.protocol == "PLAINTEXT" and not kafka.explicit:
        problems.append("KAFKA_SECURITY_PROTOCOL is not set: Kafka would take anyone's events; set SASL_SSL (or "
                        "SASL_PLAINTEXT/SSL) with KAFKA_SASL_* credentials, or PLAINTEXT explicitly where only "
                        "trusted services reach the brokers (docs/security.md)")
    if kafka.protocol == "SASL_PLAINTEXT" and kafka.sasl_mechanism == "PLAIN":
        problems.append("KAFKA_SASL_MECHANISM=PLAIN over SASL_PLAINTEXT sends the password in clear; use "
                        "SCRAM-SHA-256/512, or SASL_SSL")
    return problems


#: Exit status of a process that refuses its configuration (sysexits.h EX_CONFIG).
EXIT_CONFIG = 78


def refuse_to_start(what: str, problems: list[str]) -> None:
    """Print why and exit with :data:`EXIT_CONFIG` when there are problems."""
    if not problems:
        return
    lines = "\n".join(f"  - {p}" for p in problems)
    print(f"pulse {what}: refusing to start:\n{lines}\n"
          "PULSE_ENV=dev allows the development defaults, on a development machine only (docs/security.md).",
          file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)
