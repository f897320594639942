"""The Redis layout, in one place. Everything that names a Redis key or a profile field goes through here.

A person's profile is ONE hash, ``p:{<subject>}`` (the hash tag keeps it in one Redis Cluster slot). The subject
says which key space the id lives in: ``c:<customer id>`` for a customer (``p:{c:cust-1}``), ``a:<anonymous id>``
for a device or cookie (``p:{a:anon-7}``). The two never meet: an anonymous id that happens to equal a
customer's id names another hash, so an event or an identify "from" an anonymous id can never read, write or
merge a customer's profile (docs/security.md, "Identity").
One key means one ``EXPIRE`` per applied batch and one ``HGETALL`` to read a profile. In a typical profile
every field and value stays within Redis's default ``hash-max-listpack-value`` (64 bytes), so the hash keeps
the compact listpack encoding (``bench/memory.py`` measures a profile's bytes). A longer value (a very busy 24h
window, a value id over 62 characters) only costs memory: Redis converts the hash to a hashtable.

``<f>`` below is a feature's short code (``feature_codes``: 1-2 base-62 characters hashed from its name,
never from its position, so reordering the configuration never makes one feature read another's fields).

===========================  ==========================================================================
field                        content
===========================  ==========================================================================
``c<e>``                     count of events of type ``<e>`` (``COUNT_CODES``: ``cv`` page views, ``ck``
                             clicks...; another type is ``c:<type>``)
``fs`` / ``ls``              first / last seen, integer epoch milliseconds
``si ss sl sp``              session: id, start ms, last event ms, page views
``m``                        monetary value of purchases
``k<c>``                     consent flag ``1`` / ``0`` per purpose (``kp`` personalisation, ``ka``
                             analytics, ``kme kmp kms kmw`` marketing by email, push, sms, web;
                             ``km``: marketing of the previous layout, read only)
``kt``                       when the last consent choice was made (ms): the newer side wins on a merge
``L<f>``                     forward-decay landmark of an affinity feature, integer epoch seconds
``a<f>:<value>``             affinity score ``sum w * 2^((t - L)/half_life)``, 7 digits rounded down; at most
                             ``top_k`` values per feature (a new value beyond it evicts the lowest score);
                             ``L`` moves forward every 10 half-lives (scores rescaled) to keep them short
``r<f>:<i>``                 recent values, most recent first, distinct, at most ``size``: joined by
                             ``\x1f`` and cut into chunks ``i = 0, 1, ...`` of at most 64 bytes
``C:<item>``                 cart: item -> quantity (removed at 0; all cleared by a purchase; at most
                             ``MAX_CART_ITEMS``)
``w<f>:<window>``            time-window ring ``<newest bucket>:<n0>,<n1>,...``: counts of the newest bucket
                             first, then each older one (empty = 0, trailing zeros dropped); bucket =
                             ``ts // width`` (1h: 12 x 5 min, 24h: 24 x 1 h, 7d: 7 x 1 day); a bucket older
                             than the ring is dropped
``d:<i>`` / ``d:n``          event-id de-duplication: ring of the last ``dedup_window`` (64) tokens of
                             ``DEDUP_TOKEN_CHARS`` characters, 10 per chunk ``i``; ``d:n`` = next slot
``off:<topic>:<partition>``  highest applied Kafka offset: a replay at or below it is skipped
``a_h:<h>`` / ``a_d:<d>``     next-best action: decayed activity per UTC hour of day / weekday (0 = Monday),
                             the affinity operation's forward decay with landmarks ``L_h`` / ``L_d``
``tz``                       IANA time zone from identify ``traits.timezone``
``I:<ch>`` / ``E:<ch>``      impressions shown / rewards (click, feedback, purchase) earned on a channel
``X:<action>``               contact policy (``engine.exposure``): ``<unclicked>,<dismissed>,<t1>,...``, times
                             shown since the last click, the last dismissal and impression minutes (base 36);
                             at most ``max_tracked_actions`` records
``Y:<ch>`` / ``P:<item>``    impression minutes on a channel / the last purchase of an item (same format; at most
                             8 / ``max_tracked_purchases`` records)
``S``                        the segments last published for this profile, ``,``-joined (written by the
                             segment tracker, ``streams/segments.py``, never by the Lua applier)
===========================  ==========================================================================

Withdrawing consent deletes every field but ``k*``, ``off:*`` and ``d:*`` (so replays and duplicates of
older events stay ignored). Other keys:

=============================  ======  ==========================================================
key                            type    content
=============================  ======  ==========================================================
``p:{c:<cid>}:aliases``       set     anonymous ids merged into this customer (at most ``MAX_ALIASES``)
``id:{a:<anon>}``              string  anonymous id -> customer id (identity map; written only by a trusted
                                       identify, ``streams/identity.py``)
``p:{<subject>}:dec``          set     decision ids made for this person still waiting for rewards (erasure
                                       deletes their ``dec:`` hashes; TTL: the longest reward window + 1 day)
``erased:{<subject>}``         string  erasure marker (epoch s): while it lives (``ERASURE_RETENTION_DAYS``)
                                       the worker writes nothing for this person (replays, events in flight)
``erasing:{<subject>}``        set     the ids of an erasure in progress (a retry finishes it)
``pop:{global}``               hash    landmarks ``L:<feature>`` and applied offsets of the popularity owner (on
                                       a Redis Cluster ``HOT_KEY_SHARDS`` shards ``pop:{global#<s>}...``, by
                                       partition, summed on read; so are ``stats:`` and ``arms:``, at random)
``pop:{global}:aff:<feature>`` zset    forward-decayed global popularity per affinity feature (top 2000)
``pop:{global}:contact``       zset    the population's decayed activity hours and channel rates (next-best action)
``model:{<placement>}``        hash    ``version``, ``blob`` (signed snapshot), ``state`` (the learner's own)
``dec:{<slot>}:<id>``          hash    a decision waiting for its rewards (``DECISION_FIELDS``)
``due:{<slot>}``               zset    decision ids by the end of their reward window, 256 slots
``arms:{<placement>}``         hash    experiment counters ``<arm>:impressions|clicks|...``
``stats:{worker}``             hash    worker counters (events received/applied, dead letters)
``segdue:{<slot>}``            zset    profiles by the time their segments may change without an event, 16 slots
``touch:{<shard>}:<subject>``  string  a person's touches (JSON, at most ``max_touches``, TTL: the attribution
                                       window), offset guard and event tokens (``engine/attribution.py``)
``attr:{<shard>}``             hash    attribution counters, 16 shards summed on read (``engine/attribution.py``)
``cat:{catalogue}:version``    string  catalogue version, bumped by every admin change (``engine/catalogue.py``)
``cat:{catalogue}:actions``    hash    action id -> entry JSON (``rev``, ``state``, the action's config table)
``cat:{catalogue}:placements`` hash    placement id -> entry JSON (``rev``, overridden ``max_items``)
=============================  ======  ==========================================================

``PERSON_FAMILIES`` names every family that holds a person (erasure and export go through it).

Every write sets the profile TTL, so idle profiles expire; every section of a profile is bounded
(``top_k``, ``size``, ``dedup_window``, the windows' slots; a purchase clears the cart), so nothing grows
without bound. Fields of a feature removed from the configuration are ignored and go with the TTL.
Profiles of the previous layout (separate ``:dedup``, ``:cart``, ``:win``, ``:aff:*`` and ``:recent:*`` keys)
are not read; erasure still deletes those keys (``legacy_keys``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping

from engine.config import EngineConfig
from engine.decisions import decision_slot

GLOBAL_OWNER = "{global}"
#: Characters per de-duplication token: 6 base64url characters = 36 bits.
DEDUP_TOKEN_CHARS = 6
#: Separator of the values in a recent-values chunk (never part of a stored value).
RECENT_SEP = "\x1f"
#: Maximum bytes of one chunk field value (Redis's default ``hash-max-listpack-value``).
CHUNK_BYTES = 64
#: Items a cart holds at most (``lua/apply_ops.lua`` MAX_CART): adding one more leaves the cart as it was.
MAX_CART_ITEMS = 100
#: Anonymous ids merged into one customer at most (``p:{cid}:aliases``); a later one is still merged, not linked.
MAX_ALIASES = 100
#: Key suffixes of the previous layout (one key per section); erasure deletes them too.
LEGACY_SUFFIXES = (":dedup", ":cart", ":win")
#: The fixed profile fields (the table above); ``engine/lua/apply_ops.lua`` names them too
#: (``tests/test_lua_layout.py`` checks that both agree).
FIRST_SEEN, LAST_SEEN, MONETARY = "fs", "ls", "m"
SESSION_ID, SESSION_START, SESSION_LAST, SESSION_PAGES = "si", "ss", "sl", "sp"
CART_PREFIX, DEDUP_PREFIX, OFFSET_PREFIX, CONSENT_PREFIX = "C:", "d:", "off:", "k"
DEDUP_CURSOR = DEDUP_PREFIX + "n"
#: First characters of the fields a consent withdrawal keeps: offsets, consent flags, de-duplication.
KEPT_ON_WIPE = (OFFSET_PREFIX[0], CONSENT_PREFIX, DEDUP_PREFIX[0])


#: Next-best action (``engine.timing``, ``engine.channels``): the customer's activity hours as two decayed
#: histograms kept by the affinity operation (UTC hour of day 0-23, UTC weekday 0-6 from Monday) under codes no
#: declared feature can have (``_`` is not base 62), their landmarks; the time zone (identify traits); per channel
#: the impressions shown on it and the rewards earned on it.
ACTIVITY_HOUR_PREFIX, ACTIVITY_DAY_PREFIX = "a_h:", "a_d:"
ACTIVITY_HOUR_LANDMARK, ACTIVITY_DAY_LANDMARK = "L_h", "L_d"
TIMEZONE_FIELD = "tz"
CHANNEL_SHOWN_PREFIX, CHANNEL_ENGAGED_PREFIX = "I:", "E:"
#: The population's activity hours and channel rates: one zset of the popularity owner (members ``h<hour>``,
#: ``d<weekday>``, ``I:<channel>``, ``E:<channel>``), written once per batch and partition, never per event.
CONTACT_PRIOR_LANDMARK = "L:_contact"


#: A Redis Cluster spreads the hot single keys (the popularity owner, the worker counters, the experiment
#: counters: written by every batch) over this many shards, each its own hash tag, so that no one master takes
#: every write; readers sum the shards. Shard 0 is the key of a single Redis, which uses that one alone.
HOT_KEY_SHARDS = 16


def shard_tag(name: str, shard: int) -> str:
    """The hash tag of shard ``shard`` of a hot key: shard 0 keeps the single-Redis name.

    >>> shard_tag("global", 0), shard_tag("global", 10), arms_key("home", 3)
    ('{global}', '{global#0a}', 'arms:{home#03}')
    """
    return f"{{{name}}}" if shard == 0 else f"{{{name}#{shard:02x}}}"


def sum_counters(shards: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Counter hashes summed field by field (a sum of integers stays an integer).

    >>> sum_counters([{"a": "2", "s": "0.5"}, {"a": "3", "s": "1.25", "b": "1"}])
    {'a': '5', 's': '1.75', 'b': '1'}
    """
    out: dict[str, int | float] = {}
    for h in shards:
        for field, value in h.items():
            n = int(value) if value.lstrip("-").isdigit() else float(value)
            out[field] = out.get(field, 0) + n
    return {f: repr(v) if isinstance(v, float) else str(v) for f, v in out.items()}


