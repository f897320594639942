"""The Redis layout, in one place. Everything that names a Redis key goes through here.

Per customer (all keys share the hash tag ``{cid}`` so one customer lives in one Redis Cluster slot and
one Lua script can update them atomically):

=============================  ======  ==========================================================
key                            type    content
=============================  ======  ==========================================================
``p:{cid}``                    hash    counters ``c:<event>``, ``first_seen``, ``last_seen``,
                                       session ``sess_id/sess_start/sess_last/sess_pages``,
                                       ``purchases``, ``monetary``, ``consent_*``, decay landmarks
                                       ``L:<feature>``, applied offsets ``off:<topic>:<partition>``
``p:{cid}:dedup``              zset    last N event id tokens (score = event time): de-duplication
``p:{cid}:cart``               hash    item_id -> quantity
``p:{cid}:win``                hash    ring buffers ``<feature>:<window>:<slot>`` = ``bucket:count``
``p:{cid}:aff:<feature>``      zset    forward-decayed affinity: score = sum w * 2^((t - L)/half_life)
``p:{cid}:recent:<feature>``   list    last N distinct values, most recent first
``p:{cid}:aliases``            set     anonymous ids merged into this customer (for erasure)
``id:{anon}``                  string  anonymous id -> customer id (identity map)
``pop:{global}``               hash    landmarks and applied offsets of the popularity owner
``pop:{global}:aff:<feature>`` zset    forward-decayed global popularity per affinity feature
``model:{<placement>}``        hash    ``version``, ``blob`` (signed snapshot)
``stats:{worker}``             hash    worker counters (events received/applied, dead letters)
=============================  ======  ==========================================================

Every per-customer key gets the profile TTL on each write, so idle profiles expire; every list and
zset is trimmed to a declared size, so nothing grows without bound.
"""

from __future__ import annotations

import hashlib

from engine.config import EngineConfig

GLOBAL_OWNER = "{global}"


def profile_key(customer_id: str) -> str:
    return f"p:{{{customer_id}}}"


def identity_key(anonymous_id: str) -> str:
    return f"id:{{{anonymous_id}}}"


def aliases_key(customer_id: str) -> str:
    return f"p:{{{customer_id}}}:aliases"


def popularity_hash() -> str:
    return f"pop:{GLOBAL_OWNER}"


def model_key(placement: str) -> str:
    return f"model:{{{placement}}}"


def worker_stats_key() -> str:
    return "stats:{worker}"


def dedup_token(event_id: str) -> str:
    """What the dedup zset stores for an event id: 12 hex chars (48 bits) instead of a 32-36 char id,
    so a customer's last 64 ids fit Redis's compact listpack encoding (<= 128 entries, small members).
    A false duplicate needs two of one customer's last 64 ids to collide: about 2e-11."""
    return hashlib.blake2b(event_id.encode(), digest_size=6).hexdigest()


def offset_field(topic: str, partition: int) -> str:
    return f"off:{topic}:{partition}"


class OwnerKeys:
    """The ordered key list of one owner as passed to the Lua script (``KEYS``), with the 1-based
    index of each key, which is how operations address them."""

    __slots__ = ("keys", "dedup", "cart", "win", "aff", "recent")

    def __init__(self, base: str, config: EngineConfig, *, per_customer: bool = True) -> None:
        keys = [base]
        self.dedup = self.cart = self.win = 0
        if per_customer:
            keys += [f"{base}:dedup", f"{base}:cart", f"{base}:win"]
            self.dedup, self.cart, self.win = 2, 3, 4
        self.aff: dict[str, int] = {}
        for f in config.affinities:
            keys.append(f"{base}:aff:{f.name}")
            self.aff[f.name] = len(keys)
        self.recent: dict[str, int] = {}
        if per_customer:
            for r in config.recents:
                keys.append(f"{base}:recent:{r.name}")
                self.recent[r.name] = len(keys)
        self.keys = keys

    def key(self, index: int) -> str:
        return self.keys[index - 1]


def customer_keys(customer_id: str, config: EngineConfig) -> OwnerKeys:
    return OwnerKeys(profile_key(customer_id), config)


def popularity_keys(config: EngineConfig) -> OwnerKeys:
    return OwnerKeys(popularity_hash(), config, per_customer=False)
