"""infra/docker-compose.yml is locked down and wired consistently, checked without a Docker engine.

``make compose-config`` validates the file with ``docker compose config`` where the plugin is installed;
this test reads the YAML: each service connects to Kafka (SASL/SCRAM) and Redis (ACL) as its own user,
the users it names exist on both sides, and ``infra/.env.example`` starts nothing: its placeholders are
refused by the broker's and Redis's start scripts and by the apps (engine/production.py), while the same
wiring with real secrets passes the production checks."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints; types-PyYAML is not a dependency

from engine.production import production_problems
from engine.settings import Settings

INFRA = Path(__file__).resolve().parent.parent / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
#: the app services and the Kafka / Redis user each runs as (None: no Redis)
USERS = {"topics": ("admin", None), "worker": ("worker", "worker"), "learner": ("learner", "learner"),
         "api": ("api", "api")}


def env_example() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", (INFRA / ".env.example").read_text(), re.M))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        got = env.get(name, "")
        if op == ":?" and not got:
            raise KeyError(f"{name}: {arg}")
        return got or (arg if op == ":-" else "")
    return re.sub(r"\$\{([A-Z_]+)(?:(:[-?])([^}]*))?\}", one, str(value))


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), env) for k, v in SERVICES[name]["environment"].items()}


def test_every_app_service_is_its_own_kafka_and_redis_user() -> None:
    for name, (kafka_user, redis_user) in USERS.items():
        env = SERVICES[name]["environment"]
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
        assert env["KAFKA_SASL_USERNAME"] == kafka_user, name
        assert f"${{KAFKA_{kafka_user.upper()}_PASSWORD:?" in env["KAFKA_SASL_PASSWORD"], name
        if redis_user is None:
            assert "REDIS_URL" not in env, name
        else:
            assert env["REDIS_URL"].startswith(f"redis://{redis_user}:${{REDIS_{redis_user.upper()}_PASSWORD:?"), name
            assert env["REDIS_URL"].endswith("@redis:6379/0"), name
        assert env["PULSE_ENV"] == "${PULSE_ENV:-prod}", name


def test_the_users_exist_on_both_sides() -> None:
    start = (INFRA / "kafka" / "compose-start.sh").read_text()
    users = re.search(r"for user in ([a-z ]+); do", start)
    assert users
    scram_users = set(users.group(1).split())
    acl_users = set(re.findall(r"^user (\w+) on ", (INFRA / "redis" / "users.acl.template").read_text(), re.M))
    assert {k for k, _ in USERS.values()} <= scram_users
    assert {r for _, r in USERS.values() if r} | {"admin"} <= acl_users
    kafka_env, redis_env = SERVICES["kafka"]["environment"], SERVICES["redis"]["environment"]
    assert {f"KAFKA_{u.upper()}_PASSWORD" for u in scram_users} <= set(kafka_env)
    assert {f"REDIS_{u.upper()}_PASSWORD" for u in acl_users} <= set(redis_env)


def test_kafka_listens_with_sasl_only() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["entrypoint"] == ["/bin/sh", "/opt/pulse/compose-start.sh"]
    assert "./kafka/compose-start.sh:/opt/pulse/compose-start.sh:ro" in kafka["volumes"]
    start = (INFRA / "kafka" / "compose-start.sh").read_text()
    found = re.search(r"listener.security.protocol.map=(\S+)", start)
    assert found
    protocols = dict(tuple(p.split(":")) for p in found.group(1).split(","))
    assert protocols == {"INTERNAL": "SASL_PLAINTEXT", "EXTERNAL": "SASL_PLAINTEXT", "CONTROLLER": "PLAINTEXT"}
    assert "CONTROLLER://localhost:9093" in start  # the PLAINTEXT controller listens on loopback only
    assert "--command-config /tmp/pulse-kafka/admin.properties" in kafka["healthcheck"]["test"][1]


def test_redis_has_acl_users_and_protected_mode() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--aclfile /data/users.acl" in command and "render-acl.sh" in command
    assert "protected-mode" not in command  # stays as redis.conf says:
    assert re.search(r"^protected-mode yes$", (INFRA / "redis" / "redis.conf").read_text(), re.M)
    assert re.search(r"^user default off$", (INFRA / "redis" / "users.acl.template").read_text(), re.M)
    assert redis["user"] == "redis"  # not root
    assert all(port.startswith("127.0.0.1:") for s in ("kafka", "redis") for port in SERVICES[s]["ports"])


def test_every_secret_of_env_example_is_a_placeholder() -> None:
    env = env_example()
    secret_names = [n for n in env if n.endswith("_PASSWORD") or n in ("MODEL_SIGNING_KEY", "API_KEYS")]
    assert len(secret_names) >= 11
    for name in secret_names:
        assert "CHANGE_ME" in env[name], name
    assert "CHANGE_ME" in env["REDIS_URL"] and env["PULSE_ENV"] == "prod"


@pytest.mark.parametrize("name", USERS)
def test_the_apps_refuse_the_placeholders_and_take_real_secrets(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def problems(env: dict[str, str]) -> list[str]:
        for var in list(os.environ):
            if var.startswith(("KAFKA_", "REDIS_", "PULSE_", "MODEL_", "API_KEYS")):
                monkeypatch.delenv(var)
        for var, value in service_env(name, env).items():
            monkeypatch.setenv(var, value)
        found = production_problems(Settings(), api_keys=3 if name == "api" else None)
        # the topic creator uses no Redis (and runs no production check: infra.topics)
        return [p for p in found if USERS[name][1] or not p.startswith("REDIS_URL carries no password")]

    placeholders = problems(env_example())
    assert any("CHANGE_ME placeholder" in p for p in placeholders), placeholders
    real = {k: (secrets.token_hex(32) if "CHANGE_ME" in v else v) for k, v in env_example().items()}
    assert problems(real) == []


def _env_example_process_env() -> dict[str, Any]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_"))}, **env_example()}


def test_the_broker_refuses_to_start_with_the_placeholders() -> None:
    out = subprocess.run(["sh", str(INFRA / "kafka" / "compose-start.sh")], env=_env_example_process_env(),
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1 and "KAFKA_ADMIN_PASSWORD must be set to a random secret" in out.stderr


def test_redis_refuses_to_start_with_the_placeholders(tmp_path: Path) -> None:
    out = subprocess.run(["sh", str(INFRA / "redis" / "render-acl.sh"), str(INFRA / "redis" / "users.acl.template"),
                          str(tmp_path / "users.acl")], env=_env_example_process_env(), capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 1 and "is the placeholder of .env.example" in out.stderr
    assert not (tmp_path / "users.acl").exists()


def test_redis_acl_file_holds_hashes_only(tmp_path: Path) -> None:
    passwords = {f"REDIS_{u}_PASSWORD": secrets.token_hex(16) for u in ("ADMIN", "API", "WORKER", "LEARNER")}
    subprocess.run(["sh", str(INFRA / "redis" / "render-acl.sh"), str(INFRA / "redis" / "users.acl.template"),
                    str(tmp_path / "users.acl")], env={**os.environ, **passwords}, check=True, timeout=30)
    text = (tmp_path / "users.acl").read_text()
    assert all(p not in text for p in passwords.values()) and text.count(" on #") == 4
    assert all(line.startswith("user ") for line in text.splitlines())  # Redis takes no comments there
    assert oct((tmp_path / "users.acl").stat().st_mode & 0o777) == "0o600"


def test_every_key_family_of_the_layout_belongs_to_an_acl_user() -> None:
    """A key family added to engine/layout.py without an ACL pattern would be refused (NOPERM) in production."""
    import fnmatch
    import inspect

    from engine import layout
    from engine.config import load_config
    from tests.support import CONFIG_PATH

    config = load_config(CONFIG_PATH)
    keys: list[str] = []
    # a person's keys are named by subject, a customer's (c:...) or an anonymous id's (a:...): both kinds
    for subject in (layout.customer_subject("c-1"), layout.anonymous_subject("a-1")):
        samples = {"customer_id": "c-1", "anonymous_id": "a-1", "placement": "home_hero", "slot": 3,
                   "decision_id": "d-1", "config": config, "subject": subject, "shard": 5}
        for name, fn in inspect.getmembers(layout, inspect.isfunction):
            if fn.__module__ != layout.__name__ or not name.endswith(("_key", "_keys", "_hash", "_prefix")):
                continue
            made = fn(**{p: samples[p] for p in inspect.signature(fn).parameters})
            keys += [made] if isinstance(made, str) else list(getattr(made, "keys", made))
    assert len(keys) >= 12, keys
    template = (INFRA / "redis" / "users.acl.template").read_text()
    patterns = {user: re.findall(r" ~(\S+)", rules)
                for user, rules in re.findall(r"^user (\w+) on (.*)$", template, re.M) if user != "admin"}
    uncovered = [k for k in keys if not any(fnmatch.fnmatchcase(k, p) for ps in patterns.values() for p in ps)]
    assert not uncovered, f"add their family to a user of infra/redis/users.acl.template: {uncovered}"
