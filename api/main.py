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
from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.errors import install_error_handlers
from api.routes import files, health, jobs, presets
from core.celery_app import configure_celery
from core.db import NotMigratedError, check_migrated, make_engine
from core.settings import Settings, get_settings

log = logging.getLogger("papertrain.api")
WEB_DIR = Path(__file__).resolve().parents[1] / "web"


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
        docs_url=None,  # served below from the bundled Swagger UI assets: no CDN needed
    )
    app.state.settings = settings
    app.state.engine = engine
    install_error_handlers(app)
    for module in (jobs, files, presets, health):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="papertrain API",
            swagger_js_url="/swagger/swagger-ui-bundle.js",
            swagger_css_url="/swagger/swagger-ui.css",
            swagger_favicon_url="/swagger/favicon-32x32.png",
        )

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.mount("/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
    return app
