"""Schemathesis against the API's own OpenAPI description, every check on: zero failures.

The served description (``serving/openapi_doc.py``) must state every status, media type, limit and constraint
truthfully: schema-valid requests are accepted, invalid ones refused with a 4xx, and no answer is undocumented.
Bounded: ``SCHEMATHESIS_MAX_EXAMPLES`` per operation (default 30), a fixed seed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import REPO_ROOT
from tests.support import ADMIN, TEST_KEYS, without_key

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "30"))


def test_the_api_keeps_every_promise_of_its_openapi_description(api: str, tmp_path: Path) -> None:
    base = without_key(api)
    argv = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{base}/openapi.json", "--checks", "all",
            "--header", f"Authorization: Bearer {TEST_KEYS[ADMIN]}", "--max-examples", str(MAX_EXAMPLES),
            "--seed", "16", "--workers", "1", "--request-timeout", "20", "--no-color",
            "--report", "junit", "--report-dir", str(tmp_path)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
           "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "160"}
    # cwd: schemathesis keeps its cache (.schemathesis/) there, outside the repository
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    summary = "\n".join(line for line in out.splitlines() if re.search(r"passed|failed|errored|Test cases|cases", line))
    print(summary)
    assert run.returncode == 0, out[-20000:]
