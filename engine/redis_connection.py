"""The one place that makes Redis clients (:func:`make_redis`: a single Redis or, with ``REDIS_CLUSTER``, a Redis
Cluster), and a redis-py asyncio connection that is cheaper per command, for pipelines of many small commands.

* Packing: redis-py's asyncio ``Connection.pack_command`` encodes every argument in Python, once per customer
  per batch, i.e. about once per event; ``hiredis.pack_command`` (hiredis is already installed for reply
  parsing) does it in C with the same bytes (floats as ``repr``, ``str`` as UTF-8; the figures:
  ``docs/performance-history.md``). Arguments hiredis does not take (``None``, ``bool``,
  ...) fall back to redis-py, which raises its usual ``DataError``.
* Reading: redis-py wraps every reply of a pipeline in its own ``asyncio.timeout`` (socket_timeout, 5 s by
  default), a timer handle per reply. A reply that is already complete in the hiredis reader's buffer
  (after the first socket read of a pipeline, most are) is returned at once, checked the way redis-py
  checks it; only a reply that needs the socket goes through redis-py's read, with its timeout.

>>> conn = HiredisPackedConnection()
>>> conn.pack_command("CONFIG GET", "maxmemory")
[b'*3\\r\\n$6\\r\\nCONFIG\\r\\n$3\\r\\nGET\\r\\n$9\\r\\nmaxmemory\\r\\n']
>>> b"".join(conn.pack_command("SET", "k", 1.5)) == b"".join(Connection().pack_command("SET", "k", 1.5))
True
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

_PUSH = getattr(hiredis, "PushNotification", None)
try:  # redis-py's own sentinel and parser class (redis is pinned; without them the fast path is off)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover
    NOT_ENOUGH_DATA, _AsyncHiredisParser = None, None  # type: ignore[assignment,misc]  # fast path off


class HiredisPackedConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        # like redis-py: a command name given with its subcommand ("CONFIG GET") is sent as two arguments
        if isinstance(first, str):
            if " " in first:
                args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        if self.encoder.encoding != "utf-8":  # hiredis encodes str as UTF-8
            return super().pack_command(*args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # raises redis-py's DataError for what cannot be sent

    async def read_response(self, disable_decoding: bool = False, timeout: float | None = None, *,
                            disconnect_on_error: bool = True, push_request: bool | None = False) -> Any:
        parser = self._parser
        if (_AsyncHiredisParser is not None and type(parser) is _AsyncHiredisParser and not push_request
                and self.is_connected and parser._connected):
            reader: Any = parser._reader  # redis-py types it None until connected
            response = reader.gets(False) if disable_decoding else reader.gets()
            if response is not NOT_ENOUGH_DATA:
                if _PUSH is not None and isinstance(response, _PUSH):  # RESP3 push: redis-py's handling, then on
                    await parser.handle_push_response(response)  # type: ignore[no-untyped-call]  # redis-py
                    return await self.read_response(disable_decoding, timeout,
                                                    disconnect_on_error=disconnect_on_error)
                if isinstance(response, ConnectionError) or (
                        isinstance(response, list) and response and isinstance(response[0], ConnectionError)):
                    if disconnect_on_error:
                        await self.disconnect(nowait=True)
                    raise response if isinstance(response, ConnectionError) else response[0]
                if self.health_check_interval:
                    self.next_health_check = asyncio.get_running_loop().time() + self.health_check_interval
                if isinstance(response, ResponseError):
                    raise response from None
                return response
        return await super().read_response(disable_decoding, timeout, disconnect_on_error=disconnect_on_error,
                                           push_request=push_request)


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], str]:
    """The seed nodes of a cluster URL (``redis://[user:password@]h1:p1,h2:p2[/0]``), and the URL of the first
    (credentials, TLS and options apply to every node). ValueError if it is not one.

    >>> cluster_seeds("redis://u:pw@10.0.0.1:7000,10.0.0.2:7001")
    ([('10.0.0.1', 7000), ('10.0.0.2', 7001)], 'redis://u:pw@10.0.0.1:7000')
    >>> cluster_seeds("redis://h:7000/1")
    Traceback (most recent call last):
    ...
    ValueError: a Redis Cluster has only database 0: '/1'
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    seeds = []
    for server in hosts.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep:
            host, port = server.strip(), "6379"
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"not host:port: {server!r}")
        seeds.append((host, int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0: {parts.path!r}")
    first = urlunsplit((parts.scheme, f"{userinfo}{at}{seeds[0][0]}:{seeds[0][1]}", parts.path, parts.query, ""))
    return seeds, first


def make_redis(url: str, *, cluster: bool = False, pool_class: type[aioredis.ConnectionPool] | None = None,
               connection_class: type[Connection] | None = None, **kwargs: Any) -> aioredis.Redis:
    """A client of ``url``: every process makes its Redis client here (``Settings.redis_url``, ``redis_cluster``).

    ``cluster``: a ``redis.asyncio.cluster.RedisCluster`` seeded by every node of the URL; it has the same
    commands (each sent to the master of its key's slot), pipelines grouped per node, and
    :func:`execute_streamed` streams per node. ``pool_class`` (single Redis only: a cluster keeps a pool per
    node) and ``connection_class`` as redis-py takes them; a ``rediss://`` URL keeps redis-py's TLS connection.
    """
    if not cluster:
        if connection_class is not None:
            kwargs["connection_class"] = connection_class
        if pool_class is not None:
            return aioredis.Redis.from_pool(pool_class.from_url(url, **kwargs))
        return aioredis.from_url(url, **kwargs)
    seeds, first = cluster_seeds(url)
    client = RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in seeds[1:]], **kwargs)
    if connection_class is not None and urlsplit(first).scheme == "redis":
        # RedisCluster takes no connection class: its nodes (and those it discovers, made from these same
        # kwargs by its NodesManager) are given ours
        client.connection_kwargs["connection_class"] = connection_class
        for node in client.startup_nodes:
            node.connection_class = connection_class
    return cast(aioredis.Redis, client)


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def per_slot(keys: Iterable[str]) -> list[list[str]]:
    """Keys grouped by Redis Cluster slot, first-seen order (a multi-key command must stay in one slot).

    >>> per_slot(["p:{c:1}", "a", "p:{c:1}:aliases"])
    [['p:{c:1}', 'p:{c:1}:aliases'], ['a']]
    """
    groups: dict[int, list[str]] = {}
    for k in keys:
        groups.setdefault(key_slot(k.encode()), []).append(k)
    return list(groups.values())


