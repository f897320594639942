"""The ``pulse`` command against the real services: ``replay`` publishes a file's events (the worker applies
them), ``profile`` and ``export`` read them back through the admin API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import ADMIN, TEST_KEYS, Stack, event, profile_of, wait_until, without_key

pytestmark = pytest.mark.integration


def pulse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it (``python -m pulse_cli`` is the console script's entry point)."""
    return subprocess.run([sys.executable, "-m", "pulse_cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "160", **(env or {})})


def test_replay_then_read_the_profile_and_the_export(stack: Stack, worker: object, api: str,
                                                     tmp_path: Path) -> None:
    visitor = f"anon-cli-{uuid.uuid4().hex[:6]}"
    now_ms = int(time.time() * 1000)
    segment: dict[str, Any] = {"type": "track", "event": "Product Added", "messageId": uuid.uuid4().hex,
                               "anonymousId": visitor, "timestamp": now_ms,
                               "properties": {"product_id": "sku-cli-1", "category": "hats"}}
    lines = [orjson.dumps(event("page_view", visitor, ts_ms=now_ms - 1000 + i, category="hats")) for i in range(5)]
    lines += [orjson.dumps(segment), b'{"type": "page_view"}']
    f = tmp_path / "events.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    run = pulse("replay", str(f), env={"KAFKA_BOOTSTRAP": stack.bootstrap, "EVENTS_TOPIC": stack.events_topic})
    assert run.returncode == 1, run.stderr  # one invalid event
    assert f"published 6 events to {stack.events_topic}" in run.stdout and "1 invalid" in run.stdout
    assert "line 7: anonymous_id or customer_id: at least one is required" in run.stderr, run.stderr
    assert "events/s" in run.stderr  # the progress bar's rate
    wait_until(lambda: profile_of(stack.redis_url, visitor, customer=False).counts.get("add_to_cart") == 1,
               timeout=60, what="the replayed events applied")

    keyed = {"PULSE_API_URL": without_key(api), "PULSE_ADMIN_KEY": TEST_KEYS[ADMIN]}
    shown = pulse("profile", visitor, env=keyed)
    assert shown.returncode == 0, shown.stderr
    profile = orjson.loads(shown.stdout)
    assert profile["counts"]["page_view"] == 5 and profile["cart"] == {"sku-cli-1": 1}
    out = tmp_path / "export.json"
    exported = pulse("export", visitor, "--out", str(out), env=keyed)
    assert exported.returncode == 0, exported.stderr
    doc = orjson.loads(out.read_bytes())
    assert visitor in orjson.dumps(doc).decode()
    missing = pulse("profile", f"anon-nobody-{uuid.uuid4().hex[:6]}", env=keyed)
    assert missing.returncode == 1 and "404" in missing.stderr and "no profile" in missing.stderr
    refused = pulse("profile", visitor, env={**keyed, "PULSE_ADMIN_KEY": TEST_KEYS["public"]})
    assert refused.returncode == 1 and "403" in refused.stderr
