"""The Lua scripts name the same fields as ``engine.layout``: read from the scripts' source, so a field renamed
on one side only fails here (the integration tests would see it only as profiles quietly read wrong)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from engine import layout
from engine.decisions import decision_slot

APPLY_OPS = resources.files("engine").joinpath("lua/apply_ops.lua").read_text()
REWARD_JOIN = resources.files("engine").joinpath("lua/reward_join.lua").read_text()
REFERENCE = (Path(__file__).parent / "data" / "apply_ops_reference.lua").read_text()
PROFILE_SCRIPTS = {"apply_ops": APPLY_OPS, "reference": REFERENCE}


def code(lua: str) -> str:
    """The script without its comments (``--`` to the end of a line; no script has one inside a string)."""
    return "\n".join(line.split("--", 1)[0] for line in lua.splitlines())


def profile_fields(lua: str) -> set[str]:
    """Whole field names the script reads (``H['x']``) or writes (``set('x', ...)``, ``del('x')``)."""
    src = code(lua)
    return set(re.findall(r"H\['([^']+)'\]", src)) | set(re.findall(r"\b(?:set|del)\('([^']+)'[,)]", src))


def field_prefixes(lua: str) -> set[str]:
    """Prefixes of field names the script builds (``'d:' .. c``) or matches (``sub(f, 1, 2) == 'C:'``)."""
    src = code(lua)
    return set(re.findall(r"'([A-Za-z]+:)' \.\.", src)) | set(re.findall(r"== '([A-Za-z]+:)'", src))


def hash_fields(lua: str) -> tuple[set[str], set[str]]:
    """Field names and prefixes given to the hash commands of ``redis.call`` (the key is the second argument;
    HSET and HMSET take field, value pairs)."""
    fields: set[str] = set()
    prefixes: set[str] = set()
    for cmd, rest in re.findall(r"redis\.call\('(H[A-Z]+)', ([^()\n]*)\)", code(lua)):
        args = [a.strip() for a in rest.split(",")][1:]
        if cmd in ("HSET", "HMSET"):
            args = args[::2]
        elif cmd not in ("HMGET", "HDEL"):
            args = args[:1]
        for arg in args:
            if m := re.fullmatch(r"'([^']+)'", arg):
                fields.add(m.group(1))
            elif m := re.fullmatch(r"'([^']+)' \.\. .+", arg):
                prefixes.add(m.group(1))
    return fields, prefixes


@pytest.mark.parametrize("script", PROFILE_SCRIPTS)
def test_profile_scripts_name_the_layouts_fields(script: str) -> None:
    lua = PROFILE_SCRIPTS[script]
    assert profile_fields(lua) == {layout.SESSION_ID, layout.SESSION_START, layout.SESSION_LAST,
                                   layout.SESSION_PAGES, layout.DEDUP_CURSOR, layout.PERSONALISATION_FIELD,
                                   layout.CONSENT_TIME}
    assert field_prefixes(lua) == {layout.DEDUP_PREFIX, layout.CART_PREFIX}
    cart = re.search(r"sub\(f, 1, (\d+)\) == '([^']+)'", code(lua))
    assert cart and (int(cart.group(1)), cart.group(2)) == (len(layout.CART_PREFIX), layout.CART_PREFIX)


@pytest.mark.parametrize("script", PROFILE_SCRIPTS)
def test_profile_scripts_keep_the_layouts_fields_on_wipe(script: str) -> None:
    body = re.search(r"local function keep_on_wipe\(f\)(.*?)\nend", code(PROFILE_SCRIPTS[script]), re.S)
    assert body is not None
    assert set(re.findall(r"c == '(.)'", body.group(1))) == set(layout.KEPT_ON_WIPE)
    # what is kept is what the layout says is kept: offsets, consent flags, de-duplication
    for name in (layout.offset_field("events", 0), layout.consent_field("analytics"), layout.dedup_field(0),
                 layout.DEDUP_CURSOR, layout.PERSONALISATION_FIELD, layout.CONSENT_TIME,
                 layout.consent_field("marketing_email")):
        assert name[0] in layout.KEPT_ON_WIPE, name
    for name in (layout.SESSION_ID, layout.FIRST_SEEN, layout.MONETARY, layout.cart_field("x")):
        assert name[0] not in layout.KEPT_ON_WIPE, name


@pytest.mark.parametrize("script", PROFILE_SCRIPTS)
def test_profile_scripts_share_the_chunk_size_and_separator(script: str) -> None:
    src = code(PROFILE_SCRIPTS[script])
    chunk = re.search(r"local CHUNK = (\d+)", src)
    sep = re.search(r"local SEP = '\\(\d+)'", src)
    assert chunk and int(chunk.group(1)) == layout.CHUNK_BYTES
    assert sep and chr(int(sep.group(1))) == layout.RECENT_SEP
    if (sepb := re.search(r"local SEPB = (\d+)", src)) is not None:
        assert chr(int(sepb.group(1))) == layout.RECENT_SEP


def test_apply_ops_dedup_chunk_names_are_the_layouts() -> None:
    table = re.search(r"local DN = \{(.*?)\}", code(APPLY_OPS), re.S)
    assert table is not None
    names = re.findall(r"'([^']+)'", table.group(1))
    assert names == [layout.dedup_field(i) for i in range(len(names))]
    # enough constant names for the default window: dedup_window tokens, CHUNK // token chars per chunk
    per_chunk = layout.CHUNK_BYTES // layout.DEDUP_TOKEN_CHARS
    assert len(names) * per_chunk >= 64


def test_reward_join_names_the_layouts_decision_fields() -> None:
    fields, prefixes = hash_fields(REWARD_JOIN)
    assert fields == set(layout.DECISION_FIELDS)
    assert prefixes == {layout.REWARD_EVENT_PREFIX}


def test_reward_join_expiry_builds_the_layouts_decision_keys() -> None:
    # the expiry gets every decision key in KEYS (a Redis Cluster routes by them), none built from ARGV
    assert re.search(r"local id, key = ARGV\[i\], KEYS\[i - 2\]", code(REWARD_JOIN))
    for name in ("apply_ops", "reward_join", "attribution"):
        lua = code(resources.files("engine").joinpath(f"lua/{name}.lua").read_text())
        # a key argument is a name, never an expression built in the script (e.g. a prefix .. an id)
        assert not re.search(r"redis\.call\('\w+', [^,)]*\.\.", lua), name
        assert not re.search(r"=\s*ARGV\[[^]]+\]\s*\.\.", lua), name  # nor a name made of ARGV (old expiry)
    for did in ("0f" + "1" * 30, "not-hex-id"):
        slot = decision_slot(did)
        assert layout.decision_key(did) == layout.decision_key_prefix(slot) + did
        assert "{" in layout.due_key(slot) and layout.due_key(slot)[3:] == layout.decision_key_prefix(slot)[3:-1]


def test_the_person_keys_keep_one_hash_tag_per_subject_and_separate_key_spaces() -> None:
    for cid in ("cust-1", "a:b", "x}y"):
        customer, anon = layout.customer_subject(cid), layout.anonymous_subject(cid)
        assert layout.profile_key(cid) != layout.anonymous_profile_key(cid)
        tag = layout.profile_key(cid)[2:]
        # the customer's hash, aliases, decision index and erasure marker share one slot (one hash tag)
        for key in (layout.aliases_key(cid), layout.decisions_index_key(customer),
                    layout.erasure_marker_key(customer), layout.erasure_pending_key(customer)):
            assert key[key.index("{"):key.index("}") + 1] == tag[:tag.index("}") + 1], key
        assert layout.identity_key(cid)[3:] == layout.anonymous_profile_key(cid)[2:]
        assert layout.subject_keys(anon, None).keys == [  # type: ignore[arg-type]  # config unused for a person
            layout.anonymous_profile_key(cid), layout.erasure_marker_key(anon)]


def test_apply_ops_takes_the_erasure_marker_as_its_second_key() -> None:
    src = code(APPLY_OPS)
    assert re.search(r"redis\.call\('GET', KEYS\[2\]\)", src)
    assert "find(flags, 'e', 1, true)" in src and "find(flags, 'o', 1, true)" in src


def test_the_parsers_see_a_change_on_either_side() -> None:
    renamed = APPLY_OPS.replace("'sl'", "'sL'")
    assert layout.SESSION_LAST not in profile_fields(renamed) and "sL" in profile_fields(renamed)
    assert field_prefixes(APPLY_OPS.replace("== 'C:'", "== 'K:'")) == {layout.DEDUP_PREFIX, "K:"}
    fields, _ = hash_fields(REWARD_JOIN.replace("'HINCRBY', key, 'n'", "'HINCRBY', key, 'count'"))
    assert "count" in fields and "n" not in fields
    fields, _ = hash_fields("redis.call('HSET', key, 'expires_at', ARGV[4], 'agg', ARGV[6]) -- 'x'")
    assert fields == {"expires_at", "agg"}


def test_hot_keys_keep_their_single_redis_names_as_shard_0_and_spread_over_slots() -> None:
    from redis.crc import key_slot

    from engine.config import load_config
    from tests.support import CONFIG_PATH

    assert layout.popularity_hash(0) == "pop:{global}" and layout.worker_stats_key(0) == "stats:{worker}"
    assert layout.arms_key("home", 0) == "arms:{home}" and layout.contact_prior_key(0) == "pop:{global}:contact"
    for key in (layout.popularity_hash, layout.worker_stats_key, lambda s: layout.arms_key("home", s)):
        slots = {key_slot(key(s).encode()) for s in range(layout.HOT_KEY_SHARDS)}
        assert len(slots) == layout.HOT_KEY_SHARDS
    # a shard's keys share its tag (one script call writes them)
    for s in range(layout.HOT_KEY_SHARDS):
        keys = {key_slot(k.encode()) for k in layout.popularity_keys(load_config(CONFIG_PATH), s).keys}
        assert len(keys) == 1
