"""Reading and writing profiles in Redis: the only module that issues profile commands.

Writes go through ``lua/apply_ops.lua`` (atomic and idempotent per owner); a profile is one hash, so
reading it is one ``HGETALL``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine.config import EngineConfig
from engine.faults import is_infrastructure
from engine.features import FeatureExtractor, RawProfile
from engine.layout import (
    MAX_ALIASES,
    OwnerKeys,
    aliases_key,
    customer_keys,
    dedup_token,
    identity_key,
    legacy_keys,
    offset_field,
    popularity_keys,
    profile_key,
    worker_stats_key,
)
from engine.redis_connection import execute_streamed

APPLY_OPS_LUA = resources.files("engine").joinpath("lua/apply_ops.lua").read_text()


def encode_events(events: Sequence[list[Any]]) -> bytes:
    """The events of one owner batch as the script takes them (its ARGV[4]): ONE flat JSON array, per event
    ``offset, token, is_consent, number of operations`` then each operation's code and arguments (the script
    knows every code's arity). Flat because decoding nested arrays in Redis (``cjson.decode``) costs a Lua
    table per operation; the event's timestamp is not sent (every operation carries the times it needs)."""
    out: list[Any] = []
    for offset, token, _ts, ops, is_consent in events:
        out += (offset, token, is_consent, len(ops))
        for op in ops:
            out += op
    return orjson.dumps(out)


@dataclass(frozen=True, slots=True)
class Erasure:
    keys_deleted: int
    #: the customer id and every anonymous id merged into it
    visitors: list[str]


@dataclass(slots=True)
class OwnerBatch:
    """Events of one owner from one partition, in offset order, compiled to operations."""

    owner_keys: OwnerKeys
    topic: str
    partition: int
    dedup: bool
    # [offset, event_id, ts, ops, is_consent]
    events: list[list[Any]]


