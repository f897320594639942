"""Identity proofs, the trust of identify and consent events, and the consent gate (no Redis: a stub store)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from engine.config import load_config, parse_config
from engine.identity import IdentityPolicy, identity_proof, verify_proof
from engine.production import production_problems
from engine.settings import Settings
from engine.trust import PUBLIC, SERVER, source_headers
from schemas.events import InvalidEvent, parse_event
from streams.consent import ConsentGate
from streams.pipeline import BatchProcessor, Record

SECRET = b"k" * 32


def test_a_proof_is_the_hex_hmac_of_the_customer_id() -> None:
    # RFC 4231-style check against hashlib's HMAC computed independently
    import hashlib
    import hmac

    assert identity_proof(SECRET, "cust-1") == hmac.new(SECRET, b"cust-1", hashlib.sha256).hexdigest()
    assert verify_proof(SECRET, "cust-1", identity_proof(SECRET, "cust-1"))
    assert not verify_proof(SECRET, "cust-1", identity_proof(b"other" * 8, "cust-1"))
    assert not verify_proof(SECRET, "cust-1", identity_proof(SECRET, "cust-1")[:-1] + "0")
    assert not verify_proof(SECRET, "cust-1", 12345)


def test_who_is_trusted() -> None:
    off, on = IdentityPolicy(None), IdentityPolicy(SECRET)
    proof = {"user_hash": identity_proof(SECRET, "c")}
    public, server = source_headers(PUBLIC, "web"), source_headers(SERVER, "backend")
    assert off.trusted(server, "c", {}) and off.trusted(None, "c", {})  # a server key, a direct producer
    assert not off.trusted(public, "c", proof)  # proofs off: a browser never links
    assert on.trusted(public, "c", proof) and not on.trusted(public, "d", proof)
    assert not on.trusted([("pulse-source", b"forged")], "c", {})
    assert IdentityPolicy.from_settings(Settings(identity_proofs=False)).secret is None


def test_production_refuses_proofs_without_a_long_secret() -> None:
    from engine.kafka_client import kafka_security

    def prod(**kw: Any) -> Settings:  # with authenticated infrastructure: only the identity secret is judged
        return Settings(pulse_env="prod", model_signing_key="x" * 32, redis_url="redis://api:s3cret@redis:6379/0",
                        kafka_security=kafka_security({"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}), **kw)

    assert production_problems(prod(identity_proofs=False), api_keys=1) == []
    unset = production_problems(prod(identity_proofs=True, identity_secret=""), api_keys=1)
    assert len(unset) == 1 and unset[0].startswith("IDENTITY_PROOFS is on but IDENTITY_SECRET is unset")
    assert production_problems(prod(identity_proofs=True, identity_secret="y" * 31), api_keys=1)
    assert production_problems(Settings(pulse_env="dev", identity_proofs=True), api_keys=0) == []


def _identify(**props: Any) -> bytes:
    return orjson.dumps({"event_id": "e1", "type": "identify", "timestamp": 1_800_000_000_000,
                         "anonymous_id": "a1", "customer_id": "c1", "properties": props})


def _believed(headers: Any, value: bytes, policy: IdentityPolicy) -> Any:
    proc = BatchProcessor.__new__(BatchProcessor)
    proc.identity = policy
    return proc._believed(Record("events", 0, 1, None, value, headers), parse_event(value))


def test_an_untrusted_identify_loses_its_customer_id_and_a_trusted_one_keeps_it() -> None:
    policy = IdentityPolicy(SECRET)
    public = source_headers(PUBLIC, "web")
    assert _believed(public, _identify(), policy).customer_id is None
    assert _believed(public, _identify(user_hash="0" * 64), policy).customer_id is None
    assert _believed(public, _identify(user_hash=identity_proof(SECRET, "c1")), policy).customer_id == "c1"
    assert _believed(source_headers(SERVER, "b"), _identify(), policy).customer_id == "c1"
    consent = orjson.dumps({"event_id": "e2", "type": "consent", "timestamp": 1_800_000_000_000,
                            "customer_id": "c1", "properties": {"personalisation": True}})
    with pytest.raises(InvalidEvent, match="needs an anonymous_id, a server key or a valid properties.user_hash"):
        _believed(public, consent, policy)


def test_a_browser_event_naming_a_customer_goes_to_its_anonymous_id_unless_proven() -> None:
    """A page cannot write into a customer's profile by naming them: prepare (no Redis) keeps the customer id of
    a server's or a proven event only; a browser's event without an anonymous id is dead-lettered."""
    import redis.asyncio as aioredis

    from engine.profile_store import ProfileStore
    from tests.support import CONFIG_PATH

    dead: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    async def sink(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        dead.append((value, headers))

    store = ProfileStore(aioredis.Redis(), load_config(CONFIG_PATH))  # prepare never talks to Redis
    proc = BatchProcessor(store, sink, identity=IdentityPolicy(SECRET))

    def view(i: int, anonymous: bool = True, **props: Any) -> bytes:
        e: dict[str, Any] = {"event_id": f"v{i}", "type": "page_view", "timestamp": int(time.time() * 1000),
                             "customer_id": "victim", "properties": {"category": "shoes", **props}}
        if anonymous:
            e["anonymous_id"] = "a-attacker"
        return orjson.dumps(e)

    public, server = source_headers(PUBLIC, "web"), source_headers(SERVER, "backend")
    records = [Record("events", 0, 1, None, view(1), public),
               Record("events", 0, 2, None, view(2, user_hash=identity_proof(SECRET, "victim")), public),
               Record("events", 0, 3, None, view(3), server),
               Record("events", 0, 4, None, view(4), None),  # a producer the topic's ACLs admit
               Record("events", 0, 5, None, view(5, anonymous=False), public)]
    prepared = asyncio.run(proc.prepare(records))
    owners = [(ev.customer_id, ev.anonymous_id) for _, ev, _, _ in prepared.items]
    assert owners == [(None, "a-attacker"), ("victim", "a-attacker"), ("victim", "a-attacker"),
                      ("victim", "a-attacker")]
    assert len(dead) == 1 and b'"v5"' in dead[0][0]
    assert any(k == "dlq.reason" and b"needs an anonymous_id" in v for k, v in dead[0][1])


class _Flags:
    def __init__(self, flags: dict[str, str | None]) -> None:
        self.flags = flags

    async def personalisation_flags(self, visitors: Any) -> list[str | None]:
        return [self.flags.get(c or a) for c, a in visitors]


@pytest.mark.parametrize(("mode", "expected"), [("opt_out", [True, False, True, False, True]),
                                                ("opt_in", [False, False, True, False, True])])
def test_the_consent_gate_follows_the_mode_and_the_batchs_own_consent(mode: str, expected: list[bool]) -> None:
    def ev(visitor: str, etype: str = "click", **props: Any) -> Any:
        return parse_event({"event_id": f"e-{visitor}-{etype}", "type": etype, "timestamp": 1_800_000_000_000,
                            "anonymous_id": visitor, "properties": props or {"item_id": "i"}})

    gate = ConsentGate(_Flags({"withdrawn": "0", "granted": "1"}),  # type: ignore[arg-type]  # a stub store
                       parse_config({"privacy": {"consent_mode": mode}}))
    events = [ev("unknown"), ev("withdrawn"), ev("granted"), ev("later", "consent", personalisation=False),
              ev("later2", "consent", personalisation=True)]
    assert asyncio.run(gate.allowed(events)) == expected


def test_consent_events_take_marketing_per_channel_or_for_all() -> None:
    def consent(**props: Any) -> Any:
        return parse_event({"event_id": "e", "type": "consent", "timestamp": 1_800_000_000_000,
                            "anonymous_id": "a", "properties": props})

    assert consent(marketing={"email": True, "sms": False}).properties["marketing"] == {"email": True, "sms": False}
    assert consent(marketing=False).properties["marketing"] is False
    bads: list[dict[str, Any]] = [{"marketing": {"fax": True}}, {"marketing": {}}, {"marketing": "yes"},
                                  {"user_hash": "0" * 64}]
    for bad in bads:
        with pytest.raises(InvalidEvent):
            consent(**bad)
