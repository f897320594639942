"""``HiredisPackedConnection`` sends the same bytes as redis-py's own packing, or redis-py's error."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from engine.redis_connection import HiredisPackedConnection

COMMANDS = [
    ("EVALSHA", "a" * 40, 1, "p:c-1", "off:events:3", 7776000, 64, b'[[1,"t",1.5,[["i","c",1]],0]]'),
    ("SET", "k", 0.1 + 0.2),
    ("SET", "k", 1e300),
    ("SET", "k", -(10**20)),
    ("SET", "clé", "café"),
    ("SET", b"\xff\x00", b"x" * 100_000),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETINFO", "LIB-NAME", "redis-py"),
    ("HSET", "h", "a", 1, "b", 2.5),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_same_bytes_as_redis_py(args: tuple) -> None:
    assert b"".join(HiredisPackedConnection().pack_command(*args)) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize("bad", [None, True, object()])
def test_what_redis_py_refuses_is_refused_the_same_way(bad: object) -> None:
    with pytest.raises(DataError):
        HiredisPackedConnection().pack_command("SET", "k", bad)
