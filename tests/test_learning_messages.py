"""The ``learning`` topic's contract: each kind's example validates against its schema file, and what the
real producers build (the reward join, the co-visitation feed, an erasure) validates too, so a producer that
drifts from ``schemas/json/learning*.schema.json`` fails here. The learner takes each of them."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest

import schemas
from engine.config import load_config
from engine.learning_messages import FORGET, INTERACTIONS, forget_message, interactions_message
from engine.learning_store import Finalised
from schemas import InvalidEvent, parse_event, validate_learning_message
from schemas.learning import LEARNING_SCHEMA, LEARNING_SCHEMAS
from streams.collaborative import CollaborativeFeed
from streams.learner import PlacementLearner
from streams.pipeline import Record
from streams.rewards import learning_example
from tests.support import CONFIG_PATH

ROOT = Path(schemas.__file__).resolve().parent
BASE_URI = "https://schemas.pulse.example/"
KINDS = list(LEARNING_SCHEMAS)


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def compile_file(name: str) -> Any:
    """As a producer in another language would: the file as is, ``$ref`` resolved by ``$id``."""
    return fastjsonschema.compile(_load(ROOT / "json" / name),
                                  handlers={"https": lambda uri: _load(ROOT / "json" / uri[len(BASE_URI):])})


def example(kind: str | None) -> dict[str, Any]:
    return _load(ROOT / "examples" / LEARNING_SCHEMAS[kind].replace(".schema.", ".example."))


def check(message: dict[str, Any], kind: str | None) -> None:
    """Valid against its kind's file, the topic's union file and the package's validator."""
    compile_file(LEARNING_SCHEMAS[kind])(copy.deepcopy(message))
    compile_file(LEARNING_SCHEMA)(copy.deepcopy(message))
    assert validate_learning_message(message) == kind


@pytest.mark.parametrize("kind", KINDS)
def test_example_validates_and_is_refused_by_the_other_kinds(kind: str | None) -> None:
    raw = example(kind)
    check(raw, kind)
    for other in KINDS:
        if other != kind:
            with pytest.raises(fastjsonschema.JsonSchemaValueException):
                compile_file(LEARNING_SCHEMAS[other])(copy.deepcopy(raw))


# -- what the producers build -------------------------------------------------------------------------


def produced_example(**record_changes: Any) -> dict[str, Any]:
    """``streams.rewards.learning_example`` of the decision record example (what the reward join sends)."""
    record = {**_load(ROOT / "examples" / "decision.v1.example.json"), **record_changes}
    schemas.validate_decision(record)
    return learning_example(Finalised(record, reward=1.0, clicked=True, converted=False, defaulted=False))


def test_the_reward_joins_example_follows_the_schema() -> None:
    check(produced_example(), None)
    check(produced_example(action_features={"cat_jackets": 1.0, "covisit": 0.3}), None)


def produced_interactions() -> list[dict[str, Any]]:
    """What ``CollaborativeFeed.on_events`` sends for the example events of every type."""
    config = load_config(CONFIG_PATH)
    sent: list[tuple[bytes, bytes]] = []

    async def sink(key: bytes, value: bytes) -> None:
        sent.append((key, value))

    events = [parse_event(p.read_bytes()) for p in sorted((ROOT / "examples").glob("*.v1.example.json"))
              if json.loads(p.read_text()).get("type") in schemas.EVENT_TYPES]
    records = [(Record("events", 0, i, None, orjson.dumps(e.event_id)), e) for i, e in enumerate(events)]
    asyncio.run(CollaborativeFeed(config, sink).on_events(records))
    return [json.loads(v) for _, v in sent]


def test_the_covisitation_feeds_interactions_follow_the_schema() -> None:
    (message,) = produced_interactions()
    assert len(message["rows"]) >= 3  # the example events that carry an item_id
    check(message, INTERACTIONS)
    check(json.loads(interactions_message([["a-1", "sku-1", 0.5, 1714564800.0]])), INTERACTIONS)


def test_an_erasures_forget_request_follows_the_schema() -> None:
    check(json.loads(forget_message(["cust-1", "anon-1"])), FORGET)
    check(json.loads(forget_message([])), FORGET)  # a customer with nothing held


@pytest.mark.parametrize(("message", "expected"), [
    ({"kind": "interactions", "rows": [["a-1", "sku-1", 0.5]]}, "rows[0]: must have at least 4 item(s)"),
    ({"kind": "interactions", "rows": [["a-1", "sku-1", 0, 1.0]]}, "rows[0][2]: must be > 0"),
    ({"kind": "forget", "visitors": [""]}, "visitors[0]: must not be empty"),
    ({"kind": "learn"}, "kind: must be one of ['forget', 'interactions', 'profiles'] or absent"),
    ({**example(None), "reward": "1"}, "reward: must be number"),
    ({**example(None), "kind": None}, "kind: must NOT match"),  # a settled decision has no kind at all
    ([], "must be an object, got array"),
])
def test_drift_is_refused_with_a_reason(message: Any, expected: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_learning_message(message)
    assert expected in info.value.reason


def test_a_message_without_a_required_field_fails() -> None:
    broken = produced_example()
    del broken["arm"]
    with pytest.raises(InvalidEvent, match="arm"):
        validate_learning_message(broken)


def test_the_learner_takes_every_kind_as_produced() -> None:
    learner = PlacementLearner(load_config(CONFIG_PATH))
    (interactions,) = produced_interactions()
    assert learner.learn(interactions)
    assert learner.learn(json.loads(forget_message([interactions["rows"][0][0]])))
    example_ = produced_example(placement=next(iter(learner.config.placements)))
    learned = learner.learn(example_)
    assert learned or not learner.state  # learned unless that placement learns nothing


def test_the_cluster_feeds_profile_vectors_follow_the_schema() -> None:
    from engine.learning_messages import PROFILES, profiles_message

    check(json.loads(profiles_message([[{"log_click": 0.2, "category:shoes": 1.0}, 0.0]])), PROFILES)
