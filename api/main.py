"""The FastAPI application: `create_app(settings)` wires settings, the database, error handlers, the `/v1`
routes and the dashboard at `/`.

    uvicorn --factory api.main:create_app        # or: papertrain api / papertrain up

It refuses to start on a database that is not migrated (the message names `papertrain migrate`).
Importing this module must not import torch, transformers or mlflow (a test checks it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.openai_compat import create_openai_app
from api.openapi import install_openapi
from api.routes import admin, catalog, files, health, jobs, me, presets
from api.web import install_web
from core.celery_app import configure_celery
from core.db import NotMigratedError, check_migrated, make_engine
from core.settings import Settings, get_settings

log = logging.getLogger("papertrain.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_celery(settings)  # jobs go to this settings' broker, whatever the environment says
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            check_migrated(engine)
        except NotMigratedError as exc:
            log.error("refusing to start: %s", exc)
            engine.dispose()
            raise
        yield
        engine.dispose()

    app = FastAPI(
        title="papertrain",
        version="0.1.0",
        description="Submit a post-training job (or a paper preset), watch it train.",
        lifespan=lifespan,
        docs_url=None,  # api.web serves /docs from the npm-installed Swagger UI: no CDN needed
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    install_error_handlers(app)
    install_openapi(app)
    for module in (jobs, files, presets, catalog, me, health, admin):
        app.include_router(module.router)
    app.mount("/openai", create_openai_app(app))  # the OpenAI-compatible fine-tuning surface

    install_web(app)
    return app