class ProfileStore:
    """Applies compiled operations and reads raw profiles."""

    def __init__(self, redis: aioredis.Redis, config: EngineConfig) -> None:
        self.redis = redis
        self.config = config
        self.extractor = FeatureExtractor(config)
        self._sha: str | None = None
        self._ttl = int(config.profile.ttl_days * 86400)

    # -- writes -------------------------------------------------------------------------------
    async def _load_script(self) -> str:
        self._sha = await self.redis.script_load(APPLY_OPS_LUA)
        return self._sha

    async def apply(self, batches: Sequence[OwnerBatch], on_sent: Callable[[], None] | None = None, *,
                    raise_on_error: bool = True) -> list[Any]:
        """Apply owner batches in one pipelined round trip; returns events applied per batch
        (fewer than sent when some were replays or duplicates).

        The calls are encoded and sent in chunks (``execute_streamed``): Redis runs the first ones while the
        rest are encoded. Every call is idempotent, so after an error the whole list may be sent again.
        ``raise_on_error=False``: a batch whose script failed, or that could not be encoded, has its error in
        its place (a failed script wrote nothing: its writes come last, and the first write of a script is
        where Redis refuses for memory); infrastructure errors (``engine.faults``) are raised either way."""
        if not batches:
            return []
        sha = self._sha or await self._load_script()
        for attempt in (0, 1):
            unsent: dict[int, Exception] = {}
            replies = await execute_streamed(self.redis, self._evalsha_chunks(sha, batches, unsent), on_sent)
            if unsent:  # put the batches that could not be encoded back in their places
                it = iter(replies)
                replies = [unsent[i] if i in unsent else next(it) for i in range(len(batches))]
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                return [int(r) for r in replies]
            if not attempt and any(isinstance(e, NoScriptError) for e in errors):
                sha = await self._load_script()  # Redis restarted or flushed its script cache
                continue
            infra = next((e for e in errors if is_infrastructure(e)), None)
            if infra is not None or raise_on_error:
                raise infra or errors[0]
            return [r if isinstance(r, Exception) else int(r) for r in replies]
        raise AssertionError("unreachable")

    def _evalsha_chunks(self, sha: str, batches: Sequence[OwnerBatch], unsent: dict[int, Exception],
                        first: int = 32, size: int = 256) -> Iterator[list[tuple[Any, ...]]]:
        """EVALSHA commands in chunks: a small first one, so that Redis starts early, then bigger ones. A batch
        that cannot be encoded (a number JSON cannot carry) is left out, its error put in ``unsent``."""
        ttl, dedup_window = self._ttl, self.config.profile.dedup_window
        start, n = 0, first
        while start < len(batches):
            chunk = []
            for i in range(start, min(start + n, len(batches))):
                b = batches[i]
                keys = b.owner_keys.keys
                per_customer = b.dedup
                try:
                    encoded = encode_events(b.events)
                except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
                    unsent[i] = exc
                    continue
                chunk.append(("EVALSHA", sha, len(keys), *keys, offset_field(b.topic, b.partition),
                              ttl if per_customer else 0, dedup_window if per_customer else 0, encoded))
            yield chunk
            start, n = start + n, size

    def customer_batch(self, customer_id: str, topic: str, partition: int) -> OwnerBatch:
        return OwnerBatch(customer_keys(customer_id, self.config), topic, partition, True, [])

    def popularity_batch(self, topic: str, partition: int) -> OwnerBatch:
        return OwnerBatch(popularity_keys(self.config), topic, partition, False, [])

    # -- identity -----------------------------------------------------------------------------
    async def resolve(self, anonymous_ids: Iterable[str]) -> dict[str, str]:
        """Map anonymous ids to customer ids (one round trip); unknown ids are left out."""
        ids = list(dict.fromkeys(anonymous_ids))
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for a in ids:
            pipe.get(identity_key(a))
        values = await pipe.execute()
        return {a: v for a, v in zip(ids, values, strict=True) if v is not None}

    async def merge_identity(
        self, anonymous_id: str, customer_id: str, topic: str, partition: int, offset: int,
        event_id: str, ts: float,
    ) -> None:
        """Fold the anonymous profile into the customer's, then point the anonymous id at it.

        Idempotent: the merge is guarded by the identify event's offset on the customer's hash, and
        a replay after the anonymous keys were deleted finds nothing left to merge.
        """
        if anonymous_id != customer_id:
            raw = await self.read_raw(anonymous_id)
            merge = self.extractor.merge_ops(raw, ts) if raw.exists else []
        else:
            merge = []
        batch = self.customer_batch(customer_id, topic, partition)
        ops = merge + self.extractor.ops_for("identify", ts, {}, {})
        batch.events.append([offset, dedup_token(event_id), ts, ops, 0])
        await self.apply([batch])
        # bounded: past MAX_ALIASES anonymous ids the profile is still merged, the id no longer linked
        linked = await self.redis.scard(aliases_key(customer_id)) < MAX_ALIASES
        pipe = self.redis.pipeline(transaction=False)
        if linked:
            pipe.set(identity_key(anonymous_id), customer_id, ex=self._ttl)
            pipe.sadd(aliases_key(customer_id), anonymous_id)
            pipe.expire(aliases_key(customer_id), self._ttl)
        if anonymous_id != customer_id:
            pipe.delete(*customer_keys(anonymous_id, self.config).keys, *legacy_keys(anonymous_id, self.config))
        await pipe.execute()

    async def erase(self, customer_id: str) -> Erasure:
        """Right to be forgotten: delete the profile, its aliases and their identity entries. Returns what
        was deleted and every id the customer was known by (the learner holds histories under them)."""
        aliases = sorted(cast(set[str], await self.redis.smembers(aliases_key(customer_id))))  # decoding client
        keys = [*customer_keys(customer_id, self.config).keys, *legacy_keys(customer_id, self.config),
                aliases_key(customer_id)]
        for a in aliases:
            keys.append(identity_key(a))
            keys.extend(customer_keys(a, self.config).keys)
            keys.extend(legacy_keys(a, self.config))
        return Erasure(int(await self.redis.delete(*keys)), [customer_id, *aliases])

    async def incr_worker_counters(self, counters: dict[str, int]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for name, n in counters.items():
            if n:
                pipe.hincrby(worker_stats_key(), name, n)
        await pipe.execute()

    async def add_worker_seconds(self, seconds: dict[str, float]) -> None:
        """Add to the workers' time counters (``<name>_seconds``, shown by /metrics like the counts)."""
        pipe = self.redis.pipeline(transaction=False)
        for name, s in seconds.items():
            if s > 0:
                pipe.hincrbyfloat(worker_stats_key(), f"{name}_seconds", round(s, 6))
        await pipe.execute()

    async def read_worker_counters(self) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(worker_stats_key()))  # a decoding client

    # -- reads --------------------------------------------------------------------------------
    def queue_read(self, pipe: Any, customer_id: str) -> None:
        """Queue the command that reads one raw profile on a pipeline (see ``parse_read``)."""
        pipe.hgetall(profile_key(customer_id))

    @property
    def read_width(self) -> int:
        """How many pipeline results ``queue_read`` produces."""
        return 1

    def parse_read(self, results: Sequence[Any]) -> RawProfile:
        return RawProfile(hash=results[0])

    async def read_raw(self, customer_id: str) -> RawProfile:
        return RawProfile(hash=cast(dict[str, str], await self.redis.hgetall(profile_key(customer_id))))

    async def read_popularity(self) -> tuple[dict[str, str], dict[str, list[tuple[str, float]]]]:
        """The popularity owner's landmarks and top values per affinity feature."""
        k = popularity_keys(self.config)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(k.keys[0])
        for f in self.config.affinities:
            pipe.zrevrange(k.key(k.aff[f.name]), 0, 999, withscores=True)
        res = await pipe.execute()
        return res[0], {f.name: res[i + 1] for i, f in enumerate(self.config.affinities)}
