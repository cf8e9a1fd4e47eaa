"""The one Celery task, `papertrain.run_job(job_id)`, and the job lifecycle around one engine run.

The task is thin and idempotent: it re-reads the job, leaves quietly unless the job is `queued`, claims
it (-> `running` under the row lock, with worker_id / started_at / attempt), runs the engine
(worker/runner.py) with an MLflow tracker (worker/tracking.py), and ends the job through the state
machine: `succeeded`, `failed` (error with code, message, log_tail), `cancelled`, or back to `queued`
when the worker itself is shutting down (the next worker resumes from the last checkpoint). A message delivered twice, or for a cancelled job, does nothing.

Attempts count runs: a job is created with attempt 0 and every claim adds one, so the first run is
attempt 1 and a job re-queued by the reaper, a user retry or a worker shutdown runs as attempt + 1.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from core.celery_app import JOIN_JOB_TASK, RUN_JOB_TASK
from core.db import get_engine
from core.models import Job, JobEvent, utcnow
from core.queue import Sender, enqueue_job
from core.settings import Settings
from core.states import InvalidTransition, JobStatus
from core.transitions import transition
from worker.nodes import call_other_nodes, execute_node, plan_nodes
from worker.runner import EngineRunner, RunResult
from worker.tracking import MlflowTracker, flatten_params

log = logging.getLogger(__name__)

# Set when the worker process is asked to stop (worker/main.py); a running engine is then stopped and
# its job re-queued instead of being left to the reaper.
SHUTDOWN = threading.Event()
TRACKING_TIMEOUT_S = 60.0
INTERRUPTED_TRACKING_TIMEOUT_S = 10.0  # a stopping worker has little time left before it is killed
DB_RETRY_COUNTDOWN_S, DB_RETRY_MAX = 15, 40  # ten minutes of database outage
_MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "interrupted": "KILLED"}


@lru_cache(maxsize=8)
def session_factory_for(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(database_url), expire_on_commit=False)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@shared_task(name=RUN_JOB_TASK, bind=True, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job(self: Any, job_id: str) -> str:
    """Celery entry point: the message carries the job id only."""
    if SHUTDOWN.is_set():  # fetched while this worker is stopping: hand the message back untouched
        raise Reject("worker is shutting down", requeue=True)
    settings = getattr(self.app, "papertrain_settings", None)
    if settings is None:
        from core.settings import get_settings

        settings = get_settings()
    try:
        return execute_job(settings, job_id, stop_event=SHUTDOWN)
    except DBAPIError as exc:  # no database, no claim: try this message again later rather than drop it
        log.warning("job %s: database unavailable (%s); retrying the message", job_id, exc)
        raise self.retry(exc=exc, countdown=DB_RETRY_COUNTDOWN_S, max_retries=DB_RETRY_MAX) from exc


@shared_task(name=JOIN_JOB_TASK, bind=True, ignore_result=True, acks_late=True)
def join_job(self: Any, job_id: str, attempt: int, node_rank: int, rendezvous: str, resume: bool) -> str:
    """Celery entry point of one more machine of a job over several (`worker.nodes`)."""
    if SHUTDOWN.is_set():
        raise Reject("worker is shutting down", requeue=True)
    settings = getattr(self.app, "papertrain_settings", None)
    if settings is None:
        from core.settings import get_settings

        settings = get_settings()
    return execute_node(
        settings,
        job_id,
        attempt,
        node_rank,
        rendezvous,
        resume,
        worker_id=default_worker_id(),
        session_factory=session_factory_for(settings.database_url),
        stop_event=SHUTDOWN,
    )


def execute_job(
    settings: Settings,
    job_id: str,
    *,
    worker_id: str | None = None,
    session_factory: Callable[[], Session] | None = None,
    stop_event: threading.Event | None = None,
    tracking: bool = True,
    tracking_timeout_s: float = TRACKING_TIMEOUT_S,
    sender: Sender | None = None,
) -> str:
    """Run one job end to end; returns what happened (`succeeded`, `failed`, ..., or `skipped`)."""
    worker_id = worker_id or default_worker_id()
    factory = session_factory or session_factory_for(settings.database_url)
    claimed = _claim(factory, settings, job_id, worker_id)
    if claimed is None:
        return "skipped"
    node = None
    if claimed["machines"] > 1:  # this worker is node 0; the others join through `papertrain.join_job`
        node = plan_nodes(settings, claimed["machines"])
        with factory() as session, session.begin():
            call_other_nodes(
                session, job_id, claimed["queue"], claimed["attempt"], node, claimed["resume"], worker_id
            )
    tracker = _make_tracker(settings, claimed) if tracking else None
    runner = EngineRunner(
        settings,
        job_id,
        worker_id=worker_id,
        session_factory=factory,
        tracker=tracker,
        stop_event=stop_event,
        node=node,
    )
    try:
        result = runner.run(claimed["spec_path"], claimed["out_dir"], resume=claimed["resume"])
    except Exception as exc:  # a bug here must not leave the job `running` until the reaper notices
        log.exception("job %s: the worker failed while supervising the engine", job_id)
        result = RunResult(
            "failed",
            error={
                "code": "worker_error",
                "message": f"the worker failed while running the job: {type(exc).__name__}: {exc}",
                "category": "platform",
                "log_tail": list(runner.tail),
            },
        )
    run_id = claimed["mlflow_run_id"]
    mlflow_status = _MLFLOW_STATUS.get(result.outcome, "FAILED")
    if tracker is None:
        _finish(factory, job_id, worker_id, result, run_id=run_id, warnings=[], sender=sender)
    elif result.outcome == "succeeded":
        # When a job says succeeded, its MLflow run (final model included) is complete.
        with runner.heartbeating():
            tracker.close(mlflow_status, timeout_s=tracking_timeout_s)
        run_id = tracker.run_id or run_id
        _finish(factory, job_id, worker_id, result, run_id=run_id, warnings=tracker.warnings, sender=sender)
    else:
        # A cancel or a failure shows at once; MLflow catches up afterwards.
        _finish(
            factory, job_id, worker_id, result, run_id=tracker.run_id or run_id, warnings=[], sender=sender
        )
        timeout_s = tracking_timeout_s
        if result.outcome == "interrupted":
            timeout_s = min(tracking_timeout_s, INTERRUPTED_TRACKING_TIMEOUT_S)
        tracker.close(mlflow_status, timeout_s=timeout_s)
        _record_tracking(factory, job_id, tracker.run_id, tracker.warnings)
    return result.outcome


def _claim(
    factory: Callable[[], Session], settings: Settings, job_id: str, worker_id: str
) -> dict[str, Any] | None:
    """queued -> running for this worker; None (and nothing changed) if the job is not runnable."""
    with factory() as session, session.begin():
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s: not in the database; message dropped", job_id)
            return None
        if job.status != JobStatus.queued:
            log.info("job %s: is %s, not queued; nothing to do", job_id, job.status)
            return None
        out_dir = (Path(settings.jobs_dir) / job_id).resolve()
        now = utcnow()
        try:
            job = transition(
                session,
                job_id,
                JobStatus.running,
                reason=f"claimed by worker {worker_id}",
                worker_id=worker_id,
                started_at=now,
                heartbeat_at=now,
                attempt=job.attempt + 1,
                output_dir=str(out_dir),
                cancel_requested_at=None,
                error=None,
            )
        except InvalidTransition as exc:  # someone else claimed or cancelled it in the meantime
            log.info("job %s: %s; nothing to do", job_id, exc)
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        dropped = drop_unrecorded_checkpoints(out_dir, job.last_checkpoint)
        if dropped:
            log.warning(
                "job %s: removed checkpoint(s) %s that the last attempt saved but never recorded; their "
                "steps are redone",
                job_id,
                [p.name for p in dropped],
            )
        spec_path = out_dir / "spec.json"
        spec_path.write_text(json.dumps(job.spec_resolved, indent=2, sort_keys=True))
        history = []
        resume_step = _checkpoint_step(Path(job.last_checkpoint)) if job.last_checkpoint else None
        if resume_step is not None and job.mlflow_run_id:  # the steps kept, which MLflow may have missed
            rows = session.execute(
                select(JobEvent.step, JobEvent.data, JobEvent.created_at)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "metrics", JobEvent.step <= resume_step)
                .order_by(JobEvent.id)
            )
            history = [
                {**data, "step": step, "ts": data.get("ts") or at.timestamp()} for step, data, at in rows
            ]
        return {
            "out_dir": out_dir,
            "spec_path": spec_path,
            "resume": job.last_checkpoint is not None,
            "attempt": job.attempt,
            "name": job.name,
            "algorithm": job.algorithm,
            "spec_resolved": job.spec_resolved,
            "mlflow_run_id": job.mlflow_run_id,
            "history": history,
            "queue": job.queue,
            "machines": int(((job.spec_resolved or {}).get("distributed") or {}).get("num_machines") or 1),
        }


def _checkpoint_step(path: Path) -> int | None:
    step = path.name.removeprefix("checkpoint-")
    return int(step) if path.name.startswith("checkpoint-") and step.isdigit() else None


def drop_unrecorded_checkpoints(out_dir: Path, recorded: str | None) -> list[Path]:
    """Remove the checkpoints newer than the job's recorded `last_checkpoint` (all of them when none is
    recorded); returns what was removed.

    The recorded checkpoint is written in the same transaction as every event before it, so resuming
    from it redoes exactly the steps whose events may be missing. A checkpoint the engine saved after
    that (its worker died before the events were written) would make the resumed run skip steps that
    were never recorded. When the recorded checkpoint itself is gone (pruned by `save_total_limit`),
    nothing is removed: the newest one on disk is the only way forward."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return []
    recorded_step = _checkpoint_step(Path(recorded)) if recorded else 0
    if recorded_step is None:
        return []
    if recorded and not Path(recorded).is_dir():
        return []
    newer = [p for p in folder.iterdir() if p.is_dir() and (_checkpoint_step(p) or 0) > recorded_step]
    for path in newer:
        shutil.rmtree(path, ignore_errors=True)
    return newer


