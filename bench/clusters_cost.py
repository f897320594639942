"""What the behavioural clusters cost: the learner per profile vector, serving per decision, side by side with
the learner's other work per event.

``python -m bench.clusters_cost [--profiles 20000] [--k 6]``

In process, no Kafka or Redis: profiles with the benchmark traffic's shape (one or two favourite categories of
12, activity and purchases drawn per visitor), turned into vectors (``engine.clusters.vector``, what the ingest
worker does per changed profile) and learned by the learner (``PlacementLearner.learn`` on ``profiles``
messages of 256 rows, as the ingest sends them); then a co-visitation batch of the same number of interactions
through the same learner, for scale; and the assignment serving does per decision (``Clusters.assign``).
Medians of 5 passes, microseconds per profile / interaction / decision.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any


def profiles(n: int, seed: int = 3) -> list[Any]:
    from bench.traffic import CATEGORIES
    from engine.features import Profile

    rng = random.Random(seed)
    out = []
    now = time.time()
    for i in range(n):
        fav = rng.sample(CATEGORIES, rng.choice((1, 2, 2, 3)))
        views = rng.randint(1, 80)
        buys = rng.choice((0, 0, 0, 1, 2))
        out.append(Profile(f"c-{i}", True, {"page_view": views, "click": rng.randint(0, views // 3),
                                            "purchase": buys}, now - 86400 * 30, now - rng.random() * 86400 * 14,
                           {}, {"category": {c: rng.random() * 10 for c in fav}}, {}, {},
                           buys * rng.uniform(10, 300), {}, {}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", type=int, default=20000)
    ap.add_argument("--k", type=int, default=6)
    args = ap.parse_args()
    from engine.clusters import vector
    from engine.config import parse_config
    from engine.learning_messages import INTERACTIONS, PROFILES
    from streams.learner import PlacementLearner

    now = time.time()
    people = profiles(args.profiles)
    t = time.perf_counter()
    vectors = [vector(p, "category", now) for p in people]
    vector_us = 1e6 * (time.perf_counter() - t) / len(people)
    rows = [[v, p.monetary] for v, p in zip(vectors, people, strict=True)]
    messages = [{"kind": PROFILES, "rows": rows[i:i + 256]} for i in range(0, len(rows), 256)]
    rng = random.Random(1)
    interactions = [{"kind": INTERACTIONS, "rows": [[f"v-{rng.randrange(2000)}", f"sku-{rng.randrange(600)}", 1.0,
                                                     now + j] for j in range(i, min(i + 256, len(rows)))]}
                    for i in range(0, len(rows), 256)]
    config = parse_config({"feature": [{"name": "category", "kind": "affinity", "field": "category",
                                        "weights": {"page_view": 1.0}}],
                           "clusters": {"enabled": True, "k": args.k}})
    timings: dict[str, list[float]] = {"learn profile vector": [], "learn co-visitation interaction": [],
                                       "assign (serving, per decision)": []}
    learner = None
    for _ in range(5):
        learner = PlacementLearner(config)
        t = time.perf_counter()
        for m in messages:
            learner.learn(m)
        timings["learn profile vector"].append(1e6 * (time.perf_counter() - t) / len(rows))
        t = time.perf_counter()
        for m in interactions:
            learner.learn(m)
        timings["learn co-visitation interaction"].append(1e6 * (time.perf_counter() - t) / len(rows))
        assert learner.clusters is not None
        t = time.perf_counter()
        for v in vectors[:5000]:
            learner.clusters.assign(v)
        timings["assign (serving, per decision)"].append(1e6 * (time.perf_counter() - t) / 5000)
    print(f"{len(rows)} profiles, k = {args.k}; vector from a decoded profile: {vector_us:.1f} us")
    for name, values in timings.items():
        print(f"  {name:34} {statistics.median(values):7.1f} us (median of 5)")
    assert learner is not None and learner.clusters is not None
    for c in learner.clusters.describe(3):
        print(f"  cluster {c['cluster']}: share {c['share']:.2f}, mean value {c['mean_value']:.1f}, "
              f"top {[v for v, _ in c['top_values']]}")


if __name__ == "__main__":
    main()
