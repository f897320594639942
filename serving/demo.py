"""``/demo/``: a small shop that uses the snippet (``/sdk/pulse.js``), served by the API in development only.

Its hero slot (``home_hero``) and recommendations (``product_recs``) are filled from decide and change as the
visitor browses, and a panel shows why (each decision's explanation, ``"explain": true``). The page needs a
public key: ``/demo/config.json`` gives it ``DEMO_PUBLIC_KEY`` (or none when the API has no keys), with the
engine's consent mode, the products (``serving/static/demo/products.json``) and which product each action
shows (the catalogue's ``item_id``). Outside ``PULSE_ENV=dev`` every ``/demo/`` path answers 404: a production
API serves no demo page and hands no key to anyone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from engine.config import EngineConfig
from engine.production import is_dev
from engine.settings import Settings
from serving import auth
from serving.static_files import StaticFile

router = APIRouter()
STATIC = Path(__file__).resolve().parent / "static" / "demo"
#: the demo's files change with the code: browsers revalidate them (ETag) after a minute
MAX_AGE_S = 60
FILES = {
    "index.html": StaticFile.read(STATIC / "index.html", "text/html; charset=utf-8", MAX_AGE_S),
    "shop.js": StaticFile.read(STATIC / "shop.js", "text/javascript; charset=utf-8", MAX_AGE_S),
    "shop.css": StaticFile.read(STATIC / "shop.css", "text/css; charset=utf-8", MAX_AGE_S),
}
PRODUCTS: list[dict[str, Any]] = orjson.loads((STATIC / "products.json").read_bytes())
NOT_HERE = Response(orjson.dumps({"detail": "the demo shop is served in development only (PULSE_ENV=dev)"}),
                    status_code=404, media_type="application/json")


class DemoKeyError(ValueError):
    """DEMO_PUBLIC_KEY is not a public key of this API."""


def demo_config(settings: Settings, config: EngineConfig, ring: auth.KeyRing) -> dict[str, Any] | None:
    """What the demo page is given, or None outside development (then there is no demo).

    >>> from engine.config import load_config
    >>> from engine.settings import REPO_ROOT
    >>> config = load_config(REPO_ROOT / "config" / "engine.toml")
    >>> ring = auth.KeyRing(auth.parse_api_keys("public:pk-0123456789,server:sk-0123456789", 10))
    >>> dev = Settings(pulse_env="dev", demo_public_key="pk-0123456789")
    >>> c = demo_config(dev, config, ring)
    >>> c["key"], c["consent"], c["actions"]["rec-shoe-1"], len(c["products"]) >= 20
    ('pk-0123456789', 'opt_out', 'sku-shoe-1', True)
    >>> demo_config(Settings(pulse_env="prod", demo_public_key="pk-0123456789"), config, ring) is None
    True
    >>> demo_config(Settings(pulse_env="dev", demo_public_key="sk-0123456789"), config, ring)
    Traceback (most recent call last):
        ...
    serving.demo.DemoKeyError: DEMO_PUBLIC_KEY is a server key; the demo page shows its key to anyone: ...
    """
    if not is_dev(settings):
        return None
    key = settings.demo_public_key
    if key and not ring.open:
        found = ring.lookup(b"Bearer " + key.encode())
        if found is None:
            raise DemoKeyError("DEMO_PUBLIC_KEY is not one of the API's keys (API_KEYS, API_KEYS_FILE)")
        if found.role != auth.PUBLIC:
            raise DemoKeyError(f"DEMO_PUBLIC_KEY is a {found.role} key; the demo page shows its key to anyone: "
                               f"give it a public key")
    return {"key": key, "consent": config.privacy.consent_mode, "products": PRODUCTS,
            "actions": {a.id: a.item_id for a in config.actions.values() if a.item_id}}


def install(app: FastAPI, settings: Settings, config: EngineConfig, ring: auth.KeyRing) -> None:
    """Serve the demo on ``app`` (in development; elsewhere its paths answer 404)."""
    app.state.demo = demo_config(settings, config, ring)
    app.include_router(router)


def _file(request: Request, name: str) -> Response:
    if request.app.state.demo is None:
        return NOT_HERE
    return FILES[name].response(request)


@router.get("/demo/", summary="The demo shop (development only)", response_class=Response)
async def demo_index(request: Request) -> Response:
    return _file(request, "index.html")


@router.get("/demo/shop.js", include_in_schema=False)
async def demo_script(request: Request) -> Response:
    return _file(request, "shop.js")


@router.get("/demo/shop.css", include_in_schema=False)
async def demo_style(request: Request) -> Response:
    return _file(request, "shop.css")


@router.get("/demo/config.json", summary="The demo page's key, consent mode and products (development only)")
async def demo_settings(request: Request) -> Response:
    demo = request.app.state.demo
    if demo is None:
        return NOT_HERE
    return Response(orjson.dumps(demo), media_type="application/json", headers={"cache-control": "no-store"})
