"""API keys with roles: who may call what (docs/security.md).

Roles are ordered, each including the ones before it: ``public`` (embedded in web pages: decide and the
browser's event types, from its allowed origins) < ``server`` (a site's back end: every event type) <
``admin`` (profiles, experiments, metrics, the API docs). A key is sent as ``Authorization: Bearer <key>`` or
as HTTP Basic with the key as user name (``Basic base64(key:)``, what the Segment and RudderStack SDKs send
with their write key). Only each key's SHA-256 is kept; a presented key is hashed and looked up by digest,
then the digests are compared with :func:`hmac.compare_digest`.

Keys come from ``API_KEYS`` (``role:key`` or ``role:key:origin|origin``, comma separated) and the file named
by ``API_KEYS_FILE`` (TOML or JSON, see :func:`load_keys_file`). Without any key (development only, see
``engine.production``) every call is allowed.

No credentials or an unknown key: 401 with ``WWW-Authenticate``; a key below the route's role, or a browser
origin the key does not list: 403. Both bodies say which role the route needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from engine import trust

log = logging.getLogger(__name__)

PUBLIC, SERVER, ADMIN = "public", "server", "admin"
#: Every role, lowest first: a key of one role may do what the roles before it may.
ROLES = (PUBLIC, SERVER, ADMIN)
_RANK = {role: i for i, role in enumerate(ROLES)}
#: Any origin (only when a key lists it explicitly, or no key is configured at all).
ANY_ORIGIN = "*"
#: The shortest key accepted outside development (characters; :func:`new_key` makes 43).
MIN_KEY_LENGTH = 24
MAX_KEY_LENGTH = 256
CHALLENGE = [(b"www-authenticate", b'Bearer realm="pulse", Basic realm="pulse"')]


class KeyConfigError(ValueError):
    """A key definition that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    role: str
    digest: bytes
    #: browser origins (``scheme://host[:port]``) allowed to use the key; ``*``: any; empty: none
    origins: frozenset[str] = frozenset()

    def allows(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]

    def origin_allowed(self, origin: str | None) -> bool:
        """A request without ``Origin`` is not from a browser page and is not restricted by origin (such a
        header is trivially forged outside browsers: origins stop other sites' pages, not scripts)."""
        return origin is None or ANY_ORIGIN in self.origins or origin.lower() in self.origins


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def new_key(role: str) -> str:
    """A fresh random key, e.g. ``pulse_server_3n0...`` (32 random bytes, URL-safe)."""
    _check_role(role)
    return f"pulse_{role}_{secrets.token_urlsafe(32)}"


def _check_role(role: str) -> str:
    if role not in _RANK:
        raise KeyConfigError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return role


def normalise_origin(origin: str) -> str:
    origin = origin.strip().rstrip("/").lower()
    if origin != ANY_ORIGIN and "://" not in origin:
        raise KeyConfigError(f"origin {origin!r}: expected scheme://host[:port] (e.g. https://shop.example) or *")
    return origin


def _key(name: str, role: str, secret: str | None, hex_digest: str | None, origins: Iterable[str],
         min_length: int) -> ApiKey:
    _check_role(role)
    if (secret is None) == (hex_digest is None):
        raise KeyConfigError(f"key {name!r}: give exactly one of key and key_sha256")
    if secret is not None:
        if not secret or len(secret) > MAX_KEY_LENGTH or any(c in secret for c in " ,:\t\r\n"):
            raise KeyConfigError(f"key {name!r}: a key is 1 to {MAX_KEY_LENGTH} characters without spaces, "
                                 f"commas or colons")
        if len(secret) < min_length:
            raise KeyConfigError(f"key {name!r}: {len(secret)} characters; at least {min_length} outside "
                                 f"development (make one with serving.auth.new_key)")
        raw = digest(secret)
    else:
        try:
            raw = bytes.fromhex(hex_digest or "")
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise KeyConfigError(f"key {name!r}: key_sha256 must be 64 hex digits (sha256 of the key)")
    return ApiKey(name, role, raw, frozenset(normalise_origin(o) for o in origins))


