"""In-memory model snapshots for serving, hot-reloaded in the background.

Requests never wait for a model: they use whatever is loaded (a fresh, exploring policy until the first
snapshot arrives). A background task polls each model's version; a newer snapshot is fetched with its
published version, its signature, name, kind and version verified and the model rebuilt off the event loop,
then swapped in. A snapshot that is refused (forged, pickled or corrupt, published under another name, or
not newer than the loaded version: ``engine.snapshots.REASONS``) is logged and counted in
``pulse_model_rejected_total{reason}``, once per publication, and the last good model stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from engine.clusters import CLUSTERS_MODEL, Clusters, vector
from engine.config import EngineConfig
from engine.features import Profile
from engine.learning_store import LearningStore
from engine.models import learned_policies, model_name
from engine.policies import Policy, make_policy
from engine.recommend.signal import COVISIT_MODEL, CollaborativeSignal
from engine.snapshots import SnapshotError, load_model
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadedModel:
    policy: Policy
    version: int  # 0 = not yet learned: the policy's cold-start behaviour


class ModelRegistry:
    def __init__(self, config: EngineConfig, store: LearningStore, key: bytes, metrics: ServingMetrics) -> None:
        self.store, self.key, self.metrics = store, key, metrics
        self.models: dict[str, LoadedModel] = {}
        #: the published version last refused per model: not fetched (nor counted) again until it changes
        self.rejected: dict[str, int] = {}
        for placement in config.placements.values():
            for policy in learned_policies(config, placement.id):
                params = placement.learning.params if policy == placement.learning.policy else {}
                self.models[model_name(placement.id, policy)] = LoadedModel(make_policy(policy, **params), 0)
        if config.collaborative.enabled:
            signal = CollaborativeSignal(**config.collaborative.params)
            self.models[COVISIT_MODEL] = LoadedModel(signal, 0)  # type: ignore[arg-type]  # a model, not a Policy
        cs = config.clusters
        self.cluster_feature = cs.feature
        if cs.enabled:  # behavioural clusters (engine/clusters.py), published by the learner
            self.models[CLUSTERS_MODEL] = LoadedModel(Clusters(cs.k, cs.halflife, cs.min_distance), 0)  # type: ignore[arg-type]  # a model, not a Policy

    def get(self, placement: str, policy: str) -> LoadedModel:
        return self.models[model_name(placement, policy)]

    def covisit(self) -> CollaborativeSignal | None:
        loaded = self.models.get(COVISIT_MODEL)
        # COVISIT_MODEL's entry holds the CollaborativeSignal put there above
        return loaded.policy if loaded is not None and loaded.version > 0 else None  # type: ignore[return-value]

    def clusters(self) -> tuple[Clusters, int] | None:
        """The loaded clusters model and its version, once the learner published one."""
        loaded = self.models.get(CLUSTERS_MODEL)
        if loaded is None or loaded.version == 0:
            return None
        return loaded.policy, loaded.version  # type: ignore[return-value]  # CLUSTERS_MODEL holds Clusters

    def cluster_segment(self, profile: Profile, now: float) -> str | None:
        """``cluster:<k>``, the profile's behavioural cluster (None: clusters off or not learned yet)."""
        loaded = self.clusters()
        if loaded is None:
            return None
        k = loaded[0].assign(vector(profile, self.cluster_feature, now))
        return None if k is None else f"cluster:{k}"

    async def refresh(self) -> int:
        """Load every model whose published version is newer; returns how many were swapped in."""
        swapped = 0
        for name, current in list(self.models.items()):
            version = await self.store.model_version(name)
            if version is None or version <= current.version or self.rejected.get(name) == version:
                continue
            snapshot = await self.store.model_snapshot(name)
            if snapshot is None:
                continue
            published, blob = snapshot
            try:
                policy, loaded_version, seconds = await asyncio.to_thread(
                    _load_and_prepare, blob, self.key, name, current.policy.name, current.version, published)
            except SnapshotError as exc:
                self.rejected[name] = published
                self.metrics.model_rejected.inc(exc.reason)
                log.warning("model %s v%s rejected (%s), keeping v%s: %s",
                            name, published, exc.reason, current.version, exc)
                continue
            self.metrics.model_load.observe(seconds)
            self.models[name] = LoadedModel(policy, loaded_version)
            swapped += 1
        return swapped


def _load_and_prepare(blob: bytes, key: bytes, name: str, kind: str, loaded: int, published: int
                      ) -> tuple[Policy, int, float]:
    """Verify and rebuild a snapshot, and compute its request-independent products (off the event loop);
    returns the seconds it took too (``pulse_model_load_seconds``)."""
    started = time.perf_counter()
    policy, version = load_model(blob, key, name=name, kind=kind, newer_than=loaded, expect_version=published)
    prepare = getattr(policy, "prepare", None)
    if prepare is not None:
        prepare()
    return policy, version, time.perf_counter() - started
