"""Signed model snapshots: round trip, tamper detection, and nothing unpickled before verification."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import zlib

import orjson
import pytest

import engine.snapshots
from engine.policies import POLICIES, Candidate, LinUCB, make_policy
from engine.snapshots import MAGIC, SnapshotError, dump_model, load_model, read_header

KEY = b"k" * 32
OTHER = b"o" * 32
ACTIONS = [Candidate(f"a{i}", {f"cat:c{i % 4}": 1.0}) for i in range(12)]


def _trained(name: str, n: int = 400):
    policy = make_policy(name)
    rng = random.Random(0)
    for _ in range(n):
        ctx = {f"aff_cat:c{rng.randrange(4)}": rng.random(), "segment:s1": 1.0, "recency_h": rng.random() * 9}
        policy.learn_one(ctx, ACTIONS[rng.randrange(len(ACTIONS))], float(rng.random() < 0.2))
    return policy


def _resign(body_header: dict, payload: bytes, key: bytes = KEY) -> bytes:
    """Build a *validly signed* blob around an arbitrary payload (what a key holder could do)."""
    header = orjson.dumps({**body_header, "payload_len": len(payload),
                           "payload_sha256": hashlib.sha256(payload).hexdigest()})
    body = engine.snapshots._PREFIX.pack(MAGIC, engine.snapshots.FORMAT_VERSION, len(header)) + header + payload
    return body + engine.snapshots._mac(key, body)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_round_trip_preserves_behaviour(name: str) -> None:
    policy = _trained(name)
    blob = dump_model(policy, 42, KEY)
    loaded, version = load_model(blob, KEY)
    assert version == 42 and type(loaded) is type(policy) and loaded.n_updates == policy.n_updates == 400
    ctx = {"aff_cat:c1": 0.9, "segment:s1": 1.0}
    for seed in range(5):
        assert loaded.rank(ctx, ACTIONS, 4, random.Random(seed)) == policy.rank(ctx, ACTIONS, 4, random.Random(seed))
    loaded.learn_one(ctx, ACTIONS[0], 1.0)  # keeps learning after a reload
    assert loaded.n_updates == 401
    header = read_header(blob, KEY)
    assert header.policy == name and header.model_version == 42 and header.n_updates == 400
    assert header.policy_class.startswith("engine.policies.")


def test_tampering_anywhere_is_detected() -> None:
    blob = dump_model(_trained("linucb", 50), 1, KEY)
    for pos in (0, 9, 20, len(blob) // 2, len(blob) - 40, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(SnapshotError):
            load_model(bytes(bad), KEY)
    for cut in (0, 10, len(blob) - 1):
        with pytest.raises(SnapshotError):
            load_model(blob[:cut], KEY)
    with pytest.raises(SnapshotError, match="bad signature"):
        load_model(blob, OTHER)
    with pytest.raises(SnapshotError):
        load_model(blob + b"x", KEY)


def test_key_rotation_and_key_rules() -> None:
    blob = dump_model(_trained("popularity", 10), 3, OTHER)
    assert load_model(blob, [KEY, OTHER])[1] == 3
    with pytest.raises(ValueError, match="at least 16 bytes"):
        dump_model(_trained("random", 1), 1, b"short")
    with pytest.raises(ValueError):
        load_model(blob, b"")
    with pytest.raises(TypeError):
        dump_model(object(), 1, KEY)  # type: ignore[arg-type]  # the refusal under test


class _Exploit:
    ran = False

    def __reduce__(self):
        return (os.system, ("touch /tmp/pulse-snapshot-pwned",))


def test_nothing_is_unpickled_before_the_signature_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(engine.snapshots._RestrictedUnpickler, "load", lambda self: calls.append(1))
    evil = zlib.compress(pickle.dumps(_Exploit()))
    blob = _resign({"format": 1, "model_version": 1, "policy": "linucb",
                    "policy_class": "engine.policies.linear.LinUCB", "created_at": "x", "n_updates": 0,
                    "compression": "zlib", "pickle_protocol": 5}, evil, key=OTHER)
    with pytest.raises(SnapshotError, match="bad signature"):
        load_model(blob, KEY)
    assert calls == []


def test_a_signed_payload_still_cannot_reach_arbitrary_globals() -> None:
    evil = zlib.compress(pickle.dumps(_Exploit()))
    blob = _resign({"format": 1, "model_version": 1, "policy": "linucb",
                    "policy_class": "engine.policies.linear.LinUCB", "created_at": "x", "n_updates": 0,
                    "compression": "zlib", "pickle_protocol": 5}, evil)
    with pytest.raises(SnapshotError, match="forbidden global"):
        load_model(blob, KEY)
    assert not os.path.exists("/tmp/pulse-snapshot-pwned")


def test_payload_must_be_the_model_its_header_announces() -> None:
    payload = zlib.compress(pickle.dumps(_trained("popularity", 5), protocol=5))
    blob = _resign({"format": 1, "model_version": 1, "policy": "linucb",
                    "policy_class": "engine.policies.linear.LinUCB", "created_at": "x", "n_updates": 5,
                    "compression": "zlib", "pickle_protocol": 5}, payload)
    with pytest.raises(SnapshotError, match="not the 'linucb' model"):
        load_model(blob, KEY)
    junk = _resign({"format": 1, "model_version": 1, "policy": "linucb",
                    "policy_class": "engine.policies.linear.LinUCB", "created_at": "x", "n_updates": 5,
                    "compression": "zlib", "pickle_protocol": 5}, b"not zlib")
    with pytest.raises(SnapshotError, match="cannot load"):
        load_model(junk, KEY)


def test_snapshot_ships_only_used_capacity() -> None:
    policy = LinUCB()
    for i in range(3):
        policy.learn_one({"x": 1.0}, Candidate(f"a{i}"), 1.0)
    assert policy._Ainv.shape[0] == 8  # capacity
    loaded, _ = load_model(dump_model(policy, 1, KEY), KEY)
    assert isinstance(loaded, LinUCB)
    assert loaded._Ainv.shape[0] == 4  # prior row + 3 actions
    loaded.learn_one({"x": 1.0}, Candidate("a9"), 1.0)  # and it grows again when needed
    assert loaded.n_actions == 4