async def delete_per_slot(redis: aioredis.Redis, keys: Iterable[str]) -> int:
    """DEL of keys in any slots: one DEL per slot, one pipeline; returns how many existed."""
    groups = per_slot(keys)
    if not groups:
        return 0
    pipe = redis.pipeline(transaction=False)
    for group in groups:
        pipe.delete(*group)
    return sum(await pipe.execute())


def queue_script(pipe: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue a registered script's call on a pipeline (a cluster pipeline refuses ``evalsha`` by name, and
    redis-py's ``Script`` with ``client=pipe`` uses it): run it with :func:`execute_with_scripts`."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


async def execute_with_scripts(redis: aioredis.Redis, build: Callable[[Any], None], scripts: Sequence[Any]
                               ) -> list[Any]:
    """Build a pipeline (``build(pipe)``, scripts queued with :func:`queue_script`) and run it. On NOSCRIPT (Redis
    restarted or flushed its scripts; a cluster replica promoted: scripts are not replicated) the scripts are
    loaded (on every master) and the pipeline run again, so its commands must be safe to repeat."""
    for attempt in (0, 1):
        pipe = redis.pipeline(transaction=False)
        build(pipe)
        try:
            return await pipe.execute()
        except NoScriptError:
            if attempt:
                raise
        for script in scripts:
            script.sha = await redis.script_load(script.script)
    raise AssertionError("unreachable")


#: Replies that say the cluster's topology changed under a command (it did not run): refresh, then retry.
_TOPOLOGY_ERRORS = (MovedError, AskError, ClusterDownError, TryAgainError)


def _first_key(command: Sequence[Any]) -> Any:
    name = command[0].upper() if isinstance(command[0], str) else command[0].decode().upper()
    if name in ("EVALSHA", "EVAL", "FCALL"):
        if int(command[2]) < 1:
            raise ValueError(f"{name} with no key cannot be routed in a cluster")
        return command[3]
    return command[1]


async def _refresh(cluster: RedisCluster) -> None:
    with contextlib.suppress(Exception):  # the next call will fail (and refresh) again while it is down
        await cluster.nodes_manager.initialize()


async def _execute_streamed_cluster(cluster: RedisCluster, chunks: Iterable[Sequence[Sequence[Any]]],
                                    on_sent: Callable[[], None] | None) -> list[Any]:
    """``execute_streamed`` on a cluster: every chunk is split by the master of each command's first key and
    each part sent at once on that node's connection (one per node); replies are read from every node
    together and put back in the order given. Per node, Redis runs the commands in the order given (all of
    one owner's go to one slot). A topology change (a master failed over: MOVED, CLUSTERDOWN, a connection
    lost) refreshes the slot map before the error is returned or raised: the caller retries (idempotent)."""
    await cluster.initialize()
    nodes = cluster.nodes_manager
    conns: dict[str, tuple[ClusterNode, Connection, list[int]]] = {}
    total = 0
    try:
        for chunk in chunks:
            parts: dict[str, tuple[ClusterNode, list[Sequence[Any]]]] = {}
            for command in chunk:
                node = nodes.get_node_from_slot(cluster.keyslot(_first_key(command)))
                part = parts.get(node.name)
                if part is None:
                    part = parts[node.name] = (node, [])
                part[1].append(command)
                entry = conns.get(node.name)
                if entry is None:
                    entry = conns[node.name] = (node, node.acquire_connection(), [])
                entry[2].append(total)
                total += 1
            for name, (_, commands) in parts.items():
                conn = conns[name][1]
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        if on_sent is not None:
            on_sent()
        replies: list[Any] = [None] * total

        async def read(conn: Connection, positions: list[int]) -> None:
            for i in positions:
                try:
                    replies[i] = await conn.read_response()
                except ResponseError as exc:
                    replies[i] = exc

        results = await asyncio.gather(*(read(conn, positions) for _, conn, positions in conns.values()),
                                       return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
    except BaseException as exc:
        for _, conn, _ in conns.values():
            await conn.disconnect(nowait=True)
        if isinstance(exc, ConnectionError | OSError | asyncio.TimeoutError):
            await _refresh(cluster)
        raise
    finally:
        for node, conn, _ in conns.values():
            node.release(conn)
    if any(isinstance(r, _TOPOLOGY_ERRORS) for r in replies):
        await _refresh(cluster)
    return replies


async def execute_streamed(redis: aioredis.Redis, chunks: Iterable[Sequence[Sequence[Any]]],
                           on_sent: Callable[[], None] | None = None) -> list[Any]:
    """Send pipelined commands chunk by chunk, as ``chunks`` yields them, then read every reply.

    A redis-py pipeline packs every command before it sends the first, so Redis idles while the client
    builds a long pipeline, and the client idles while Redis runs it. Here each chunk goes out as soon as it
    is built: Redis runs the first chunks while the caller's generator builds the next ones (the worker's
    batch of ~2,000 Lua calls, ``engine/profile_store.py``). One connection, so Redis runs the commands in
    the order given.

    Replies come back in order; an error reply is returned in its place as the ``ResponseError`` (like
    ``pipeline.execute(raise_on_error=False)``). If the connection fails, or the generator raises, the
    connection is closed (it may hold unread replies) and the error is raised: the chunks already sent may
    have run, so callers send only commands that are safe to send again. On a Redis Cluster: one connection
    per master (``_execute_streamed_cluster``).
    """
    if isinstance(redis, RedisCluster):
        return await _execute_streamed_cluster(redis, chunks, on_sent)
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    try:
        sent = 0
        for chunk in chunks:
            if chunk:
                await conn.send_packed_command(conn.pack_commands(chunk), check_health=sent == 0)
                sent += len(chunk)
        if on_sent is not None:
            on_sent()
        replies: list[Any] = []
        for _ in range(sent):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
