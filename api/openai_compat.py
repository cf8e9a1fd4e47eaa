"""OpenAI-compatible fine-tuning endpoints, mounted at `/openai` so that the official `openai` package works
with `base_url="http://HOST:8000/openai/v1"` and the papertrain token as its API key:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/openai/v1", api_key=TOKEN)
    f = client.files.create(file=open("chat.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny:llama", training_file=f.id,
                                         method={"type": "supervised", "supervised": {"hyperparameters": {"max_steps": 20}}})

Files (purpose fine-tune), fine-tuning jobs create / retrieve / list / cancel / list events / list
checkpoints. A separate application (own error format, own OpenAPI at /openai/openapi.json) over the same
services and database; errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import ApiError, describe_errors
from api.services import files as file_service
from api.services import jobs as job_service
from api.services import openai_jobs as service
from api.services.openai_jobs import OpenAIError


def _json(err: OpenAIError) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=err.body)


def create_openai_app(parent: FastAPI) -> FastAPI:
    app = FastAPI(
        title="papertrain (OpenAI-compatible fine-tuning)",
        version=parent.version,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = parent.state.settings
    app.state.engine = parent.state.engine

    @app.exception_handler(OpenAIError)
    async def _openai(_r: Request, exc: OpenAIError) -> JSONResponse:
        return _json(exc)

    @app.exception_handler(ApiError)
    async def _api(_r: Request, exc: ApiError) -> JSONResponse:
        status = 400 if exc.status == 422 else exc.status
        return _json(OpenAIError(status, exc.info.message, param=exc.info.param, code=exc.info.code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        # loc starts with where the value came from ("body", "query"); described as the main API does
        first = (describe_errors(exc.errors(), strip=1) or [{"param": None, "message": "invalid request"}])[0]
        return _json(OpenAIError(400, first["message"], param=first["param"]))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json(OpenAIError(exc.status_code, str(exc.detail)))

    @app.post("/v1/files")
    def create_file(
        session: SessionDep,
        user: PrincipalDep,
        settings: SettingsDep,
        file: UploadFile,
        purpose: Annotated[str, Form()],
    ) -> Any:
        if purpose != "fine-tune":
            raise service.unsupported("purpose", f"{purpose!r} files are not stored; use 'fine-tune'")
        return service.file_object(
            file_service.store_upload(session, user, file.filename or "", file.file, settings)
        )

    @app.get("/v1/files")
    def list_files(session: SessionDep, user: PrincipalDep) -> Any:
        rows = file_service.list_files(session, user)
        return {"object": "list", "data": [service.file_object(r) for r in rows], "has_more": False}

    @app.get("/v1/files/{file_id}")
    def retrieve_file(session: SessionDep, user: PrincipalDep, file_id: str) -> Any:
        row = service.owned_file(session, user, file_id, "file_id")
        return service.file_object(row)

    @app.post("/v1/fine_tuning/jobs")
    def create_job(
        session: SessionDep,
        user: PrincipalDep,
        settings: SettingsDep,
        body: Annotated[dict[str, Any], Body()],
    ) -> Any:
        return service.job_object(service.create_job(session, user, body, settings))

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(
        session: SessionDep,
        user: PrincipalDep,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Any:
        jobs, more = service.list_jobs(session, user, after, limit)
        return {"object": "list", "data": [service.job_object(j) for j in jobs], "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(session: SessionDep, user: PrincipalDep, job_id: str) -> Any:
        return service.job_object(job_service.get_job(session, user, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(session: SessionDep, user: PrincipalDep, job_id: str) -> Any:
        return service.job_object(job_service.cancel_job(session, user, job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_events(
        session: SessionDep,
        user: PrincipalDep,
        job_id: str,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> Any:
        events, more = service.list_events(session, user, job_id, after, limit)
        return {"object": "list", "data": events, "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(
        session: SessionDep,
        user: PrincipalDep,
        job_id: str,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> Any:
        points = service.list_checkpoints(session, user, job_id)
        if after:
            ids = [p["id"] for p in points]
            points = points[ids.index(after) + 1 :] if after in ids else []
        page = points[:limit]
        return {
            "object": "list",
            "data": page,
            "has_more": len(points) > limit,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }

    return app
