"""Readiness probes for the local Kafka broker and Redis server (standard library only).

Used by ``infra/kafka.sh`` / ``infra/redis.sh`` (run as a plain script, so it needs no virtualenv)
and by :mod:`infra.local`.

A Kafka broker is *ready* when it answers a Metadata request listing at least one broker and an
active controller: in KRaft mode that only happens once the broker is registered and unfenced,
i.e. when topic creation and produce/consume work. On a SASL_PLAINTEXT listener the probe logs in first
with SCRAM-SHA-256/512 (RFC 5802, ``--sasl-mechanism``/``--sasl-username``, the password from
``PULSE_PROBE_SASL_PASSWORD``); unauthenticated, such a broker answers nothing.

    python3 infra/probe.py kafka 127.0.0.1:9092 --timeout 60
    python3 infra/probe.py redis 127.0.0.1:6379 --timeout 10
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a plain script: make the ``infra`` package importable (standard library only)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.handles import WaitTimeout, wait_until  # noqa: E402 - after the path set-up above

_METADATA_API_KEY = 3
_METADATA_VERSION = 1  # v1: brokers carry a rack, response carries the controller id.


@dataclass(frozen=True, slots=True)
class KafkaMetadata:
    brokers: tuple[tuple[int, str, int], ...]
    controller_id: int


def split_hostport(address: str, default_port: int) -> tuple[str, int]:
    """``"host:port"`` (first entry of a comma-separated list) -> ``(host, port)``."""
    first = address.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    first = first.rstrip("/")
    host, sep, port = first.rpartition(":")
    if not sep:
        return first, default_port
    return host.strip("[]"), int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def _read_string(data: bytes, pos: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", data, pos)
    pos += 2
    if length < 0:
        return None, pos
    return data[pos : pos + length].decode("utf-8"), pos + length


_SASL_HANDSHAKE_KEY, _SASL_AUTHENTICATE_KEY = 17, 36
_SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


@dataclass(frozen=True, slots=True)
class SaslLogin:
    """SCRAM credentials the probe authenticates with (a broker whose listener is SASL_PLAINTEXT)."""

    mechanism: str
    username: str
    password: str = field(repr=False)


class _Connection:
    """Kafka requests (header v1) and responses on one socket, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.correlation_id = sock, 0

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation_id += 1
        client_id = b"pulse-probe"
        header = struct.pack(">hhih", api_key, version, self.correlation_id, len(client_id)) + client_id
        self.sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        (size,) = struct.unpack(">i", _recv_exact(self.sock, 4))
        data = _recv_exact(self.sock, size)
        (got,) = struct.unpack_from(">i", data, 0)
        if got != self.correlation_id:
            raise ConnectionError(f"unexpected correlation id {got}")
        return data[4:]


def _kafka_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _scram_login(conn: _Connection, login: SaslLogin) -> None:
    """SaslHandshake v1 + SCRAM (RFC 5802) in SaslAuthenticate v0; ConnectionError when refused."""
    digest = _SCRAM_HASHES[login.mechanism]
    (error,) = struct.unpack_from(">h", conn.request(_SASL_HANDSHAKE_KEY, 1, _kafka_string(login.mechanism)), 0)
    if error:
        raise ConnectionError(f"SASL handshake refused {login.mechanism} (error {error})")

    def authenticate(message: bytes) -> bytes:
        data = conn.request(_SASL_AUTHENTICATE_KEY, 0, struct.pack(">i", len(message)) + message)
        (err,) = struct.unpack_from(">h", data, 0)
        text, pos = _read_string(data, 2)
        if err:
            raise ConnectionError(f"SASL authentication failed: {text} (error {err})")
        (length,) = struct.unpack_from(">i", data, pos)
        return data[pos + 4 : pos + 4 + length]

    user = login.username.replace("=", "=3D").replace(",", "=2C")
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    server_first = authenticate(f"n,,{first_bare}".encode()).decode()
    fields = dict(part.split("=", 1) for part in server_first.split(","))
    if not fields.get("r", "").startswith(nonce):
        raise ConnectionError("SCRAM: the server's nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(digest, login.password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", digest)
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(hashlib.new(digest, client_key).digest(), auth_message, digest)
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    server_final = authenticate(f"{final_bare},p={proof}".encode()).decode()
    expected = base64.b64encode(hmac.digest(hmac.digest(salted, b"Server Key", digest), auth_message, digest))
    if server_final != f"v={expected.decode()}":
        raise ConnectionError("SCRAM: the server's signature does not match")


