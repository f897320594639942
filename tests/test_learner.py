"""The learner's routing of co-visitation examples, without infrastructure."""

from __future__ import annotations

import time

from engine.config import load_config
from engine.recommend.signal import COVISIT_MODEL
from streams.learner import PlacementLearner
from tests.support import CONFIG_PATH


def test_an_erasure_drops_the_visitors_histories_and_makes_a_new_snapshot_due() -> None:
    learner = PlacementLearner(load_config(CONFIG_PATH))
    assert learner.covisit is not None
    rows = [["anon-1", "sku-1", 1.0, 1.0], ["anon-1", "sku-2", 1.0, 2.0], ["cust-1", "sku-1", 1.0, 3.0],
            ["other", "sku-2", 1.0, 4.0]]
    assert learner.learn({"kind": "interactions", "rows": rows})
    before = learner.covisit.candidate_scores(["sku-1"], ["sku-2"])
    learner.covisit_state.updates_since_snapshot = 0  # as right after a snapshot
    assert learner.due_snapshots(now=time.monotonic() + 3600) == []

    assert learner.learn({"kind": "forget", "visitors": ["cust-1", "anon-1"]})
    model = learner.covisit.model
    assert model.history("anon-1") == model.history("cust-1") == [] and model.history_items("other") == ["sku-2"]
    assert learner.covisit.candidate_scores(["sku-1"], ["sku-2"]) == before  # what was learned from them stays
    assert COVISIT_MODEL in learner.due_snapshots(now=time.monotonic() + 3600)  # the stored state loses them