def parse_api_keys(value: str, min_length: int = MIN_KEY_LENGTH) -> list[ApiKey]:
    """``API_KEYS``: comma-separated ``role:key`` or ``role:key:origin|origin``; each is named ``<role>-<n>``.

    >>> [(k.name, k.role, sorted(k.origins)) for k in parse_api_keys(
    ...     "public:pk-0123456789:https://shop.example|https://m.shop.example, server:sk-0123456789", 10)]
    [('public-1', 'public', ['https://m.shop.example', 'https://shop.example']), ('server-1', 'server', [])]
    """
    keys: list[ApiKey] = []
    counts: dict[str, int] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        role, sep, rest = entry.partition(":")
        if not sep:
            raise KeyConfigError("API_KEYS: expected role:key[:origin|origin] entries separated by commas")
        secret, _, origins = rest.partition(":")
        counts[role] = counts.get(role, 0) + 1
        keys.append(_key(f"{role}-{counts[role]}", role.strip(), secret.strip(), None,
                         [o for o in origins.split("|") if o.strip()], min_length))
    return keys


def load_keys_file(path: Path, min_length: int = MIN_KEY_LENGTH) -> list[ApiKey]:
    """Keys from a TOML (``.toml``) or JSON file: a list ``keys`` of tables with ``role``, ``key`` or
    ``key_sha256`` (hex SHA-256 of the key, so that the file holds no secret), optional ``origins`` and
    ``name``::

        [[keys]]
        name = "shop-web"
        role = "public"
        key_sha256 = "9f86d081884c7d65..."
        origins = ["https://shop.example"]
    """
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise KeyConfigError(f"API_KEYS_FILE={path}: {exc}") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyConfigError(f"API_KEYS_FILE={path}: expected a list named keys")
    keys = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise KeyConfigError(f"API_KEYS_FILE={path}: keys[{i}] is not a table")
        unknown = set(entry) - {"name", "role", "key", "key_sha256", "origins"}
        if unknown:
            raise KeyConfigError(f"API_KEYS_FILE={path}: keys[{i}]: unknown fields {sorted(unknown)}")
        origins = entry.get("origins", [])
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise KeyConfigError(f"API_KEYS_FILE={path}: keys[{i}].origins must be a list of strings")
        name = str(entry.get("name") or f"file-{i}")
        keys.append(_key(name, str(entry.get("role")), entry.get("key"), entry.get("key_sha256"), origins,
                         min_length))
    return keys


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request is refused: its status, JSON body and headers."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def _deny(status: int, error: str, role: str) -> Denial:
    return Denial(status, orjson.dumps({"error": error, "required_role": role}),
                  CHALLENGE if status == 401 else [])


