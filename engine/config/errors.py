"""The one exception of configuration loading: every problem of a file, each with its path.

>>> print(ConfigError([("placement[1].policy", "unknown policy 'lnucb'")], source="engine.toml"))
engine.toml: placement[1].policy: unknown policy 'lnucb'
>>> print(ConfigError([("a", "x"), ("b[0]", "y")], source="f.toml"))
f.toml: 2 problems
  a: x
  b[0]: y
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

#: (path in the document such as ``placement[1].policy`` or "" for the whole file, what is wrong)
Problem = tuple[str, str]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, the path of each problem and what was expected."""

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__(self._message())

    def with_source(self, source: str) -> ConfigError:
        """The same problems, reported against a file."""
        return ConfigError(self.problems, source if self.source is None else self.source)

    def _message(self) -> str:
        lines = [f"{path}: {what}" if path else what for path, what in self.problems]
        prefix = f"{self.source}: " if self.source else ""
        if len(lines) == 1:
            return prefix + lines[0]
        return f"{prefix}{len(lines)} problems\n" + "\n".join("  " + line for line in lines)


ConfigError.__module__ = "engine.config"  # reported as engine.config.ConfigError, where callers import it


def show(value: Any) -> str:
    """A value as it is written in TOML, shortened: what a message says the file contained.

    >>> show("ninety"), show(True), show(1.5), show([1]), show({"a": 1})
    ('"ninety"', 'true', '1.5', 'an array', 'a table')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)[:60]
