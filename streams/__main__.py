"""``python -m streams worker -l info`` starts a worker (like ``faust -A streams.app worker``) running every
role; ``python -m streams ingest ...`` runs only the write side and ``python -m streams learner ...`` only the
learning (``WORKER_ROLES``; see ``streams/app.py``). The other arguments are Faust's ``worker`` command's.

Faust's CLI turns its web server on regardless of ``web_enabled``; a worker here needs none (metrics
go through Redis to the API's /metrics), and two workers on one host would fight over port 6066, so
``--without-web`` is the default unless ``--with-web`` is asked for.

The event loop is uvloop when it is installed (``WORKER_LOOP=aio`` keeps asyncio's): the worker's loop
spends most of its time in socket reads and writes to Kafka and Redis, where uvloop is cheaper.
"""

import os
import sys
from pathlib import Path

import mode.loop

#: Commands that start a worker with some of its roles (``python -m streams worker`` runs all of them).
ROLE_COMMANDS = {"ingest": "ingest", "learner": "learn"}
if __name__ == "__main__" and sys.argv[1:2] and sys.argv[1] in ROLE_COMMANDS:
    os.environ["WORKER_ROLES"] = ROLE_COMMANDS[sys.argv[1]]  # read by engine.settings when streams.app loads
    sys.argv[1] = "worker"

if os.environ.get("WORKER_LOOP", "uvloop") == "uvloop":
    try:
        import uvloop  # noqa: F401 - only checks that it is installed

        mode.loop.use("uvloop")
    except ImportError:
        pass

from streams.app import app, settings  # noqa: E402 - the loop policy is chosen before Faust creates a loop

if __name__ == "__main__":
    # Faust creates only the last level of its data directory; a fresh clone has no .cache/ yet
    Path(settings.worker_data_dir).mkdir(parents=True, exist_ok=True)
    if sys.argv[1:2] == ["worker"] and not any(a in ("--with-web", "--without-web") for a in sys.argv):
        sys.argv.append("--without-web")
    app.main()