def _make_tracker(settings: Settings, claimed: dict[str, Any]) -> MlflowTracker | None:
    spec = claimed["spec_resolved"] or {}
    try:
        return MlflowTracker(
            settings.mlflow_tracking_uri,
            settings.mlflow_artifact_root,
            job_id=claimed["out_dir"].name,
            run_name=claimed["name"] or claimed["out_dir"].name,
            params=flatten_params(spec),
            tags={
                "papertrain.algorithm": str(claimed["algorithm"]),
                "papertrain.attempt": str(claimed["attempt"]),
            },
            run_id=claimed["mlflow_run_id"],
            history=claimed.get("history"),
            log_checkpoints=settings.mlflow_log_checkpoints,
            on_late_finish=functools.partial(
                _record_tracking, session_factory_for(settings.database_url), claimed["out_dir"].name
            ),
        ).start()
    except Exception:
        log.exception("could not set up MLflow tracking; the job runs without it")
        return None


def _finish(
    factory: Callable[[], Session],
    job_id: str,
    worker_id: str,
    result: RunResult,
    *,
    run_id: str | None,
    warnings: list[str],
    sender: Sender | None,
) -> None:
    """Move the job to where `result` says, if this worker still owns it."""
    with factory() as session, session.begin():
        job = session.get(Job, job_id, populate_existing=True)
        if job is None:
            return
        for message in warnings:
            session.add(JobEvent(job_id=job_id, kind="log", data={"level": "warning", "message": message}))
        if result.outcome == "lost" or job.worker_id != worker_id:
            log.warning("job %s: ended as %s but is no longer ours; leaving it", job_id, result.outcome)
            return
        fields: dict[str, Any] = {"heartbeat_at": utcnow()}
        if run_id:
            fields["mlflow_run_id"] = run_id
        try:
            _apply_outcome(session, job, result, fields, sender)
        except InvalidTransition as exc:
            log.warning("job %s: could not record outcome %s: %s", job_id, result.outcome, exc)