def contact_prior_key(shard: int = 0) -> str:
    return f"{popularity_hash(shard)}:contact"


#: The segments last published for a profile (``streams/segments.py``).
SEGMENTS_FIELD = "S"
#: Profiles whose segments may change with time alone are spread over this many zsets.
SEGMENT_DUE_SLOTS = 16


def segment_due_slot(owner: str) -> int:
    """
    >>> segment_due_slot("cust-1") in range(SEGMENT_DUE_SLOTS)
    True
    """
    return hashlib.blake2b(owner.encode(), digest_size=2).digest()[0] % SEGMENT_DUE_SLOTS


def segment_due_key(slot: int) -> str:
    return f"segdue:{{{slot:02x}}}"


#: Attribution counters are spread over this many hashes; a person's touch list shares its shard's hash tag.
ATTRIBUTION_SHARDS = 16


def attribution_shard(subject: str) -> int:
    """
    >>> attribution_shard("c:cust-1") in range(ATTRIBUTION_SHARDS)
    True
    """
    return hashlib.blake2b(subject.encode(), digest_size=2).digest()[0] % ATTRIBUTION_SHARDS


def touches_key(subject: str) -> str:
    """A person's attribution touch list, in its counter shard's slot (one script writes both).

    >>> touches_key("c:cust-1").startswith("touch:{"), attribution_counters_key(0)
    (True, 'attr:{00}')
    """
    return f"touch:{{{attribution_shard(subject):02x}}}:{subject}"


