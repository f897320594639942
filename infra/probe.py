"""Readiness probes for the local Kafka broker and Redis server (standard library only).

Used by ``infra/kafka.sh`` / ``infra/redis.sh`` (run as a plain script, so it needs no virtualenv)
and by :mod:`infra.local`.

A Kafka broker is *ready* when it answers a Metadata request listing at least one broker and an
active controller: in KRaft mode that only happens once the broker is registered and unfenced,
i.e. when topic creation and produce/consume work.

    python3 infra/probe.py kafka 127.0.0.1:9092 --timeout 60
    python3 infra/probe.py redis 127.0.0.1:6379 --timeout 10
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
from dataclasses import dataclass
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


def kafka_metadata(host: str, port: int, timeout: float = 2.0) -> KafkaMetadata:
    """Send one Metadata v1 request (no topics) and return the brokers and controller id."""
    client_id = b"pulse-probe"
    correlation_id = 1
    header = struct.pack(">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(client_id))
    body = struct.pack(">i", 0)  # topics: empty array -> no topic metadata, brokers only
    payload = header + client_id + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    (got_correlation,) = struct.unpack_from(">i", data, 0)
    if got_correlation != correlation_id:
        raise ConnectionError(f"unexpected correlation id {got_correlation}")
    pos = 4
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


def kafka_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    host, port = split_hostport(bootstrap, 9092)
    try:
        meta = kafka_metadata(host, port, timeout)
    except (OSError, struct.error):
        return False
    return bool(meta.brokers) and meta.controller_id >= 0


def redis_ping(address: str, timeout: float = 2.0) -> bool:
    """``PING`` a Redis server (``host:port`` or ``redis://host:port/db``); True on ``+PONG``."""
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
    return reply.startswith(b"+PONG")


def wait_ready(check: str, address: str, timeout: float, interval: float = 0.1) -> bool:
    """Probe ``address`` until it answers (True) or ``timeout`` s passed (False); one probe at least."""
    probe = kafka_ready if check == "kafka" else redis_ping
    try:
        return wait_until(lambda: probe(address), timeout, interval, what=f"{check} on {address}")
    except WaitTimeout:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("service", choices=["kafka", "redis"])
    parser.add_argument("address", help="host:port")
    parser.add_argument("--timeout", type=float, default=0.0, help="keep trying for this many seconds")
    args = parser.parse_args(argv)
    ok = wait_ready(args.service, args.address, args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