def _record_tracking(
    factory: Callable[[], Session], job_id: str, run_id: str | None, warnings: list[str]
) -> None:
    """After the job ended: MLflow's warnings as log events, and the run id if it came late."""
    try:
        with factory() as session, session.begin():
            for message in warnings:
                session.add(
                    JobEvent(job_id=job_id, kind="log", data={"level": "warning", "message": message})
                )
            if run_id:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.mlflow_run_id.is_(None))
                    .values(mlflow_run_id=run_id)
                )
    except Exception:
        log.exception("job %s: could not record MLflow warnings", job_id)


def _apply_outcome(
    session: Session, job: Job, result: RunResult, fields: dict[str, Any], sender: Sender | None
) -> None:
    job_id, status = job.id, job.status
    outcome = result.outcome
    if outcome == "succeeded":
        transition(session, job_id, JobStatus.succeeded, reason="the engine finished", **fields)
    elif outcome == "failed":
        error = result.error or {
            "code": "engine_error",
            "message": "the engine failed",
            "category": "platform",
        }
        transition(session, job_id, JobStatus.failed, reason=error.get("message"), error=error, **fields)
    elif outcome == "cancelled" or (outcome == "interrupted" and status == JobStatus.cancelling):
        if status == JobStatus.running:  # a cancel request seen through cancel_requested_at only
            transition(session, job_id, JobStatus.cancelling, reason="cancel requested")
        transition(
            session,
            job_id,
            JobStatus.cancelled,
            reason="cancelled on request; the engine was stopped",
            **fields,
        )
    elif outcome == "interrupted":
        transition(
            session,
            job_id,
            JobStatus.queued,
            reason="the worker shut down; the job resumes from its last checkpoint on the next worker",
            worker_id=None,
            **fields,
        )
        enqueue_job(session, job, sender=sender)