class KeyRing:
    """The configured keys, by digest. ``open``: no key configured, every call allowed (development)."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.by_digest: dict[bytes, ApiKey] = {}
        for k in keys:
            other = self.by_digest.get(k.digest)
            if other is not None:
                raise KeyConfigError(f"keys {other.name!r} and {k.name!r} are the same key")
            self.by_digest[k.digest] = k
        self.open = not self.by_digest
        origins = frozenset().union(*(k.origins for k in self.by_digest.values()))
        #: origins a preflight is granted for: those of any key (the preflight carries no key)
        self.any_origin = self.open or ANY_ORIGIN in origins
        self.origins = origins - {ANY_ORIGIN}

    def __len__(self) -> int:
        return len(self.by_digest)

    def lookup(self, authorization: str | bytes | None) -> ApiKey | None:
        """The key an ``Authorization`` header carries (Bearer, or Basic with the key as user name)."""
        if not authorization:
            return None
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        scheme, _, credentials = authorization.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer":
            presented = credentials.strip()
        elif scheme == b"basic":
            try:
                user, _, password = base64.b64decode(credentials.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return None
            presented = user or password  # the key is the user name; some clients put it in the password
        else:
            return None
        if not presented or len(presented) > MAX_KEY_LENGTH:
            return None
        presented_digest = digest(presented)
        key = self.by_digest.get(presented_digest)
        # the lookup compares digests of a high-entropy key; compare_digest makes the final check constant-time
        if key is None or not hmac.compare_digest(key.digest, presented_digest):
            return None
        return key

    def check(self, authorization: str | bytes | None, origin: str | None, role: str) -> ApiKey | Denial | None:
        """The caller's key, or why it is refused; ``None`` when the ring is open (no keys: development)."""
        if self.open:
            return None
        key = self.lookup(authorization)
        if key is None:
            why = "no API key" if not authorization else "unknown API key or unsupported Authorization scheme"
            return _deny(401, f"{why}: send Authorization: Bearer <key> (or Basic with the key as user name); "
                              f"this endpoint needs a {role} key", role)
        if not key.allows(role):
            return _deny(403, f"this endpoint needs a {role} key (or a higher role); key {key.name!r} is "
                              f"{key.role}", role)
        if not key.origin_allowed(origin):
            return _deny(403, f"origin {origin} is not allowed for key {key.name!r}", role)
        return key

    def preflight_allowed(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.origins


def keyring_from(api_keys: str, api_keys_file: str, dev: bool) -> KeyRing:
    """The keys of ``API_KEYS`` and ``API_KEYS_FILE``; development accepts short keys."""
    min_length = 1 if dev else MIN_KEY_LENGTH
    keys = parse_api_keys(api_keys, min_length)
    if api_keys_file:
        keys += load_keys_file(Path(api_keys_file), min_length)
    return KeyRing(keys)


# --- events: which types a key may send, and the source the collector stamps them with ---

def refuse_event_types(caller: ApiKey | None, types: list[str]) -> Denial | None:
    """403 when a public key sends a type outside ``engine.trust.PUBLIC_EVENT_TYPES`` (the whole request is
    refused, as for invalid events, so that nothing is published twice when it is fixed and resent)."""
    if caller is None or caller.allows(SERVER):
        return None
    refused = [{"index": i, "type": t} for i, t in enumerate(types) if t not in trust.PUBLIC_EVENT_TYPES]
    if not refused:
        return None
    return Denial(403, orjson.dumps({
        "error": f"key {caller.name!r} is public: it may send {', '.join(sorted(trust.PUBLIC_EVENT_TYPES))}; "
                 f"other event types need a server key; none were published",
        "required_role": SERVER, "accepted": 0, "errors": refused}), [])


def source_headers(caller: ApiKey | None) -> list[tuple[str, bytes]]:
    """The Kafka headers of an event the caller sent: ``public`` for a public key, ``server`` for a server or
    admin key, and ``server`` with key name ``none`` when no key is configured (development: all is open)."""
    if caller is None:
        return trust.source_headers(trust.SERVER, "none")
    return trust.source_headers(trust.PUBLIC if caller.role == PUBLIC else trust.SERVER, caller.name)


# --- CORS (for the routes a public key may call; preflights carry no key, so any key's origins count) ---

#: Paths a browser may call across origins.
CORS_PATHS = frozenset({"/v1/decide", "/v1/events",
                        # the Segment/RudderStack routes (serving/segment_api.py): analytics.js calls them
                        "/v1/batch", "/v1/track", "/v1/page", "/v1/identify", "/v1/screen", "/v1/alias",
                        "/v1/group"})
PREFLIGHT_MAX_AGE_S = 600


def cors_headers(ring: KeyRing, origin: bytes | None) -> list[tuple[bytes, bytes]]:
    """Headers that let a browser page from ``origin`` read the answer (none for other origins)."""
    if origin is None or not ring.preflight_allowed(origin.decode("latin-1")):
        return []
    return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]


def preflight(ring: KeyRing, origin: bytes | None) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The answer to ``OPTIONS`` on a CORS path: 204 with the grants, or 403 for an origin no key lists."""
    allowed = cors_headers(ring, origin)
    if not allowed:
        return 403, [(b"vary", b"Origin"), (b"content-length", b"0")]
    return 204, [*allowed, (b"access-control-allow-methods", b"POST, OPTIONS"),
                 (b"access-control-allow-headers", b"authorization, content-type"),
                 (b"access-control-max-age", str(PREFLIGHT_MAX_AGE_S).encode()), (b"content-length", b"0")]


async def cors(ring: KeyRing, app: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI, for a CORS path other than ``POST /v1/decide``: a preflight is answered here; other requests go
    to ``app``, with the CORS headers added to the answer for an origin some key lists."""
    origin = next((v for k, v in scope.get("headers", ()) if k == b"origin"), None)
    if scope["method"] == "OPTIONS":
        status, headers = preflight(ring, origin)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    extra = cors_headers(ring, origin)
    if not extra:
        await app(scope, receive, send)
        return

    async def send_with_cors(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    await app(scope, receive, send_with_cors)


# --- FastAPI routes ---

class AuthError(Exception):
    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.body.decode())
        self.denial = denial


async def auth_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    d = exc.denial
    return Response(d.body, status_code=d.status, media_type="application/json",
                    headers={k.decode(): v.decode() for k, v in d.headers})


class Guard:
    """The dependency that requires ``role``; the route gets the caller's :class:`ApiKey` (``None`` when no
    key is configured). Tests find each route's role through it (``guard_role``)."""

    def __init__(self, role: str) -> None:
        self.role = _check_role(role)

    async def __call__(self, request: Request) -> ApiKey | None:
        ring: KeyRing = request.app.state.keyring
        headers = request.headers
        result = ring.check(headers.get("authorization"), headers.get("origin"), self.role)
        if isinstance(result, Denial):
            raise AuthError(result)
        return result


def require(role: str) -> Any:
    """``dependencies=[require(ADMIN)]`` on a route or a router."""
    return Depends(Guard(role))


