"""``/dashboard``: the operator's live view, static files served by the API (``serving/dashboard_ui/``).

The page and its script are public: they hold no data. The script asks for an admin key once per browser tab,
keeps it in ``sessionStorage`` and sends it as ``Authorization: Bearer`` to ``GET /v1/reports/summary``, an admin
route like every source of its numbers (docs/dashboard.md). The files are read once, at import; the Content
Security Policy allows only this origin's script, style and ``fetch`` (no inline script, nothing from elsewhere).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter()
_FILES = {name: resources.files("serving").joinpath(f"dashboard_ui/{name}").read_bytes()
          for name in ("index.html", "dashboard.js", "dashboard.css")}
_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    return Response(_FILES[name], media_type=_TYPES[name.rsplit(".", 1)[1]], headers=_HEADERS)


@router.get("/dashboard", include_in_schema=False)
@router.get("/dashboard/", include_in_schema=False)
async def dashboard() -> Response:
    return _file("index.html")


@router.get("/dashboard/dashboard.js", include_in_schema=False)
async def dashboard_js() -> Response:
    return _file("dashboard.js")


@router.get("/dashboard/dashboard.css", include_in_schema=False)
async def dashboard_css() -> Response:
    return _file("dashboard.css")