def attribution_counters_key(slot: int) -> str:
    """The attribution counters of one shard (``slot``: ``attribution_shard`` of the people it counts)."""
    return f"attr:{{{slot:02x}}}"


#: The two key spaces of people: customers (an id the site's back end vouches for) and anonymous ids.
CUSTOMER, ANONYMOUS = "c", "a"


def customer_subject(customer_id: str) -> str:
    """``c:<id>``: a customer in the customer key space.

    >>> customer_subject("cust-1"), anonymous_subject("cust-1")
    ('c:cust-1', 'a:cust-1')
    >>> profile_key("cust-1"), anonymous_profile_key("cust-1")
    ('p:{c:cust-1}', 'p:{a:cust-1}')
    """
    return f"{CUSTOMER}:{customer_id}"


def anonymous_subject(anonymous_id: str) -> str:
    return f"{ANONYMOUS}:{anonymous_id}"


def subject_id(subject: str) -> str:
    """The id of a subject (``c:x`` -> ``x``)."""
    return subject[2:]


def is_customer(subject: str) -> bool:
    return subject.startswith(CUSTOMER + ":")


def subject_profile_key(subject: str) -> str:
    return f"p:{{{subject}}}"


def profile_key(customer_id: str) -> str:
    """A customer's profile hash."""
    return subject_profile_key(customer_subject(customer_id))


