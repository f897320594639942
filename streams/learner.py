"""The online learner: learning examples in, versioned signed model snapshots out.

Examples arrive on the ``learning`` topic keyed by placement, so each placement's models are owned by
exactly one worker. Each example is learned from the context *as logged at decision time*. Every
policy configured for the placement (the learning arm's and, if it learns, the control arm's) learns
from every example: both arms' traffic is useful data. A snapshot is published every N updates or T
seconds; serving hot-reloads it.

>>> from engine.config import parse_config
>>> cfg = parse_config({"placement": [{"id": "p", "policy": "linucb"}],
...                     "action": [{"id": "a", "placements": ["p"], "category": "shoes"}]})
>>> learner = PlacementLearner(cfg)
>>> learner.learn_one({"placement": "p", "decision_id": "d1", "context": {"bias": 1.0},
...                    "action_id": "a", "reward": 1.0})
True
>>> learner.models["p"]["linucb"].n_updates
1
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.clusters import CLUSTERS_MODEL, Clusters
from engine.config import EngineConfig
from engine.decisions import action_features
from engine.learning_messages import FORGET, INTERACTIONS, PROFILES
from engine.learning_store import LearningStore
from engine.models import learned_policies, model_name
from engine.policies import Candidate, Policy, make_policy
from engine.recommend.signal import COVISIT_MODEL, COVISIT_STATE, CollaborativeSignal
from engine.snapshots import SnapshotError, dump_model, load_model

log = logging.getLogger(__name__)

#: Learned decision ids remembered per placement, so a replayed example is not learned twice.
RECENT_DECISIONS = 100_000
#: Serving looks for new snapshots every 0.5 s (serving.services.MODEL_REFRESH_S); publishing more
#: often only costs the learner (bench/learning_speed.py measures it).
MIN_SNAPSHOT_INTERVAL_S = 0.5


@dataclass(slots=True)
class _State:
    version: int = 0
    updates_since_snapshot: int = 0
    last_snapshot: float = field(default_factory=time.monotonic)


class PlacementLearner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.models: dict[str, dict[str, Policy]] = {}
        self.state: dict[str, _State] = {}
        self._recent: dict[str, OrderedDict[str, None]] = {}
        collab = config.collaborative
        self.covisit = CollaborativeSignal(**collab.params) if collab.enabled else None
        self.covisit_state = _State()
        cs = config.clusters  # behavioural clusters (engine/clusters.py), from the ingest's profile vectors
        self.clusters = Clusters(cs.k, cs.halflife, cs.min_distance) if cs.enabled else None
        self.clusters_state = _State()

    def learn(self, example: Mapping[str, Any]) -> bool:
        """Route an example: item interactions and erasures to co-visitation, settled decisions to placements."""
        if example.get("kind") == INTERACTIONS:  # a batch of [visitor, item, weight, ts] rows
            if self.covisit is None:
                return False
            self.covisit.learn_many(example["rows"])  # one pass over the batch (CoVisitation.learn_many)
            self.covisit_state.updates_since_snapshot += len(example["rows"])
            return True
        if example.get("kind") == PROFILES:  # profile vectors (streams/clusters.py)
            if self.clusters is None:
                return False
            for x, value in example["rows"]:
                self.clusters.learn_one(x, float(value))
            self.clusters_state.updates_since_snapshot += len(example["rows"])
            return True
        if example.get("kind") == FORGET:  # an erased customer's ids (serving/profiles.py)
            if self.covisit is None:
                return False
            self.covisit.forget(example["visitors"])
            self.covisit_state.updates_since_snapshot += 1  # the stored learner state must lose them too
            return True
        return self.learn_one(example)

    def _ensure(self, placement: str) -> dict[str, Policy]:
        models = self.models.get(placement)
        if models is None:
            params = self.config.placements[placement].learning.params
            main = self.config.placements[placement].learning.policy
            models = {p: make_policy(p, **(params if p == main else {}))
                      for p in learned_policies(self.config, placement)}
            self.models[placement] = models
            self.state[placement] = _State()
            self._recent[placement] = OrderedDict()
        return models

    def learn_one(self, example: Mapping[str, Any]) -> bool:
        """Learn one example; False when it was skipped (unknown placement, seen before, no learner)."""
        placement: Any = example.get("placement")  # untrusted: checked on the next line
        if placement not in self.config.placements or not learned_policies(self.config, placement):
            return False
        models = self._ensure(placement)
        recent = self._recent[placement]
        did = example["decision_id"]
        if did in recent:
            return False
        recent[did] = None
        if len(recent) > RECENT_DECISIONS:
            recent.popitem(last=False)
        action = self.config.actions.get(example["action_id"])
        # the shown action's features as scored (co-visitation included), else the catalogue's
        features = example.get("action_features") or (action_features(action, self.config.affinities) if action else {})
        candidate = Candidate(example["action_id"], features)
        for policy in models.values():
            policy.learn_one(example["context"], candidate, float(example["reward"]))
        self.state[placement].updates_since_snapshot += 1
        return True

    def due_snapshots(self, now: float | None = None, force: bool = False) -> list[str]:
        """Placements (and ``COVISIT_MODEL``) whose snapshot is due."""
        now = time.monotonic() if now is None else now
        due = []
        st, collab = self.covisit_state, self.config.collaborative
        if self.covisit is not None and st.updates_since_snapshot and (
            force or st.updates_since_snapshot >= collab.snapshot_every_updates
            or now - st.last_snapshot >= collab.snapshot_every_seconds
        ):
            due.append(COVISIT_MODEL)
        st = self.clusters_state
        if self.clusters is not None and st.updates_since_snapshot and (
            force or now - st.last_snapshot >= self.config.clusters.snapshot_every_seconds
        ):
            due.append(CLUSTERS_MODEL)
        for placement, st in self.state.items():
            ls = self.config.placements[placement].learning
            if st.updates_since_snapshot and (
                force or (st.updates_since_snapshot >= ls.snapshot_every_updates
                          and now - st.last_snapshot >= MIN_SNAPSHOT_INTERVAL_S)
                or now - st.last_snapshot >= ls.snapshot_every_seconds
            ):
                due.append(placement)
        return due

    async def restore(self, store: LearningStore, key: bytes) -> None:
        """Resume every learned placement (and co-visitation) from its last good snapshot (if any). A snapshot
        that is refused is logged and skipped, and versions go on above the published one either way, so that
        serving (which only loads newer versions) takes what this learner publishes next."""
        if self.covisit is not None:
            blob = await store.learner_state(COVISIT_MODEL)
            if blob is not None:
                try:  # the learner's own state; a serving snapshot (no histories) as a fallback
                    self.covisit, self.covisit_state.version = load_model(
                        blob, key, name=(COVISIT_STATE, COVISIT_MODEL), kind=CollaborativeSignal.name)
                except SnapshotError as exc:
                    log.warning("co-visitation state refused (%s), starting afresh: %s", exc.reason, exc)
            published = await store.model_version(COVISIT_MODEL)
            self.covisit_state.version = max(self.covisit_state.version, published or 0)
        if self.clusters is not None:
            blob = await store.model_blob(CLUSTERS_MODEL)
            published = await store.model_version(CLUSTERS_MODEL)
            if blob is not None:
                try:
                    self.clusters, self.clusters_state.version = load_model(
                        blob, key, name=CLUSTERS_MODEL, kind=Clusters.name)
                except SnapshotError as exc:
                    log.warning("clusters snapshot refused (%s), starting afresh: %s", exc.reason, exc)
            self.clusters_state.version = max(self.clusters_state.version, published or 0)
        for placement in self.config.placements:
            for policy in learned_policies(self.config, placement):
                name = model_name(placement, policy)
                published = await store.model_version(name)
                if published is None:
                    continue
                self._ensure(placement)
                st = self.state[placement]
                st.version = max(st.version, published)
                blob = await store.model_blob(name)
                if blob is None:
                    continue
                try:
                    model, version = load_model(blob, key, name=name, kind=policy)
                except SnapshotError as exc:
                    log.warning("snapshot of %s refused (%s), starting afresh: %s", name, exc.reason, exc)
                    continue
                self.models[placement][policy] = model
                st.version = max(st.version, version)

    async def snapshot(self, store: LearningStore, key: bytes, placement: str) -> int:
        if placement == COVISIT_MODEL:
            assert self.covisit is not None  # due_snapshots() names COVISIT_MODEL only when it is on
            st = self.covisit_state
            st.version += 1
            # serving gets the model without per-visitor histories (a fraction of the size, and loading
            # them held the API's event loop, making decisions late); the learner keeps them
            serving = dump_model(self.covisit.for_serving(), st.version, key, name=COVISIT_MODEL)
            await store.publish_model(COVISIT_MODEL, st.version, serving,
                                      state=dump_model(self.covisit, st.version, key, name=COVISIT_STATE))
            st.updates_since_snapshot, st.last_snapshot = 0, time.monotonic()
            return st.version
        if placement == CLUSTERS_MODEL:
            assert self.clusters is not None  # due_snapshots() names CLUSTERS_MODEL only when it is on
            st = self.clusters_state
            st.version += 1
            await store.publish_model(CLUSTERS_MODEL, st.version,
                                      dump_model(self.clusters, st.version, key, name=CLUSTERS_MODEL))
            st.updates_since_snapshot, st.last_snapshot = 0, time.monotonic()
            return st.version
        st = self.state[placement]
        st.version += 1
        for policy_name, policy in self.models[placement].items():
            name = model_name(placement, policy_name)
            await store.publish_model(name, st.version, dump_model(policy, st.version, key, name=name))  # type: ignore[arg-type]  # learned policies have to_state
        st.updates_since_snapshot = 0
        st.last_snapshot = time.monotonic()
        return st.version
