"""Co-visitation snapshots on a real Redis: serving loads the model without per-visitor histories, the
learner resumes from its own state with them."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
import redis.asyncio as aioredis

from engine.config import load_config
from engine.layout import model_key
from engine.learning_store import LearningStore
from engine.recommend.signal import COVISIT_MODEL, COVISIT_STATE
from engine.snapshots import load_model
from infra import local
from streams.learner import PlacementLearner
from tests.support import CONFIG_PATH, aredis_client

pytestmark = pytest.mark.integration
KEY = b"s" * 32


def run(redis_url: str, fn: Any) -> Any:
    async def go() -> Any:
        client = aredis_client(redis_url, decode_responses=True)
        try:
            await client.delete(model_key(COVISIT_MODEL))
            return await fn(LearningStore(client), client)
        finally:  # signed with this test's key: leave nothing for the workers of other tests to resume from
            await client.delete(model_key(COVISIT_MODEL))
            await client.aclose()
    return asyncio.run(go())


def test_serving_gets_the_model_without_visitor_histories_and_the_learner_resumes_with_them(
        redis_server: local.RedisService) -> None:
    config = load_config(CONFIG_PATH)
    assert config.collaborative.enabled
    rows = [[f"v{i % 400}", f"sku-{(i * 7) % 90}", 1.0, 1_700_000_000.0 + i] for i in range(4000)]

    async def scenario(store: LearningStore, client: aioredis.Redis) -> dict[str, Any]:
        learner = PlacementLearner(config)
        learner.learn({"kind": "interactions", "rows": rows})
        version = await learner.snapshot(store, KEY, COVISIT_MODEL)
        served_blob, state_blob = await store.model_blob(COVISIT_MODEL), await store.learner_state(COVISIT_MODEL)
        assert served_blob is not None and state_blob is not None
        served, served_version = load_model(served_blob, KEY, name=COVISIT_MODEL)
        state, _ = load_model(state_blob, KEY, name=COVISIT_STATE)
        fields = await client.hgetall(model_key(COVISIT_MODEL))
        resumed = PlacementLearner(config)
        await resumed.restore(store, KEY)
        return {"learner": learner, "version": version, "served": served, "served_version": served_version,
                "state": state, "sizes": {k: len(base64.b64decode(v)) for k, v in fields.items() if k != "version"},
                "resumed": resumed}

    r = run(redis_server.url, scenario)
    learned = r["learner"].covisit
    assert r["served_version"] == r["version"] == r["resumed"].covisit_state.version
    assert r["served"].model.state_size()["users"] == 0  # no visitor ids, nothing per visitor to load
    assert r["state"].model.state_size()["users"] == learned.model.state_size()["users"] == 400
    assert r["sizes"]["blob"] < r["sizes"]["state"]
    recent = ["sku-7", "sku-14"]
    items = [f"sku-{k}" for k in range(90)]
    assert r["served"].candidate_scores(recent, items) == learned.candidate_scores(recent, items)
    # the resumed learner has the histories: v1's next item pairs with the items v1 saw before the restart
    assert r["resumed"].covisit.model.history_items("v1") == learned.model.history_items("v1")
