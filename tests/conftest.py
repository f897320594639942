"""The test process itself runs in development mode, as the processes it starts do (``infra.processes``):
importing ``serving.app`` builds the app, which outside development refuses to start without API keys."""

import os

os.environ.setdefault("PULSE_ENV", "dev")
