"""The FastAPI application. ``uvicorn serving.app:app`` serves it with settings from the environment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from engine.config import load_config
from engine.production import is_dev, production_problems, refuse_to_start
from engine.runtime import freeze_startup_heap
from engine.settings import Settings, load_settings
from serving import (
    admin,
    auth,
    clusters,
    collector,
    dashboard,
    decide,
    demo,
    experiments,
    health,
    openapi_doc,
    profiles,
    reports,
    segment_api,
    snippet,
    summary,
)
from serving.services import Services


def load_keyring(settings: Settings) -> auth.KeyRing:
    """The API keys, or exit saying why (bad keys anywhere; no keys or dev secrets outside development)."""
    try:
        ring = auth.keyring_from(settings.api_keys, settings.api_keys_file, dev=is_dev(settings))
    except auth.KeyConfigError as exc:
        refuse_to_start("API", [str(exc)])
        raise
    refuse_to_start("API", production_problems(settings, api_keys=len(ring)))
    auth.warn_if_open(ring)
    return ring


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    keyring = load_keyring(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await Services.start(settings)
        freeze_startup_heap()  # per-request garbage no longer makes the collector re-scan the start-up heap
        try:
            yield
        finally:
            await app.state.services.stop()

    app = FastAPI(
        title="pulse: real-time personalisation",
        version="0.1.0",
        summary="Decisions that reflect what a visitor did a moment ago.",
        lifespan=lifespan,
        # served below behind the admin role instead
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.keyring = keyring
    app.add_exception_handler(auth.AuthError, auth.auth_error_response)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(admin.Refused, admin.refused_response)
    app.add_exception_handler(RequestValidationError, admin.invalid_query_response)
    for module in (decide, collector, profiles, experiments, health, reports, admin, summary, dashboard,
                   segment_api, clusters, snippet):
        app.include_router(module.router)
    try:  # the demo shop (development only) and the public key its page embeds
        demo.install(app, settings, load_config(settings.engine_config), keyring)
    except demo.DemoKeyError as exc:
        refuse_to_start("API", [str(exc)])
        raise

    build_openapi = app.openapi

    def openapi_with_keys() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = auth.document_security(build_openapi(), app.routes)
            openapi_doc.document(doc, load_config(settings.engine_config), settings.event_limits)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi_with_keys  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=[auth.require(auth.ADMIN)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[auth.require(auth.ADMIN)])
    async def docs(request: Request) -> HTMLResponse:
        # a browser asked for the key (Basic challenge) and sends it again for /openapi.json
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    return app


def allowed_methods(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """Every method some route serves on the request's path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()

    def visit(routes: Any) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # FastAPI's wrapper of an included router
            if inner is not None:
                visit(inner.routes)
            elif route.matches({**scope, "method": "GET"})[0] != Match.NONE:
                methods.update(getattr(route, "methods", None) or ())
    visit(app.router.routes)
    return sorted(methods)


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTP error (``{"detail": ...}``), with a 405's ``Allow`` listing every method."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, dict(request.scope)))
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


#: What uvicorn serves: ``POST /v1/decide`` is answered in front of FastAPI (no middleware stack, routing,
#: ``Request``/``Response`` objects per call); everything else, and the lifespan, is the FastAPI app.
app = decide.DecideFastPath(create_app())