#: A route parameter ``caller: PublicCaller`` requires a public key or higher and receives it.
PublicCaller = Annotated[ApiKey | None, Depends(Guard(PUBLIC))]


# --- a key in the body: what a page's navigator.sendBeacon sends (it cannot set headers) ---

#: What :class:`BodyKeyGuard` gives the route when the request has no ``Authorization`` header.
KEY_IN_BODY = ApiKey("key-in-body", PUBLIC, b"")
#: The body member (of a ``{"batch": [...]}`` body) that carries the key, as Segment's analytics.js sends it.
BODY_KEY_MEMBER = "writeKey"


class BodyKeyGuard(Guard):
    """:class:`Guard` (public role), except that a request without ``Authorization`` gets :data:`KEY_IN_BODY`:
    the route then reads the key from the body and checks it with :func:`check_body_key`."""

    async def __call__(self, request: Request) -> ApiKey | None:
        ring: KeyRing = request.app.state.keyring
        if not ring.open and "authorization" not in request.headers:
            return KEY_IN_BODY
        return await super().__call__(request)


def check_body_key(ring: KeyRing, key: Any, origin: str | None) -> ApiKey | Denial:
    """The public key a body carries, or why not: none (401), or a server or admin key (403: a key in a
    body comes from a page, where only a public key may be, since anyone can read it there).

    >>> ring = KeyRing(parse_api_keys("public:pk-0123456789:https://shop.example,server:sk-0123456789", 10))
    >>> check_body_key(ring, "pk-0123456789", "https://shop.example").name
    'public-1'
    >>> [check_body_key(ring, k, "https://shop.example").status for k in (None, "nope", "sk-0123456789")]
    [401, 401, 403]
    >>> check_body_key(ring, "pk-0123456789", "https://evil.example").status
    403
    """
    if not isinstance(key, str) or not key:
        return _deny(401, f"no API key: send Authorization: Bearer <key>, or (navigator.sendBeacon) the public "
                          f"key as {BODY_KEY_MEMBER} in a {{\"batch\": [...]}} body", PUBLIC)
    authorization = b"Bearer " + key.encode("utf-8", "replace")
    known = ring.lookup(authorization)
    if known is not None and known.role != PUBLIC:  # whatever the origin: this key is exposed
        return _deny(403, f"key {known.name!r} is a {known.role} key sent in a request body, as from a web page: "
                          f"only a public key may be used there (anyone can read a page; replace this key)", PUBLIC)
    found = ring.check(authorization, origin, PUBLIC)
    assert found is not None  # the ring is not open: BodyKeyGuard lets the header check run then
    return found


#: ``caller: BodyKeyCaller``: like :data:`PublicCaller`, or :data:`KEY_IN_BODY` without an Authorization header.
BodyKeyCaller = Annotated[ApiKey | None, Depends(BodyKeyGuard(PUBLIC))]


def guard_role(route: Any) -> str | None:
    """The role a FastAPI route (or route context) requires through :class:`Guard`, if any."""
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", None) or [])
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, Guard):
            return dep.call.role
        stack.extend(dep.dependencies)
    return None


def route_roles(routes: Iterable[Any]) -> list[tuple[str, str, str | None]]:
    """(method, path, role or ``None``) of every route, those of included routers (with the routers'
    dependencies) too."""
    from fastapi.routing import iter_route_contexts

    out = []
    for route in iter_route_contexts(list(routes)):
        path = route.path_format or route.path or repr(route)
        out += [(method, path, guard_role(route)) for method in sorted(route.methods or {"GET"})]
    return out


def document_security(schema: dict[str, Any], routes: Iterable[Any]) -> dict[str, Any]:
    """Add the key schemes to an OpenAPI schema, and to each guarded operation its schemes and role."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
        "basic": {"type": "http", "scheme": "basic", "description": "the API key as user name, no password"},
    }
    for method, path, role in route_roles(routes):
        op = schema.get("paths", {}).get(path, {}).get(method.lower())
        if role is not None and op is not None:
            op["security"] = [{"bearer": []}, {"basic": []}]
            op["description"] = (op.get("description", "") + f"\n\nAPI key role: `{role}` or higher.").strip()
    return schema


def warn_if_open(ring: KeyRing) -> None:
    if ring.open:
        log.warning("\n%s\nPULSE_ENV=dev and no API keys: EVERY endpoint is open to anyone who can reach this "
                    "port (profiles, erasure, events as any customer). Set API_KEYS or API_KEYS_FILE.\n%s",
                    "!" * 100, "!" * 100)
