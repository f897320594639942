"""``python -m streams worker -l info`` starts a worker (like ``faust -A streams.app worker``).

Faust's CLI turns its web server on regardless of ``web_enabled``; a worker here needs none (metrics
go through Redis to the API's /metrics), and two workers on one host would fight over port 6066, so
``--without-web`` is the default unless ``--with-web`` is asked for.
"""

import sys

from streams.app import app

if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"] and not any(a in ("--with-web", "--without-web") for a in sys.argv):
        sys.argv.append("--without-web")
    app.main()
