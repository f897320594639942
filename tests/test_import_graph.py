"""The packages depend on each other in one direction: schemas <- engine <- streams, serving <- infra, bench.

Read from the source with ``ast`` (every ``import``, also those inside functions), so a module that is
never imported by the tests is checked too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "engine", "streams", "serving", "infra", "bench", "pulse_cli")
#: package -> the packages of ours it may import (itself always)
ALLOWED: dict[str, frozenset[str]] = {
    "schemas": frozenset(),
    "engine": frozenset({"schemas"}),
    "streams": frozenset({"engine", "schemas"}),
    "serving": frozenset({"engine", "schemas"}),
    # the command line reads through the API and writes to Kafka like any producer: never the worker's code
    "pulse_cli": frozenset({"engine", "schemas", "serving"}),
    "infra": frozenset(PACKAGES),
    "bench": frozenset(PACKAGES),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports (relative imports resolved against ``module``).

    >>> sorted(imported_modules("import os\\nfrom engine.config import X\\nfrom . import y", "serving.app"))
    ['engine.config', 'os', 'serving', 'serving.y']
    """
    found: set[str] = set()
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level > len(package):  # beyond the top-level package: not an import of ours
                continue
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
                found.add(target)
                if not node.module:
                    found.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports, for every ``.py`` file of those packages."""
    packages = tuple(packages)
    graph: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(path, root)
            imported = imported_modules(path.read_text(), name, is_package=path.name == "__init__.py")
            graph[name] = {m for m in imported if m.split(".")[0] in packages}
    return graph


def violations(graph: Mapping[str, Iterable[str]],
               allowed: Mapping[str, frozenset[str]] = ALLOWED) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs that go against the allowed directions."""
    bad = []
    for module, imported in graph.items():
        source = module.split(".")[0]
        for target in sorted(imported):
            dest = target.split(".")[0]
            if dest != source and dest not in allowed[source]:
                bad.append((module, target))
    return bad


def test_the_tree_follows_the_allowed_directions() -> None:
    graph = import_graph()
    assert violations(graph) == []


def test_the_scan_sees_every_package_and_its_imports() -> None:
    graph = import_graph()
    for package in PACKAGES:
        assert any(m.split(".")[0] == package for m in graph), package
    # known edges, so an empty or broken scan cannot pass as "no violations"
    assert "engine.config" in graph["engine.layout"]
    assert "engine.models" in graph["serving.models"]
    assert any(t.startswith("streams") for t in graph["bench.learning_speed"])  # imports inside functions


@pytest.mark.parametrize(("importer", "imported"), [
    ("serving.models", "streams.learner"),
    ("streams.app", "serving.app"),
    ("engine.layout", "streams.pipeline"),
    ("engine.config", "serving"),
    ("engine.models", "infra.local"),
    ("schemas.events", "engine.config"),
    ("streams.rewards", "bench.common"),
])
def test_a_forbidden_import_is_reported(importer: str, imported: str) -> None:
    graph = {"engine.config": {"schemas.events"}, "serving.app": {"engine.config"}, importer: {imported}}
    assert violations(graph) == [(importer, imported)]


def test_allowed_imports_are_not_reported() -> None:
    graph = {"schemas.events": {"schemas._validation"}, "engine.layout": {"engine.config", "schemas.events"},
             "streams.app": {"engine.layout", "schemas"}, "serving.app": {"engine.models", "serving.services"},
             "infra.demo": {"serving.app", "streams.app"}, "bench.run": {"infra.local", "streams", "serving"}}
    assert violations(graph) == []


def test_a_violation_in_source_files_is_found(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "serving" / "models.py").write_text("def f():\n    from streams.learner import model_name\n")
    (tmp_path / "engine" / "sub").mkdir()
    (tmp_path / "engine" / "sub" / "__init__.py").write_text("from .. import layout\n")
    (tmp_path / "engine" / "layout.py").write_text("import schemas.events\n")
    (tmp_path / "streams" / "app.py").write_text("from ..serving import app\n")  # resolves outside: ignored
    graph = import_graph(tmp_path)
    assert graph["engine.sub"] == {"engine", "engine.layout"}
    assert violations(graph) == [("serving.models", "streams.learner")]
