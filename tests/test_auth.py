"""API keys: parsing, the lookup and its constant-time comparison, roles, origins, CORS (serving/auth.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import orjson
import pytest

from serving import auth
from serving.auth import ADMIN, PUBLIC, SERVER, ApiKey, Denial, KeyConfigError, KeyRing

PK, SK, AK = auth.new_key(PUBLIC), auth.new_key(SERVER), auth.new_key(ADMIN)


def ring() -> KeyRing:
    return auth.keyring_from(f"public:{PK}:https://shop.example|https://M.Shop.Example/, server:{SK}, admin:{AK}",
                             "", dev=False)


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_new_keys_are_long_random_and_role_prefixed() -> None:
    assert PK.startswith("pulse_public_") and len(PK) - len("pulse_public_") == 43
    assert auth.new_key(PUBLIC) != auth.new_key(PUBLIC)
    with pytest.raises(KeyConfigError, match="unknown role"):
        auth.new_key("root")


def test_api_keys_parses_roles_origins_and_keeps_only_digests() -> None:
    keys = auth.parse_api_keys(f"public:{PK}:https://shop.example/|https://M.shop.example,server:{SK}")
    assert [(k.name, k.role) for k in keys] == [("public-1", PUBLIC), ("server-1", SERVER)]
    assert keys[0].origins == frozenset({"https://shop.example", "https://m.shop.example"})
    assert keys[0].digest == hashlib.sha256(PK.encode()).digest()
    for k in keys:  # nothing but the digest of the secret is held
        assert PK not in repr(k) and SK not in repr(k)


@pytest.mark.parametrize(("value", "reason"), [
    ("root:" + "k" * 30, "unknown role"),
    ("public", "expected role:key"),
    ("server:short", "at least 24"),
    ("public:" + "k" * 30 + ":shop.example", "scheme://host"),
])
def test_api_keys_errors_say_why(value: str, reason: str) -> None:
    with pytest.raises(KeyConfigError, match=reason):
        auth.parse_api_keys(value)


def test_short_keys_are_accepted_in_development_only() -> None:
    assert len(auth.keyring_from("admin:dev", "", dev=True)) == 1
    with pytest.raises(KeyConfigError, match="at least 24"):
        auth.keyring_from("admin:dev", "", dev=False)


def test_the_same_key_twice_is_refused() -> None:
    with pytest.raises(KeyConfigError, match="same key"):
        auth.keyring_from(f"public:{PK},admin:{PK}", "", dev=False)


def test_keys_file_toml_and_json_with_keys_or_hashes(tmp_path: Path) -> None:
    toml = tmp_path / "keys.toml"
    hashed = hashlib.sha256(PK.encode()).hexdigest()
    toml.write_text(f'[[keys]]\nname = "shop-web"\nrole = "public"\nkey_sha256 = "{hashed}"\n'
                    f'origins = ["https://shop.example"]\n\n[[keys]]\nrole = "server"\nkey = "{SK}"\n')
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps({"keys": [{"name": "ops", "role": "admin", "key": AK}]}))
    r = auth.keyring_from("", str(toml), dev=False)
    public = r.lookup(f"Bearer {PK}")
    assert public is not None and (public.name, public.role) == ("shop-web", PUBLIC)
    assert r.lookup(f"Bearer {SK}").name == "file-2"  # type: ignore[union-attr]
    assert auth.keyring_from("", str(as_json), dev=False).lookup(f"Bearer {AK}").name == "ops"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "reason"), [
    ('[[keys]]\nrole = "public"\n', "exactly one of key and key_sha256"),
    ('[[keys]]\nrole = "public"\nkey_sha256 = "abc"\n', "64 hex digits"),
    ('[[keys]]\nrole = "admin"\nkey = "' + "k" * 30 + '"\nrights = "all"\n', "unknown fields"),
    ('keys = 3\n', "expected a list named keys"),
    ('[[keys\n', "API_KEYS_FILE"),
])
def test_keys_file_errors_say_why(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(KeyConfigError, match=reason):
        auth.load_keys_file(path)


def test_bearer_and_basic_with_the_key_as_user_name() -> None:
    r = ring()
    assert r.lookup(f"Bearer {SK}").role == SERVER  # type: ignore[union-attr]
    assert r.lookup(f"bearer {SK}".encode()).role == SERVER  # type: ignore[union-attr]
    assert r.lookup(basic(PK)).role == PUBLIC  # type: ignore[union-attr]  # Segment: Basic base64(writeKey:)
    assert r.lookup(basic("", AK)).role == ADMIN  # type: ignore[union-attr]
    for bad in (None, "", f"Bearer {SK}x", f"Token {SK}", "Basic !!!", basic("nobody"), "Bearer ",
                f"Bearer {'k' * 300}"):
        assert r.lookup(bad) is None


def test_lookup_goes_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The final comparison is the constant-time one: a lookup hit still fails if compare_digest says no."""
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return False

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert ring().lookup(f"Bearer {SK}") is None
    assert calls == [(hashlib.sha256(SK.encode()).digest(),) * 2]


