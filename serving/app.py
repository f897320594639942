"""The FastAPI application. ``uvicorn serving.app:app`` serves it with settings from the environment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engine.runtime import freeze_startup_heap
from engine.settings import Settings, load_settings
from serving import collector, decide, experiments, health, profiles
from serving.services import Services


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

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
    )
    for module in (decide, collector, profiles, experiments, health):
        app.include_router(module.router)
    return app


#: What uvicorn serves: ``POST /v1/decide`` is answered in front of FastAPI (no middleware stack, routing,
#: ``Request``/``Response`` objects per call); everything else, and the lifespan, is the FastAPI app.
app = decide.DecideFastPath(create_app())
