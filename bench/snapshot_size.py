"""Model snapshots: bytes, time to dump and time to load, for the co-visitation model and linear_thompson.

* **co-visitation**: ``CollaborativeSignal`` with ``config/engine.toml``'s parameters (``top_k`` 200, history 20),
  learned from ``--visitors`` visitors (default 26,000) with 2-30 interactions each over ``--items`` items of
  Pareto popularity; both snapshots the learner publishes: ``blob`` (serving: no visitor histories) and
  ``state`` (the learner's own, with them).
* **linear_thompson**: the placement model of ``bench.learning_speed`` (40 actions, ~30 context features,
  d=64, k=32) after ``--examples`` learning examples.

Each figure is the median of ``--repeats`` runs in this process (load = verify + decode + rebuild the model).

``python -m bench.snapshot_size [--quick]`` writes ``bench/results/snapshot_size.json``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from bench.common import log, write_result

KEY = b"snapshot-size-bench-signing-key!"


def _median(xs: list[float]) -> float:
    v = sorted(xs)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def covisit_signal(visitors: int, items: int, seed: int = 3) -> Any:
    from engine.config import load_config
    from engine.recommend.signal import CollaborativeSignal
    from engine.settings import REPO_ROOT

    params = load_config(REPO_ROOT / "config" / "engine.toml").collaborative.params
    rng = random.Random(seed)
    signal = CollaborativeSignal(**params)
    rows: list[list[Any]] = []
    t = 1_700_000_000.0
    for v in range(visitors):
        for _ in range(rng.randint(2, 30)):
            t += 0.1
            rows.append([f"visitor-{v:06d}", f"sku-{int(rng.paretovariate(1.05)) % items}", 1.0, t])
    for i in range(0, len(rows), 2000):  # the stream's batches
        signal.learn_many(rows[i:i + 2000])
    return signal


def linear_thompson(examples: int) -> Any:
    from bench.learning_speed import trained_policy, write_config
    from engine.config import load_config

    return trained_policy(load_config(write_config()), examples)


def measure(model: Any, name: str, repeats: int, dump: Callable[..., bytes], load: Callable[..., Any]
            ) -> dict[str, Any]:
    dumps, loads = [], []
    blob = b""
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = dump(model, 1, KEY, name=name)
        dumps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        load(blob, KEY, name=name)
        loads.append(time.perf_counter() - t0)
    return {"bytes": len(blob), "dump_ms": 1000 * _median(dumps), "load_ms": 1000 * _median(loads),
            "load_ms_all": [round(1000 * x, 2) for x in loads]}


def main(argv: list[str] | None = None) -> int:
    from engine.recommend.signal import COVISIT_MODEL, COVISIT_STATE
    from engine.snapshots import dump_model, load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--visitors", type=int, default=26_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--examples", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="2,000 visitors, 2,000 examples, 3 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.visitors, args.examples, args.repeats = 2_000, 2_000, 3
    signal = covisit_signal(args.visitors, args.items)
    policy = linear_thompson(args.examples)
    out = {
        "visitors": args.visitors, "items_seen": len(signal.model), "interactions": signal.n_updates,
        "examples": args.examples, "repeats": args.repeats,
        "covisit_blob": measure(signal.for_serving(), COVISIT_MODEL, args.repeats, dump_model, load_model),
        "covisit_state": measure(signal, COVISIT_STATE, args.repeats, dump_model, load_model),
        "linear_thompson": measure(policy, "ls_linear_thompson/linear_thompson", args.repeats, dump_model, load_model),
    }
    for k in ("covisit_blob", "covisit_state", "linear_thompson"):
        r = out[k]
        log(f"{k:<16} {r['bytes'] / 1024:>9,.1f} KiB  dump {r['dump_ms']:>7.1f} ms  load {r['load_ms']:>7.1f} ms")
    write_result("snapshot_size", out, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
