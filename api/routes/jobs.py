"""`/v1/jobs`: submit, list, read, cancel, retry; a job's events, metrics and checkpoints."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.exc import IntegrityError
from starlette.background import BackgroundTask

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import ApiError, ErrorBody
from api.schemas import CheckpointList, DryRun, EventPage, JobDetail, JobList, JobSummary, MetricsOut
from api.services import idempotency
from api.services import jobs as service
from api.services.stream import event_stream
from core.models import Job
from core.settings import Settings

# Query integers stay within a signed 64-bit column: larger ones are a 422, not a database error.
MAX_QUERY_INT = 2**63 - 1

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

SPEC_EXAMPLES = {
    "full spec": {
        "value": {
            "algorithm": "sft",
            "model": "tiny:llama",
            "dataset": {"builtin": "chat", "num_rows": 64},
            "config": {"max_steps": 10, "learning_rate": 1e-4},
        }
    },
    "preset + overrides": {
        "value": {
            "preset": "gspo",
            "model": "bundled:smollm2-135m-instruct",
            "dataset": {"builtin": "arithmetic"},
            "config": {"max_steps": 20, "num_generations": 4},
        }
    },
}


def _detail(job: Job, settings: Settings) -> JobDetail:
    """A job as the API shows it, with its MLflow UI link when the deployment has one."""
    detail = JobDetail.model_validate(job)
    return detail.model_copy(update={"mlflow_run_url": settings.mlflow_run_url(job.mlflow_run_id)})


@router.post(
    "",
    status_code=201,
    response_model=JobDetail,
    operation_id="create_job",
    responses={409: {"model": ErrorBody}},
)
def create_job(
    session: SessionDep,
    user: PrincipalDep,
    settings: SettingsDep,
    body: Annotated[dict[str, Any], Body(openapi_examples=SPEC_EXAMPLES)],
    idempotency_key: idempotency.KeyHeader = None,
) -> Any:
    """Submit a job: a full spec, or `{"preset": id, ...}` whose `config` overrides the preset's.

    With an `Idempotency-Key`, sending the same body again returns the job the first request created;
    the same key with another body is a 409."""
    key = idempotency.check_key(idempotency_key)
    if key is None:
        return _detail(service.submit_job(session, user, body, settings), settings)
    digest = idempotency.json_digest(body)
    for _ in range(2):
        replay = idempotency.find(session, user, "jobs", key, digest)
        if replay is not None:
            return _detail(service.get_job(session, user, replay), settings)
        try:
            return _detail(service.submit_job(session, user, body, settings, idempotency_key=key), settings)
        except IntegrityError:  # a concurrent request with the same key won: replay its job
            session.rollback()
    raise ApiError(
        409, "idempotency_conflict", "the key is in use by a concurrent request", param="Idempotency-Key"
    )


@router.post(":validate", response_model=DryRun, operation_id="validate_job")
def validate_job(
    session: SessionDep,
    user: PrincipalDep,
    settings: SettingsDep,
    body: Annotated[dict[str, Any], Body(openapi_examples=SPEC_EXAMPLES)],
) -> Any:
    """Dry run: the resolved spec, the preset diff, warnings and a size estimate; no job is created."""
    return service.dry_run(session, user, body, settings)


@router.get("", response_model=JobList, operation_id="list_jobs")
def list_jobs(
    session: SessionDep,
    user: PrincipalDep,
    status: Annotated[str | None, Query(description="filter: one status or a comma-separated list")] = None,
    algorithm: Annotated[
        str | None, Query(description="filter: one algorithm or a comma-separated list")
    ] = None,
    preset: Annotated[str | None, Query(description="filter: jobs started from this preset id")] = None,
    q: Annotated[
        str | None, Query(max_length=200, description="filter: text contained in the job's name or id")
    ] = None,
    sort: Annotated[
        str,
        Query(
            description=f"column to order by, '-' prefix for descending: one of {sorted(service.SORT_COLUMNS)}"
        ),
    ] = service.DEFAULT_SORT,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page (default sort only)")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_QUERY_INT)] = 0,
) -> Any:
    """Your jobs, newest first unless `sort` says otherwise; `total` counts every match."""
    jobs, next_cursor, total = service.list_jobs(
        session,
        user,
        statuses=service.parse_statuses(status),
        limit=limit,
        cursor=cursor,
        offset=offset,
        algorithm=algorithm,
        preset=preset,
        search=q,
        sort=sort,
    )
    return JobList(jobs=[JobSummary.model_validate(j) for j in jobs], next_cursor=next_cursor, total=total)


@router.get("/{job_id}", response_model=JobDetail, operation_id="get_job")
def get_job(session: SessionDep, user: PrincipalDep, settings: SettingsDep, job_id: str) -> Any:
    return _detail(service.get_job(session, user, job_id), settings)


@router.post(
    "/{job_id}/cancel",
    response_model=JobDetail,
    operation_id="cancel_job",
    responses={409: {"model": ErrorBody}},
)
def cancel_job(session: SessionDep, user: PrincipalDep, settings: SettingsDep, job_id: str) -> Any:
    """A queued job is cancelled at once; a running one becomes `cancelling` until its worker stops it."""
    return _detail(service.cancel_job(session, user, job_id), settings)


@router.post(
    "/{job_id}/retry",
    response_model=JobDetail,
    operation_id="retry_job",
    responses={409: {"model": ErrorBody}},
)
def retry_job(session: SessionDep, user: PrincipalDep, settings: SettingsDep, job_id: str) -> Any:
    """Queue a failed or cancelled job again, as a new attempt."""
    return _detail(service.retry_job(session, user, job_id), settings)


@router.get("/{job_id}/events", response_model=EventPage, operation_id="list_job_events")
def list_job_events(
    session: SessionDep,
    user: PrincipalDep,
    job_id: str,
    after: Annotated[
        int,
        Query(ge=0, le=MAX_QUERY_INT, description="return events with id > after (the last next_cursor)"),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    kind: Annotated[str | None, Query(description="filter: comma-separated event kinds")] = None,
) -> Any:
    kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else None
    events, has_more = service.list_events(session, user, job_id, after=after, limit=limit, kinds=kinds)
    return EventPage(
        events=events,  # ORM rows, read through from_attributes
        next_cursor=events[-1].id if events else after,
        has_more=has_more,
    )


@router.get(
    "/{job_id}/events/stream",
    operation_id="stream_job_events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "server-sent events: `id:` the event id, `event:` its kind, `data:` the event as "
            "in GET /v1/jobs/{job_id}/events; `: heartbeat` comments while idle; ends at a terminal status",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
def stream_job_events(
    request: Request,
    session: SessionDep,
    user: PrincipalDep,
    job_id: str,
    after: Annotated[int, Query(ge=0, description="start after this event id (Last-Event-ID wins)")] = 0,
    heartbeat_s: Annotated[float, Query(ge=0.5, le=300, description="seconds between heartbeats")] = 15.0,
    last_event_id: Annotated[
        str | None, Header(description="resume after this event id (sent by reconnecting clients)")
    ] = None,
) -> StreamingResponse:
    """Live events: everything after the cursor, then each new event as it is written."""
    service.get_job(session, user, job_id)
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise ApiError(
                422, "invalid_request", "Last-Event-ID must be an event id (digits)", param="Last-Event-ID"
            )
        after = int(last_event_id)
    stream = event_stream(request.app.state.engine, job_id, after, heartbeat_s, request.is_disconnected)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.get("/{job_id}/metrics", response_model=MetricsOut, operation_id="get_job_metrics")
def get_job_metrics(session: SessionDep, user: PrincipalDep, job_id: str) -> Any:
    """Every metric's history: `{"metrics": {"train/loss": [{"step": 1, "value": 2.3}, ...]}}`."""
    return {"metrics": service.metrics_history(session, user, job_id)}


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, operation_id="list_job_checkpoints")
def list_job_checkpoints(session: SessionDep, user: PrincipalDep, job_id: str) -> Any:
    points, last = service.list_checkpoints(session, user, job_id)
    return {"checkpoints": points, "last_checkpoint": last}


@router.get(
    "/{job_id}/checkpoints/{step}/download",
    operation_id="download_job_checkpoint",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "the checkpoint folder as a zip"}},
)
def download_job_checkpoint(session: SessionDep, user: PrincipalDep, job_id: str, step: int) -> Any:
    """The checkpoint saved at `step`, as a zip of its folder (weights, tokenizer, trainer state)."""
    return _zip_response(service.checkpoint_dir(session, user, job_id, step), f"{job_id}-step-{step}")


@router.get(
    "/{job_id}/model/download",
    operation_id="download_job_model",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "the final model folder as a zip"}},
)
def download_job_model(session: SessionDep, user: PrincipalDep, job_id: str) -> Any:
    """The final model of a succeeded job as a zip of its folder (the weights, or the LoRA adapter, with the
    config and tokenizer), in Hugging Face format for `from_pretrained`."""
    return _zip_response(service.final_model_dir(session, user, job_id), f"{job_id}-final")


def _zip_response(folder: Path, name: str) -> FileResponse:
    tmp = Path(tempfile.mkdtemp(prefix="papertrain-zip-"))
    archive = shutil.make_archive(str(tmp / name), "zip", root_dir=folder)
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=Path(archive).name,
        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
    )
