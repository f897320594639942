"""Behavioural clusters (engine/clusters.py): the online k-means, its snapshot as signed data, the learner that
learns it from the ingest's profile vectors, serving's assignment, and the configuration's checks."""

from __future__ import annotations

import math

import pytest

from engine.clusters import CLUSTERS_MODEL, FIXED, Clusters, vector
from engine.config import ConfigError, parse_config
from engine.features import Profile
from engine.learning_messages import PROFILES
from engine.snapshots import dump_model, load_model
from streams.learner import PlacementLearner

KEY = b"k" * 32
FEATURES = [{"name": "category", "kind": "affinity", "field": "category", "weights": {"page_view": 1.0}}]


def profile(category: str, views: int, value: float, last_seen: float = 1000.0) -> Profile:
    return Profile("c", True, {"page_view": views}, 0.0, last_seen, {}, {"category": {category: 4.0, "x": 1.0}},
                   {}, {}, value, {}, {})


def test_the_vector_holds_shares_activity_value_and_recency() -> None:
    v = vector(profile("shoes", 100, 999.0, last_seen=1000.0 - 7 * 86400), "category", 1000.0)
    assert v["category:shoes"] == pytest.approx(0.8) and v["category:x"] == pytest.approx(0.2)
    assert v["log_page_view"] == pytest.approx(1.0) and v["log_value"] == pytest.approx(1.0, abs=1e-3)
    assert v["recency"] == pytest.approx(math.exp(-1))
    assert set(v) - {"category:shoes", "category:x"} <= set(FIXED)


def test_two_groups_separate_and_are_described() -> None:
    model = Clusters(k=3, min_distance=0.5)
    for i in range(200):
        model.learn_one(vector(profile("shoes", 2 + i % 3, 0.0), "category", 1000.0), 0.0)
        model.learn_one(vector(profile("books", 50 + i % 7, 200.0), "category", 1000.0), 200.0)
    described = {c["top_values"][0][0]: c for c in model.describe()}
    assert set(described) == {"shoes", "books"}  # k = 3, but two groups: no third centre was seeded
    assert described["books"]["mean_value"] == pytest.approx(200.0)
    assert described["shoes"]["share"] == pytest.approx(0.5, abs=0.01)
    assert model.assign(vector(profile("books", 40, 150.0), "category", 1000.0)) == described["books"]["cluster"]


def test_the_model_snapshots_as_signed_data_and_learns_on_after_a_restore() -> None:
    model = Clusters(k=2)
    model.learn_one({"category:a": 1.0, "log_click": 0.5}, 10.0)
    blob = dump_model(model, 3, KEY, name=CLUSTERS_MODEL)
    back, version = load_model(blob, KEY, name=CLUSTERS_MODEL, kind=Clusters.name)
    assert version == 3 and back.dims == model.dims and back.describe() == model.describe()
    back.learn_one({"category:b": 1.0}, 0.0)  # the arrays are writable
    assert back.n_updates == 2


def test_the_learner_learns_profile_messages_and_snapshots_them() -> None:
    cfg = parse_config({"feature": FEATURES, "clusters": {"enabled": True, "k": 2, "snapshot_every_seconds": 1.0}})
    learner = PlacementLearner(cfg)
    rows = [[{"category:a": 1.0}, 0.0], [{"category:b": 1.0, "log_value": 0.5}, 30.0]]
    assert learner.learn({"kind": PROFILES, "rows": rows})
    assert learner.clusters is not None and learner.clusters.n_updates == 2
    assert CLUSTERS_MODEL in learner.due_snapshots(force=True)
    off = PlacementLearner(parse_config({"feature": FEATURES}))
    assert not off.learn({"kind": PROFILES, "rows": rows}) and CLUSTERS_MODEL not in off.due_snapshots(force=True)


def test_audiences_may_name_clusters_only_when_they_exist() -> None:
    base = {"feature": FEATURES, "placement": [{"id": "p"}],
            "action": [{"id": "a", "placements": ["p"], "audience": {"include": ["cluster:1"]}}]}
    assert parse_config({**base, "clusters": {"enabled": True, "k": 2}}).actions["a"].audience is not None
    with pytest.raises(ConfigError, match=r"audience.include\[0\]: \"cluster:1\": clusters are off"):
        parse_config(base)
    with pytest.raises(ConfigError, match="cluster:0 to cluster:0"):
        parse_config({**base, "clusters": {"enabled": True, "k": 1}})
    with pytest.raises(ConfigError, match="clusters.feature: unknown affinity feature"):
        parse_config({"clusters": {"enabled": True, "feature": "brand"}})
