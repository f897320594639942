"""``python -m engine.config PATH [--overlay PATH ...]``: validate a configuration file.

Exit 0 with a one-line summary, or 1 with every problem on stderr. ``--schema OUT`` writes the JSON
Schema of configuration files instead (``config/engine.schema.json``; ``make config-schema``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.config import ConfigError, EngineConfig, load_config
from engine.config.schema import json_schema


def summary(path: str, cfg: EngineConfig) -> str:
    """One line: what the file declares."""
    n_features = len(cfg.affinities) + len(cfg.recents) + len(cfg.windows)
    learning = sum(1 for p in cfg.placements.values() if p.learning.learns)
    return (f"{path}: ok: {n_features} features ({len(cfg.affinities)} affinity, {len(cfg.recents)} recent, "
            f"{len(cfg.windows)} window), {len(cfg.segments)} segments, {len(cfg.placements)} placements "
            f"({learning} learning), {len(cfg.actions)} actions")


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.config", description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", help="the engine configuration (TOML)")
    ap.add_argument("--overlay", action="append", default=[], help="a file merged on top (repeatable)")
    ap.add_argument("--schema", metavar="OUT", help="write the JSON Schema of configuration files ('-': stdout)")
    args = ap.parse_args(argv)
    if args.schema:
        text = schema_text()
        if args.schema == "-":
            sys.stdout.write(text)
        else:
            Path(args.schema).write_text(text)
        return 0
    if not args.path:
        ap.error("a configuration file is required")
    try:
        cfg = load_config(args.path, overlays=args.overlay)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(summary(args.path, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