def anonymous_profile_key(anonymous_id: str) -> str:
    """An anonymous id's profile hash (never a customer's, whatever the id)."""
    return subject_profile_key(anonymous_subject(anonymous_id))


def identity_key(anonymous_id: str) -> str:
    return f"id:{{{anonymous_subject(anonymous_id)}}}"


def aliases_key(customer_id: str) -> str:
    return f"p:{{{customer_subject(customer_id)}}}:aliases"


def decisions_index_key(subject: str) -> str:
    """The decision ids made for a person that may still wait in the reward join."""
    return f"p:{{{subject}}}:dec"


def erasure_marker_key(subject: str) -> str:
    """Set by an erasure; while it lives nothing is written for the subject (same slot as its profile)."""
    return f"erased:{{{subject}}}"


def erasure_pending_key(subject: str) -> str:
    """The ids an erasure in progress covers (its customer and aliases), so a retry finishes it."""
    return f"erasing:{{{subject}}}"


#: Every key family that holds a person, by name -> how its key is built from a subject (``c:``/``a:``) or,
#: for ``aliases`` and ``identity``, from the customer id / anonymous id. Erasure deletes each one and
#: ``tests/integration/test_privacy.py`` checks each one is empty after it; learner histories are not in
#: Redis keys of their own (the learner's state is told to forget, ``learning`` topic). ``reward_join``:
#: the ``dec:{<slot>}:<id>`` hashes of the ids in ``decisions``; ``segment_due``: the subject's entry in
#: ``segdue:{<slot>}``. The erasure marker is kept (on purpose).
PERSON_FAMILIES = ("profile", "aliases", "identity", "decisions", "reward_join", "erasing", "segment_due",
                   "touches")  # touches: the attribution touch list (engine/attribution.py)


def legacy_subject_keys(subject: str) -> list[str]:
    """Keys of the layout before key spaces (``p:{<raw id>}``...), only ever deleted by an erasure."""
    return [f"p:{{{subject_id(subject)}}}", f"id:{{{subject_id(subject)}}}", f"p:{{{subject_id(subject)}}}:aliases"]


def legacy_keys(subject: str, config: EngineConfig) -> list[str]:
    """The per-section keys of the previous layouts (only ever deleted: erasure of old profiles)."""
    base = f"p:{{{subject_id(subject)}}}"
    return legacy_subject_keys(subject) + [base + s for s in LEGACY_SUFFIXES] + [
        f"{base}:aff:{f.name}" for f in config.affinities] + [f"{base}:recent:{r.name}" for r in config.recents]


def popularity_hash(shard: int = 0) -> str:
    return f"pop:{shard_tag('global', shard)}"


def model_key(placement: str) -> str:
    return f"model:{{{placement}}}"


def worker_stats_key(shard: int = 0) -> str:
    return f"stats:{shard_tag('worker', shard)}"


