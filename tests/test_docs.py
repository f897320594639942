"""The documentation names only what exists, and measurement history stays out of the code.

* Every repository path the README, CONTRIBUTING, infra/README and docs/*.md mention (a backticked
  ``engine/x.py``, ``schemas/json/*.schema.json``, or a relative Markdown link) exists, so a file that is
  moved or deleted fails here instead of leaving a stale reference.
* Figures of earlier measurements ("126 -> 75 us", "15.1-15.6 us/event") belong in
  docs/performance-history.md; the code keeps a line of why.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "infra" / "README.md",
               *(ROOT / "docs").glob("*.md")])
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} | {".ci", ".pre-commit-config.yaml"}
EXTENSIONS = (".py", ".md", ".toml", ".sh", ".json", ".yml", ".yaml", ".lua", ".conf", ".properties", ".xml",
              ".txt", ".csv", ".example", ".dockerignore")

#: paths the documents name that exist only where someone made them (git-ignored)
MADE_ON_SITE = {"infra/.env"}  # the operator's copy of infra/.env.example, holding the secrets

_BACKTICKED = re.compile(r"`([^`\s]+)`")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
_PATHLIKE = re.compile(r"[A-Za-z0-9_.\-/*{}]+")


def mentioned_paths(text: str) -> set[str]:
    """Repository paths in backticks or relative links (globs kept; line suffixes ``:12`` dropped)."""
    found = set()
    for token in _BACKTICKED.findall(text):
        token = re.sub(r":[\w\-]*$", "", token)  # engine/x.py:func, path:line
        if (not _PATHLIKE.fullmatch(token) or token.startswith(("/", "-", "*.")) or "{" in token
                or "/.cache" in token):  # .cache: made at run time, git-ignored
            continue
        first = token.split("/", 1)[0]
        if ("/" in token and first in TOP) or (("/" in token or token in TOP) and token.endswith(EXTENSIONS)):
            found.add(token.rstrip("/"))
    for link in _LINK.findall(text):
        if "://" not in link and not link.startswith("mailto:"):
            found.add(link)
    return found


def exists(path: str, doc: Path) -> bool:
    for base in (ROOT, doc.parent):
        if any(ch in path for ch in "*?["):
            if list(base.glob(path)):
                return True
        elif (base / path).exists():
            return True
    return False


def test_the_extraction_finds_paths_and_skips_the_rest() -> None:
    text = ("`engine/layout.py` `schemas/json/*.schema.json` [q](docs/quality.md#x) `POST /v1/decide` "
            "`python -m engine.config` `p:{cid}` `engine/x.py:func` `/v1/profiles/{id}` [w](https://a.b/c)")
    assert mentioned_paths(text) == {"engine/layout.py", "schemas/json/*.schema.json", "docs/quality.md",
                                     "engine/x.py"}
    assert not exists("engine/x.py", ROOT / "README.md")  # a missing file is caught


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_document_mentions_exists(doc: Path) -> None:
    missing = sorted(p for p in mentioned_paths(doc.read_text()) - MADE_ON_SITE if not exists(p, doc))
    assert not missing, f"{doc.relative_to(ROOT)} mentions paths that do not exist: {missing}"


def test_architecture_notes_cite_nothing_outside_the_repository() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert not re.findall(r"https?://|\]\((?:\.\./){1,}\.\.|/home/|/work/|~/", text)


# "126 -> 75 us", "1.6-1.8% of a core", "15.1-15.6 us/event": the shapes of a measurement's history
_HISTORY = re.compile(
    r"\d[\d,.]* ?(?:us|ms|MiB|KB|%|events/s|req/s|rewards/s)? ?-> ?\d[\d,.]* ?(?:us|ms|MiB|KB|%|events/s|req/s)"
    r"|\d[\d,.]*-\d[\d,.]* ?(?:(?:us|ms|MiB|events/s|req/s|rewards/s)\b|%)")


def test_the_history_pattern_catches_figures() -> None:
    assert _HISTORY.search("a 2-command pipeline 126 -> 75 us of client CPU")
    assert _HISTORY.search("kept an idle learner at 1.6-1.8% of a core")
    assert not _HISTORY.search("a timer (flush_interval, 20 ms: one produce request per 20 ms)")


@pytest.mark.parametrize("package", ["engine", "streams", "serving", "schemas", "infra"])
def test_measurement_history_lives_in_the_docs_not_the_code(package: str) -> None:
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in sorted((ROOT / package).rglob("*")) if path.suffix in (".py", ".sh", ".lua")
            for n, line in enumerate(path.read_text().splitlines(), 1) if _HISTORY.search(line)]
    assert not hits, "move these figures to docs/performance-history.md:\n" + "\n".join(hits)