def test_roles_are_hierarchical() -> None:
    r = ring()
    assert isinstance(r.check(f"Bearer {SK}", None, PUBLIC), ApiKey)  # a server key may decide
    assert isinstance(r.check(f"Bearer {AK}", None, SERVER), ApiKey)
    for key, role in ((PK, SERVER), (PK, ADMIN), (SK, ADMIN)):
        denial = r.check(f"Bearer {key}", None, role)
        assert isinstance(denial, Denial) and denial.status == 403
        assert orjson.loads(denial.body)["required_role"] == role


def test_no_key_is_401_with_a_challenge_naming_the_role() -> None:
    denial = ring().check(None, None, ADMIN)
    assert isinstance(denial, Denial) and denial.status == 401
    assert dict(denial.headers)[b"www-authenticate"].startswith(b"Bearer")
    assert orjson.loads(denial.body)["required_role"] == ADMIN
    assert ring().check(f"Bearer {PK}wrong", None, PUBLIC).status == 401  # type: ignore[union-attr]


def test_origins_per_key() -> None:
    r = ring()
    assert isinstance(r.check(f"Bearer {PK}", "https://shop.example", PUBLIC), ApiKey)
    assert isinstance(r.check(f"Bearer {PK}", "https://m.shop.example", PUBLIC), ApiKey)
    assert isinstance(r.check(f"Bearer {PK}", None, PUBLIC), ApiKey)  # not a browser page
    refused = r.check(f"Bearer {PK}", "https://evil.example", PUBLIC)
    assert isinstance(refused, Denial) and refused.status == 403 and b"evil.example" in refused.body
    # a server key lists no origin: no browser page may use it
    assert isinstance(r.check(f"Bearer {SK}", "https://shop.example", PUBLIC), Denial)


def test_preflight_grants_the_origins_of_any_key() -> None:
    r = ring()
    status, headers = auth.preflight(r, b"https://shop.example")
    assert status == 204 and dict(headers)[b"access-control-allow-origin"] == b"https://shop.example"
    assert b"authorization" in dict(headers)[b"access-control-allow-headers"]
    status, headers = auth.preflight(r, b"https://evil.example")
    assert status == 403 and b"access-control-allow-origin" not in dict(headers)
    assert auth.preflight(r, None)[0] == 403
    assert auth.cors_headers(r, b"https://evil.example") == []


def test_open_ring_allows_everything() -> None:
    r = KeyRing([])
    assert r.open and r.check(None, "https://anything.example", ADMIN) is None
    assert auth.preflight(r, b"https://anything.example")[0] == 204


def test_star_origin_is_explicit() -> None:
    r = auth.keyring_from(f"public:{PK}:*", "", dev=False)
    assert isinstance(r.check(f"Bearer {PK}", "https://anywhere.example", PUBLIC), ApiKey)
    assert auth.preflight(r, b"https://anywhere.example")[0] == 204