def dedup_token(event_id: str) -> str:
    """What the profile remembers of an event id: 6 base64url characters (36 bits of a blake2b hash).

    A distinct event is wrongly taken for a duplicate only if its token equals one of the customer's last
    ``dedup_window`` (64) tokens: probability 64 / 2^36 = 9.3e-10 per event, about one event in a billion.
    The (partition, offset) guard does not depend on it: replays are always skipped exactly."""
    return base64.urlsafe_b64encode(hashlib.blake2b(event_id.encode(), digest_size=6).digest())[
        :DEDUP_TOKEN_CHARS].decode()


def offset_field(topic: str, partition: int) -> str:
    return f"{OFFSET_PREFIX}{topic}:{partition}"


def cart_field(item: str) -> str:
    return CART_PREFIX + item


def dedup_field(chunk: int) -> str:
    return f"{DEDUP_PREFIX}{chunk}"


def popularity_landmark_field(feature: str) -> str:
    """The landmark of a feature's popularity zset, in the popularity hash."""
    return f"L:{feature}"


#: Count fields ``c<code>`` of the event types of the envelope; another type is counted as ``c:<type>``.
COUNT_CODES = {"page_view": "v", "click": "k", "search": "s", "add_to_cart": "a", "remove_from_cart": "r",
               "purchase": "p", "identify": "i", "feedback": "f", "consent": "c",
               "impression": "m",
               "track": "t"}  # track: a named event with no type of its own (Segment's other track calls)
#: Consent fields ``k<code>``; another kind of consent is stored as ``k:<name>``.
CONSENT_CODES = {"personalisation": "p", "analytics": "a", "marketing_email": "me", "marketing_push": "mp",
                 "marketing_sms": "ms", "marketing_web": "mw", "marketing": "m"}
#: When the consent choices of a profile were last made (epoch ms): on a merge the newer side's choices win.
CONSENT_TIME = "kt"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def count_field(event_type: str) -> str:
    code = COUNT_CODES.get(event_type)
    return "c" + code if code else "c:" + event_type


def consent_field(kind: str) -> str:
    code = CONSENT_CODES.get(kind)
    return CONSENT_PREFIX + code if code else CONSENT_PREFIX + ":" + kind


#: ``0`` while the customer has withdrawn consent to personalisation (only consent events are applied).
PERSONALISATION_FIELD = consent_field("personalisation")


def feature_codes(kind: str, names: list[str]) -> dict[str, str]:
    """Short stable codes for the declared features of one kind: the first character(s) of a base-62 hash
    of the name, as many as it takes to tell the names apart. A code depends only on the names (never on
    their order), so a configuration change can orphan a feature's fields (ignored, and gone with the
    TTL) but never make one feature read another's."""
    digests = {}
    for n in names:
        x = int.from_bytes(hashlib.blake2b(f"{kind}:{n}".encode(), digest_size=8).digest(), "big")
        chars = []
        for _ in range(10):
            x, r = divmod(x, 62)
            chars.append(_B62[r])
        digests[n] = "".join(chars)
    codes = {}
    for n, d in digests.items():
        k = 1
        while any(o != n and od[:k] == d[:k] for o, od in digests.items()):
            k += 1
        codes[n] = d[:k]
    return codes


class ProfileFields:
    """The field names of the declared features (see the table above), computed once per configuration."""

    __slots__ = ("affinity", "landmark", "recent", "window", "affinity_by_code")

    def __init__(self, config: EngineConfig) -> None:
        aff = feature_codes("affinity", [f.name for f in config.affinities])
        rec = feature_codes("recent", [r.name for r in config.recents])
        win = feature_codes("window", [w.name for w in config.windows])
        #: affinity feature -> field prefix ``a<code>:`` (the value follows)
        self.affinity = {name: f"a{code}:" for name, code in aff.items()}
        self.affinity_by_code = {code: name for name, code in aff.items()}
        #: affinity feature -> landmark field ``L<code>``
        self.landmark = {name: f"L{code}" for name, code in aff.items()}
        #: recent feature -> chunk field prefix ``r<code>:`` (the chunk number follows)
        self.recent = {name: f"r{code}:" for name, code in rec.items()}
        #: (window feature, window) -> field ``w<code>:<window>``
        self.window = {(wf.name, w): f"w{win[wf.name]}:{w}" for wf in config.windows for w in wf.windows}


