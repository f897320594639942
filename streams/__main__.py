"""``python -m streams worker -l info`` starts a worker (same as ``faust -A streams.app worker``)."""

from streams.app import app

if __name__ == "__main__":
    app.main()
