"""``make bench`` keeps working: the quick run of every benchmark, end to end on real local Kafka and Redis.

No figure is judged here (speed belongs to the benchmarks, not to tests); what is checked is that every
benchmark ran, wrote its result file with the fields the README's table is made of, and that the table has
a verdict for every target. Results go to a temporary directory (``BENCH_RESULTS_DIR``), never over the
committed figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _load(directory: Path, name: str) -> dict[str, Any]:
    path = directory / f"{name}.quick.json"
    assert path.exists(), f"{name} wrote no result"
    return orjson.loads(path.read_bytes())


def test_make_bench_quick_runs_every_benchmark_and_writes_its_results(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--no-profile"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"

    summary = _load(tmp_path, "summary")
    assert summary["failures"] == {}
    targets = summary["targets"]
    assert len(targets) >= 7 and all(t["status"] in ("PASS", "MISS") for t in targets), targets
    assert summary["machine"]["cores"] >= 1 and summary["git"]

    latency = _load(tmp_path, "latency")
    lowest = min(latency["rates"], key=float)
    for rate, pair in latency["rates"].items():
        for side in ("ours", "bare"):
            # the smoke run checks that every figure is produced, never how fast: that is the benchmark's job
            # (on a loaded machine the highest rates may complete nothing within the run)
            assert pair[side]["achieved_rate"] >= 0, (rate, side, pair[side]["achieved_rate"])
            if rate == lowest:
                assert pair[side]["achieved_rate"] > 0 and pair[side]["latency_ms"]["p99"] > 0, (rate, side)
    assert latency["saturation"]["ours"]["rate"] > 0 and latency["saturation"]["bare"]["rate"] > 0

    throughput = _load(tmp_path, "throughput")
    assert throughput["summary"]["events_per_s_one_worker"] > 0
    assert throughput["summary"]["bare_consumer_events_per_s"] > 0

    freshness = _load(tmp_path, "freshness")
    assert freshness["event_to_decision_ms"]["n"] > 0
    mixed = freshness["decide_under_ingest"]
    for run in ("under_ingest", "idle"):
        assert mixed[run]["achieved_rate"] > 0 and mixed[run]["errors"] == 0
    assert mixed["worker_applied_rate"] > 0

    memory = _load(tmp_path, "memory")
    assert memory["bytes_per_profile"]["median"] > 0

    # the printed table has a row for each of them
    for row in ("decide @  1000 req/s", "throughput, full decisions", "freshness event -> decision",
                "/s + ingest", "stream: events/s, 1 worker", "Redis bytes per profile"):
        assert row in proc.stdout, row