_FIELDS: dict[int, tuple[EngineConfig, ProfileFields]] = {}


def profile_fields(config: EngineConfig) -> ProfileFields:
    hit = _FIELDS.get(id(config))
    if hit is None or hit[0] is not config:
        hit = _FIELDS[id(config)] = (config, ProfileFields(config))
    return hit[1]


class OwnerKeys:
    """The ordered key list of one owner as passed to the Lua script (``KEYS``). A person is one hash (and,
    with ``marker``, its erasure marker as ``KEYS[2]``: nothing is written while it exists); the popularity
    owner also has one zset per affinity feature, addressed by its 1-based index."""

    __slots__ = ("keys", "aff", "marker", "contact")

    def __init__(self, base: str, config: EngineConfig, *, per_customer: bool = True,
                 marker: str | None = None) -> None:
        keys = [base]
        self.marker = marker is not None
        if marker is not None:
            keys.append(marker)
        self.aff: dict[str, int] = {}
        self.contact = 0  # the popularity owner's contact-prior zset (next-best action), by index
        if not per_customer:
            for f in config.affinities:
                keys.append(f"{base}:aff:{f.name}")
                self.aff[f.name] = len(keys)
            keys.append(f"{base}:contact")  # contact_prior_key of the shard
            self.contact = len(keys)
        self.keys = keys

    def key(self, index: int) -> str:
        return self.keys[index - 1]


def subject_keys(subject: str, config: EngineConfig) -> OwnerKeys:
    """A person's profile hash and erasure marker."""
    return OwnerKeys(subject_profile_key(subject), config, marker=erasure_marker_key(subject))


def customer_keys(customer_id: str, config: EngineConfig) -> OwnerKeys:
    return subject_keys(customer_subject(customer_id), config)


def popularity_keys(config: EngineConfig, shard: int = 0) -> OwnerKeys:
    """The keys of one popularity shard (a partition always writes to the same one: its offset guard is there)."""
    return OwnerKeys(popularity_hash(shard), config, per_customer=False)


# -- learning: the reward join, experiment counters, model snapshots ------------------------------------
#: Decisions are spread over this many slots (``engine.decisions.decision_slot``), each its own hash tag.
DECISION_SLOTS = 256
#: Fields of a decision's hash ``dec:{<slot>}:<id>`` (written by ``engine/lua/reward_join.lua`` only):
#: the record JSON, the end of its reward window, the aggregation, the aggregated reward, the rewards
#: counted, the click and conversion flags, ``1`` once its reward is fixed, ``1`` once Kafka acknowledged its
#: learning example, ``1`` once an impression showed it; and ``e:<event_id>`` per reward counted.
DECISION_RECORD = "record"
DECISION_FIELDS = (DECISION_RECORD, "expires_at", "agg", "reward", "n", "clicked", "converted", "final", "settled",
                   "shown")
REWARD_EVENT_PREFIX = "e:"
#: Fields of a model hash ``model:{<name>}``: what serving loads, and the learner's own state if it differs.
MODEL_VERSION, MODEL_BLOB, MODEL_STATE = "version", "blob", "state"


def decision_key_prefix(slot: int) -> str:
    """``dec:{<slot>}:``; the reward join's expiry declares each due decision's key (prefix + id)."""
    return f"dec:{{{slot:02x}}}:"


def decision_key(decision_id: str) -> str:
    """The reward-join state of a decision.

    >>> decision_key("ab12")
    'dec:{ab}:ab12'
    """
    return decision_key_prefix(decision_slot(decision_id)) + decision_id


def due_key(slot: int) -> str:
    """The zset of a slot's decision ids by the end of their reward window."""
    return f"due:{{{slot:02x}}}"


def arms_key(placement: str, shard: int = 0) -> str:
    """The experiment counters of a placement: fields ``arm_field(arm, counter)``."""
    return f"arms:{shard_tag(placement, shard)}"


def arm_field(arm: str, counter: str) -> str:
    return f"{arm}:{counter}"


#: The catalogue's keys (engine/catalogue.py): one hash tag, so a change is one MULTI in one Cluster slot.
CATALOGUE_VERSION_KEY = "cat:{catalogue}:version"
CATALOGUE_ACTIONS_KEY = "cat:{catalogue}:actions"
CATALOGUE_PLACEMENTS_KEY = "cat:{catalogue}:placements"
