"""``GET /sdk/pulse.js``: the browser snippet (``sdk/js/pulse.js``, plain JavaScript served as written) and
its types (``/sdk/pulse.d.ts``), at stable paths that sites embed: cached for 5 minutes (a fix reaches every
page within that), revalidated by ``ETag``, gzipped when accepted. Open to anyone, like any script a page
loads; the key a page embeds is its public key, checked where it is used (``serving.auth``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.settings import REPO_ROOT
from serving.static_files import StaticFile

router = APIRouter()
SDK_DIR = REPO_ROOT / "sdk" / "js"
#: How long a browser or CDN keeps the snippet before asking again (seconds).
MAX_AGE_S = 300
SNIPPET = StaticFile.read(SDK_DIR / "pulse.js", "text/javascript; charset=utf-8", MAX_AGE_S)
TYPES = StaticFile.read(SDK_DIR / "pulse.d.ts", "text/plain; charset=utf-8", MAX_AGE_S)
#: pages of any site load it (with or without crossorigin="anonymous" and integrity=...)
EMBEDDABLE = {"access-control-allow-origin": "*", "cross-origin-resource-policy": "cross-origin"}


@router.get("/sdk/pulse.js", summary="The browser snippet", response_class=Response)
async def snippet(request: Request) -> Response:
    return SNIPPET.response(request, EMBEDDABLE)


@router.get("/sdk/pulse.d.ts", summary="The snippet's TypeScript types", response_class=Response)
async def snippet_types(request: Request) -> Response:
    return TYPES.response(request, EMBEDDABLE)
