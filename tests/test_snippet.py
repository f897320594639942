"""The browser snippet as the API serves it: under 5 KB gzipped, cached and revalidated (the behaviour of the
script itself: sdk/js/test, ``make sdk-test``; in a browser: tests/integration/test_demo_shop.py)."""

from __future__ import annotations

import gzip

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving import snippet
from serving.snippet import SDK_DIR, SNIPPET


def test_the_snippet_is_under_5_kb_gzipped() -> None:
    source = (SDK_DIR / "pulse.js").read_bytes()
    assert SNIPPET.body == source
    assert gzip.decompress(SNIPPET.gzipped) == source
    assert len(SNIPPET.gzipped) < 5 * 1024, f"{len(SNIPPET.gzipped)} bytes gzipped"


def test_served_gzipped_with_an_etag_and_a_304_when_unchanged() -> None:
    app = FastAPI()
    app.include_router(snippet.router)
    client = TestClient(app)
    r = client.get("/sdk/pulse.js", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert int(r.headers["content-length"]) == len(SNIPPET.gzipped)
    assert r.headers["access-control-allow-origin"] == "*" and r.headers["vary"] == "Accept-Encoding"
    plain = client.get("/sdk/pulse.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == SNIPPET.body
    assert client.get("/sdk/pulse.js", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    assert client.get("/sdk/pulse.js", headers={"If-None-Match": '"other"'}).status_code == 200
    assert client.get("/sdk/pulse.d.ts").text.startswith("// Types of pulse.js")
