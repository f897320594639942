"""Reading and writing profiles in Redis: the only module that issues profile commands.

Writes go through ``lua/apply_ops.lua`` (atomic and idempotent per owner); a profile is one hash, so
reading it is one ``HGETALL``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine.config import EngineConfig
from engine.faults import is_infrastructure
from engine.features import FeatureExtractor, RawProfile, merge_has_consent
from engine.layout import (
    HOT_KEY_SHARDS,
    MAX_ALIASES,
    PERSONALISATION_FIELD,
    OwnerKeys,
    aliases_key,
    anonymous_subject,
    customer_subject,
    dedup_token,
    erasure_marker_key,
    identity_key,
    offset_field,
    popularity_keys,
    subject_keys,
    subject_profile_key,
    sum_counters,
    worker_stats_key,
)
from engine.redis_connection import execute_streamed, is_cluster
from engine.segment_view import view_fields

APPLY_OPS_LUA = resources.files("engine").joinpath("lua/apply_ops.lua").read_text()


def encode_events(events: Sequence[list[Any]]) -> bytes:
    """The events of one owner batch as the script takes them (its ARGV[4]): ONE flat JSON array, per event
    ``offset, token, is_consent, time (integer ms), number of operations`` then each operation's code and
    arguments (the script knows every code's arity). Flat because decoding nested arrays in Redis
    (``cjson.decode``) costs a Lua table per operation; the time is what an erasure marker is compared with."""
    out: list[Any] = []
    for offset, token, ts, ops, is_consent in events:
        out += (offset, token, is_consent, round(ts * 1000), len(ops))
        for op in ops:
            out += op
    return orjson.dumps(out)


#: What the applier returns for an owner whose erasure marker is set (``lua/apply_ops.lua``).
ERASED = -1


#: Joins the field names of the applier's view arguments (no field name holds it: ``engine.layout``)
VIEW_SEP = "\x1f"


def _with_view(i: int, reply: Any, views: dict[int, dict[str, str] | None]) -> Any:
    """The applied count of a reply that carries its hash's view (``apply_ops.lua``), the view put in ``views``."""
    if not isinstance(reply, list):
        return reply  # an error, or a batch that asked for no view (popularity)
    views[i] = dict(zip(reply[2::2], reply[3::2], strict=True)) if reply[1] else None
    return reply[0]


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
        #: the applier's flags for a person's hash: its erasure marker, and the consent mode
        self._person_flags = "eo" if config.privacy.consent_mode == "opt_in" else "e"
        fields, prefixes = view_fields(config)
        #: the applier's view arguments (apply_ops.lua ARGV[6], ARGV[7])
        self._view_args = (VIEW_SEP.join(fields), VIEW_SEP.join(prefixes))
        #: told the worker counters and seconds once written (the worker's own metrics, streams/metrics.py)
        self.on_counters: Callable[[dict[str, int]], None] | None = None
        self.on_seconds: Callable[[dict[str, float]], None] | None = None
        #: hot keys' shards (``engine.layout.HOT_KEY_SHARDS``): on a single Redis shard 0 alone
        self.shards = HOT_KEY_SHARDS if is_cluster(redis) else 1

    # -- writes -------------------------------------------------------------------------------
    async def _load_script(self) -> str:
        self._sha = await self.redis.script_load(APPLY_OPS_LUA)
        return self._sha

    async def apply(self, batches: Sequence[OwnerBatch], on_sent: Callable[[], None] | None = None, *,
                    raise_on_error: bool = True, views: dict[int, dict[str, str] | None] | None = None) -> list[Any]:
        """Apply owner batches in one pipelined round trip; returns events applied per batch
        (fewer than sent when some were replays or duplicates).

        The calls are encoded and sent in chunks (``execute_streamed``): Redis runs the first ones while the
        rest are encoded. Every call is idempotent, so after an error the whole list may be sent again.
        ``raise_on_error=False``: a batch whose script failed, or that could not be encoded, has its error in
        its place (a failed script wrote nothing: its writes come last, and the first write of a script is
        where Redis refuses for memory); infrastructure errors (``engine.faults``) are raised either way.

        ``views``: filled with each person batch's hash as written, narrowed to what the segments read
        (``engine.segment_view.view_fields``; None: no hash left), by batch index; for the segment tracker."""
        if not batches:
            return []
        sha = self._sha or await self._load_script()
        want = self._view_args if views is not None else None
        for attempt in (0, 1):
            unsent: dict[int, Exception] = {}
            replies = await execute_streamed(self.redis, self._evalsha_chunks(sha, batches, unsent, want), on_sent)
            if unsent:  # put the batches that could not be encoded back in their places
                it = iter(replies)
                replies = [unsent[i] if i in unsent else next(it) for i in range(len(batches))]
            if views is not None:
                replies = [_with_view(i, r, views) for i, r in enumerate(replies)]
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                return [max(int(r), 0) for r in replies]
            if not attempt and any(isinstance(e, NoScriptError) for e in errors):
                sha = await self._load_script()  # Redis restarted or flushed its script cache
                continue
            infra = next((e for e in errors if is_infrastructure(e)), None)
            if infra is not None or raise_on_error:
                raise infra or errors[0]
            return [r if isinstance(r, Exception) else max(int(r), 0) for r in replies]
        raise AssertionError("unreachable")

    def _evalsha_chunks(self, sha: str, batches: Sequence[OwnerBatch], unsent: dict[int, Exception],
                        want: tuple[str, str] | None = None, first: int = 32,
                        size: int = 256) -> Iterator[list[tuple[Any, ...]]]:
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
                person = b.owner_keys.marker
                chunk.append(("EVALSHA", sha, len(keys), *keys, offset_field(b.topic, b.partition),
                              ttl if per_customer else 0, dedup_window if per_customer else 0, encoded,
                              self._person_flags if person else "", *(want if want and person else ())))
            yield chunk
            start, n = start + n, size

    def subject_batch(self, subject: str, topic: str, partition: int) -> OwnerBatch:
        """The events of one person (``c:<id>`` or ``a:<id>``, ``engine.layout``) from one partition."""
        return OwnerBatch(subject_keys(subject, self.config), topic, partition, True, [])

    def customer_batch(self, customer_id: str, topic: str, partition: int) -> OwnerBatch:
        return self.subject_batch(customer_subject(customer_id), topic, partition)

    def popularity_batch(self, topic: str, partition: int) -> OwnerBatch:
        return OwnerBatch(popularity_keys(self.config, partition % self.shards), topic, partition, False, [])

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
        event_id: str, ts: float, properties: Mapping[str, Any] | None = None,
    ) -> bool:
        """Fold the anonymous profile into the customer's, then point the anonymous id at it. Call it only for
        a trusted identify (``streams/identity.py``): the anonymous side is always the anonymous key space
        (``p:{a:<id>}``), so no id can make a customer's profile the one merged away.

        Idempotent: the merge is guarded by the identify event's offset on the customer's hash, and
        a replay after the anonymous keys were deleted finds nothing left to merge. Returns False when either
        side is erased (``engine/erasure.py``): nothing is merged or linked then.
        """
        anon = anonymous_subject(anonymous_id)
        raw = await self.read_subject(anon)
        merge = self.extractor.merge_ops(raw, ts) if raw.exists else []
        batch = self.customer_batch(customer_id, topic, partition)
        ops = merge + self.extractor.ops_for("identify", ts, properties or {}, {})  # traits: the time zone
        batch.events.append([offset, dedup_token(event_id), ts, ops, 1 if merge_has_consent(merge) else 0])
        sha = self._sha or await self._load_script()
        keys = batch.owner_keys.keys
        try:
            reply = await self.redis.evalsha(sha, len(keys), *keys, offset_field(topic, partition), self._ttl,
                                             self.config.profile.dedup_window, encode_events(batch.events),
                                             self._person_flags)
        except NoScriptError:
            await self._load_script()
            return await self.merge_identity(anonymous_id, customer_id, topic, partition, offset, event_id, ts,
                                             properties)
        if int(reply) == ERASED:
            return False
        customer = customer_subject(customer_id)
        # bounded: past MAX_ALIASES anonymous ids the profile is still merged, the id no longer linked
        linked = await self.redis.scard(aliases_key(customer_id)) < MAX_ALIASES
        pipe = self.redis.pipeline(transaction=False)
        if linked:
            pipe.set(identity_key(anonymous_id), customer_id, ex=self._ttl)
            pipe.sadd(aliases_key(customer_id), anonymous_id)
            pipe.expire(aliases_key(customer_id), self._ttl)
        pipe.delete(subject_profile_key(anon))
        pipe.exists(erasure_marker_key(customer))  # one key per call: the two are in different cluster slots
        pipe.exists(erasure_marker_key(anon))
        *_, erased_customer, erased_anon = await pipe.execute()
        erased = erased_customer or erased_anon
        if erased and linked:
            # an erasure began meanwhile: it set its markers before it read the aliases, so either it saw
            # these links (and deletes them) or we see its marker here and take them back
            pipe = self.redis.pipeline(transaction=False)
            pipe.srem(aliases_key(customer_id), anonymous_id)
            pipe.delete(identity_key(anonymous_id))
            await pipe.execute()
            return False
        return not erased

    def _stats_key(self) -> str:
        return worker_stats_key(random.randrange(self.shards)) if self.shards > 1 else worker_stats_key()

    async def incr_worker_counters(self, counters: dict[str, int]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        key = self._stats_key()
        for name, n in counters.items():
            if n:
                pipe.hincrby(key, name, n)
        await pipe.execute()
        if self.on_counters is not None:
            self.on_counters(counters)

    async def add_worker_seconds(self, seconds: dict[str, float]) -> None:
        """Add to the workers' time counters (``<name>_seconds``, shown by /metrics like the counts)."""
        pipe = self.redis.pipeline(transaction=False)
        key = self._stats_key()
        for name, s in seconds.items():
            if s > 0:
                pipe.hincrbyfloat(key, f"{name}_seconds", round(s, 6))
        await pipe.execute()
        if self.on_seconds is not None:
            self.on_seconds(seconds)

    async def read_worker_counters(self) -> dict[str, str]:
        """The workers' counters, every shard summed (integers stay integers)."""
        if self.shards == 1:
            return cast(dict[str, str], await self.redis.hgetall(worker_stats_key()))  # a decoding client
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.hgetall(worker_stats_key(shard))
        return sum_counters(cast(list[dict[str, str]], await pipe.execute()))

    # -- reads --------------------------------------------------------------------------------
    def queue_read(self, pipe: Any, customer_id: str) -> None:
        """Queue the command that reads one customer's raw profile on a pipeline (see ``parse_read``)."""
        pipe.hgetall(subject_profile_key(customer_subject(customer_id)))

    @property
    def read_width(self) -> int:
        """How many pipeline results ``queue_read`` produces."""
        return 1

    def parse_read(self, results: Sequence[Any]) -> RawProfile:
        return RawProfile(hash=results[0])

    async def read_raw(self, customer_id: str) -> RawProfile:
        """A customer's raw profile."""
        return await self.read_subject(customer_subject(customer_id))

    async def read_anonymous(self, anonymous_id: str) -> RawProfile:
        return await self.read_subject(anonymous_subject(anonymous_id))

    async def read_subject(self, subject: str) -> RawProfile:
        return RawProfile(hash=cast(dict[str, str], await self.redis.hgetall(subject_profile_key(subject))))

    async def read_popularity(self) -> list[tuple[dict[str, str], dict[str, list[tuple[str, float]]]]]:
        """Per popularity shard (one on a single Redis), its landmarks and top values per affinity feature."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(self.shards):
            k = popularity_keys(self.config, shard)
            pipe.hgetall(k.keys[0])
            for f in self.config.affinities:
                pipe.zrevrange(k.key(k.aff[f.name]), 0, 999, withscores=True)
        res = await pipe.execute()
        width = 1 + len(self.config.affinities)
        return [(res[i], {f.name: res[i + j + 1] for j, f in enumerate(self.config.affinities)})
                for i in range(0, len(res), width)]

    async def personalisation_flags(self, visitors: Sequence[tuple[str | None, str | None]]) -> list[str | None]:
        """The stored personalisation consent (``'1'``, ``'0'`` or None: no choice) of each (customer id,
        anonymous id), an anonymous id read through the identity map: two round trips, one read per person."""
        identity = await self.resolve(a for c, a in visitors if c is None and a)
        owners = [customer_subject(c) if c else customer_subject(identity[a]) if a in identity
                  else anonymous_subject(a or "") for c, a in visitors]
        distinct = list(dict.fromkeys(owners))
        pipe = self.redis.pipeline(transaction=False)
        for s in distinct:
            pipe.hget(subject_profile_key(s), PERSONALISATION_FIELD)
        flags = dict(zip(distinct, cast(list[str | None], await pipe.execute()), strict=True))
        return [flags[s] for s in owners]
