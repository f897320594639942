"""What the API and the workers refuse to start with outside development (``PULSE_ENV`` other than ``dev``).

``PULSE_ENV=dev`` (what ``make demo``, the tests and the benchmarks set) allows the development defaults: the
built-in model signing key, no API keys (every endpoint open, with a loud warning). Anything else, including
an unset ``PULSE_ENV``, is production: a process with a development secret exits at start-up and says why.

>>> from engine.settings import Settings
>>> for problem in production_problems(Settings(pulse_env="prod", model_signing_key="dev-only-signing-key"),
...                                    api_keys=0):
...     print(problem.split(";")[0])
MODEL_SIGNING_KEY is the development default
no API keys: set API_KEYS or API_KEYS_FILE (docs/security.md)
>>> production_problems(Settings(pulse_env="prod", model_signing_key="x" * 32), api_keys=3)
[]
>>> production_problems(Settings(pulse_env="dev"), api_keys=0)
[]
"""

from __future__ import annotations

import sys

from engine.settings import Settings

DEV = "dev"
#: The default of ``MODEL_SIGNING_KEY`` in engine/settings.py, which development uses.
DEV_SIGNING_KEY = "dev-only-signing-key"
MIN_SIGNING_KEY_BYTES = 32


def is_dev(settings: Settings) -> bool:
    return settings.pulse_env == DEV


def production_problems(settings: Settings, api_keys: int | None = None) -> list[str]:
    """Why this configuration must not run outside development; ``api_keys``: the API's key count (``None``
    for a worker, which takes no API calls)."""
    if is_dev(settings):
        return []
    problems = []
    signing = settings.model_signing_key
    if signing == DEV_SIGNING_KEY:
        problems.append("MODEL_SIGNING_KEY is the development default; set a random secret of at least "
                        f"{MIN_SIGNING_KEY_BYTES} bytes (e.g. openssl rand -hex 32)")
    elif len(signing.encode()) < MIN_SIGNING_KEY_BYTES:
        problems.append(f"MODEL_SIGNING_KEY is {len(signing.encode())} bytes; at least {MIN_SIGNING_KEY_BYTES} "
                        "are required (e.g. openssl rand -hex 32)")
    if api_keys == 0:
        problems.append("no API keys: set API_KEYS or API_KEYS_FILE (docs/security.md)")
    return problems


#: Exit status of a process that refuses its configuration (sysexits.h EX_CONFIG).
EXIT_CONFIG = 78


def refuse_to_start(what: str, problems: list[str]) -> None:
    """Print why and exit with :data:`EXIT_CONFIG` when there are problems."""
    if not problems:
        return
    lines = "\n".join(f"  - {p}" for p in problems)
    print(f"pulse {what}: refusing to start (PULSE_ENV is not 'dev'):\n{lines}\n"
          "Set PULSE_ENV=dev only on a development machine.", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)