def kafka_metadata(host: str, port: int, timeout: float = 2.0, sasl: SaslLogin | None = None) -> KafkaMetadata:
    """Send one Metadata v1 request (no topics) and return the brokers and controller id; with ``sasl``, after
    a SCRAM login (a SASL_PLAINTEXT listener answers nothing before it)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        conn = _Connection(sock)
        if sasl is not None:
            _scram_login(conn, sasl)
        # topics: empty array -> no topic metadata, brokers only
        data = conn.request(_METADATA_API_KEY, _METADATA_VERSION, struct.pack(">i", 0))
    pos = 0
    (n_brokers,) = struct.unpack_from(">i", data, pos)
    pos += 4
    brokers: list[tuple[int, str, int]] = []
    for _ in range(max(n_brokers, 0)):
        (node_id,) = struct.unpack_from(">i", data, pos)
        pos += 4
        broker_host, pos = _read_string(data, pos)
        (broker_port,) = struct.unpack_from(">i", data, pos)
        pos += 4
        _rack, pos = _read_string(data, pos)
        brokers.append((node_id, broker_host or "", broker_port))
    (controller_id,) = struct.unpack_from(">i", data, pos)
    return KafkaMetadata(brokers=tuple(brokers), controller_id=controller_id)


def kafka_ready(bootstrap: str, timeout: float = 2.0, sasl: SaslLogin | None = None) -> bool:
    host, port = split_hostport(bootstrap, 9092)
    try:
        meta = kafka_metadata(host, port, timeout, sasl)
    except (OSError, struct.error, ValueError, KeyError):  # ValueError, KeyError: a malformed SCRAM answer
        return False
    return bool(meta.brokers) and meta.controller_id >= 0


def redis_ping(address: str, timeout: float = 2.0) -> bool:
    """``PING`` a Redis server (``host:port`` or ``redis://host:port/db``); True on ``+PONG``, or on ``-NOAUTH``:
    a server whose default user is off answers that, and it is up (the probe holds no password)."""
    host, port = split_hostport(address.split("/")[2] if "://" in address else address, 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def wait_ready(check: str, address: str, timeout: float, interval: float = 0.1,
               sasl: SaslLogin | None = None) -> bool:
    """Probe ``address`` until it answers (True) or ``timeout`` s passed (False); one probe at least."""
    def probe() -> bool:
        return kafka_ready(address, sasl=sasl) if check == "kafka" else redis_ping(address)
    try:
        return wait_until(probe, timeout, interval, what=f"{check} on {address}")
    except WaitTimeout:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=["kafka", "redis"])
    parser.add_argument("address", help="host:port")
    parser.add_argument("--timeout", type=float, default=0.0, help="keep trying for this many seconds")
    parser.add_argument("--sasl-mechanism", choices=sorted(_SCRAM_HASHES), help="log in first (Kafka)")
    parser.add_argument("--sasl-username", help="with --sasl-mechanism; the password is read from "
                        "PULSE_PROBE_SASL_PASSWORD (never a command-line argument)")
    args = parser.parse_args(argv)
    sasl = None
    if args.sasl_mechanism:
        sasl = SaslLogin(args.sasl_mechanism, args.sasl_username or "", os.environ.get("PULSE_PROBE_SASL_PASSWORD", ""))
    ok = wait_ready(args.service, args.address, args.timeout, sasl=sasl)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
