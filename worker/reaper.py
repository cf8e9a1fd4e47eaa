"""Find jobs whose worker stopped heartbeating and give them another attempt (or fail them).

    reap_stale_jobs(session_factory, heartbeat_timeout_s=120)   # -> [("job_ab12...", "queued"), ...]

A job `running` whose `heartbeat_at` is older than the timeout lost its worker (killed, machine gone).
While attempts remain it goes back to `queued` and is sent to its queue again; the worker that picks it
up runs it as attempt + 1 (every claim counts one) and passes `--resume` because the job has a
`last_checkpoint`. When `attempt` has reached `max_attempts` it is `failed` (category `infra`). A job
stuck in `cancelling` without a live worker is simply `cancelled`: there is no process left to stop.

`resend_waiting_jobs` covers the other way a job can be stranded: its message was lost (the broker did
not answer when the submitting transaction committed). A job `queued` for longer than `resend_after_s`
since it was queued or last sent is sent again; a duplicate is harmless because the task leaves every job
that is no longer `queued` alone.

Every worker process runs this on a timer (worker/main.py); concurrent reapers are safe because each
job is re-checked under its row lock before it is changed. This module does not kill processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from core.models import Job, utcnow
from core.queue import Sender, enqueue_job
from core.states import InvalidTransition, JobStatus
from core.transitions import lock_job, transition

log = logging.getLogger(__name__)

_WATCHED = (JobStatus.running, JobStatus.cancelling)


def _is_stale(job: Job, cutoff: datetime) -> bool:
    seen = job.heartbeat_at or job.started_at or job.updated_at
    return seen is None or seen < cutoff


def reap_stale_jobs(
    session_factory: Callable[[], Session],
    *,
    heartbeat_timeout_s: float,
    now: datetime | None = None,
    sender: Sender | None = None,
) -> list[tuple[str, str]]:
    """Re-queue or fail every job with a stale heartbeat; returns (job_id, new status) pairs."""
    cutoff = (now or utcnow()) - timedelta(seconds=heartbeat_timeout_s)
    with session_factory() as session:
        candidates = session.scalars(
            select(Job.id).where(
                Job.status.in_(_WATCHED),
                or_(
                    Job.heartbeat_at < cutoff,
                    and_(Job.heartbeat_at.is_(None), or_(Job.started_at.is_(None), Job.started_at < cutoff)),
                ),
            )
        ).all()
    reaped: list[tuple[str, str]] = []
    for job_id in candidates:
        try:
            with session_factory() as session, session.begin():
                new_status = _reap_one(session, job_id, cutoff, heartbeat_timeout_s, sender)
        except InvalidTransition as exc:
            log.info("reaper: %s", exc)
            continue
        if new_status is not None:
            reaped.append((job_id, new_status))
    return reaped


def _reap_one(
    session: Session, job_id: str, cutoff: datetime, timeout_s: float, sender: Sender | None
) -> str | None:
    job = lock_job(session, job_id)
    if job.status not in _WATCHED or not _is_stale(job, cutoff):
        return None  # it heartbeated, finished or was reaped by someone else meanwhile
    lost = f"worker {job.worker_id or '?'} sent no heartbeat for more than {timeout_s:.0f}s"
    if job.status == JobStatus.cancelling:
        transition(session, job_id, JobStatus.cancelled, reason=f"{lost}; nothing left to stop")
        return JobStatus.cancelled.value
    if job.attempt < job.max_attempts:
        resume = (
            f"resumes from {job.last_checkpoint}"
            if job.last_checkpoint
            else "starts over (no checkpoint yet)"
        )
        transition(
            session,
            job_id,
            JobStatus.queued,
            reason=f"{lost}; attempt {job.attempt + 1} of {job.max_attempts} {resume}",
            worker_id=None,
            heartbeat_at=None,
        )
        enqueue_job(session, job, sender=sender)
        log.warning("job %s: %s; re-queued for attempt %d", job_id, lost, job.attempt + 1)
        return JobStatus.queued.value
    message = f"{lost}, and all {job.max_attempts} attempts are used up"
    error = {"code": "worker_lost", "message": message, "category": "infra", "log_tail": []}
    transition(session, job_id, JobStatus.failed, reason=message, error=error)
    log.warning("job %s: %s", job_id, message)
    return JobStatus.failed.value


def resend_waiting_jobs(
    session_factory: Callable[[], Session],
    *,
    resend_after_s: float,
    now: datetime | None = None,
    sender: Sender | None = None,
) -> list[str]:
    """Send again every job `queued` for more than `resend_after_s`; returns their ids."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=resend_after_s)
    with session_factory() as session:
        waiting = session.scalars(
            select(Job.id).where(Job.status == JobStatus.queued, Job.updated_at < cutoff)
        ).all()
    resent: list[str] = []
    for job_id in waiting:
        with session_factory() as session, session.begin():
            job = lock_job(session, job_id)
            if job.status != JobStatus.queued or job.updated_at >= cutoff:
                continue  # claimed, cancelled or re-sent by another worker meanwhile
            job.updated_at = now  # the clock for the next re-send starts now
            enqueue_job(session, job, sender=sender)
        log.info("job %s: queued for more than %.0fs; sent again", job_id, resend_after_s)
        resent.append(job_id)
    return resent


def run_reaper(
    session_factory: Callable[[], Session],
    *,
    heartbeat_timeout_s: float,
    stop: threading.Event,
    resend_after_s: float | None = None,
    interval_s: float | None = None,
) -> None:
    """Reap (and re-send waiting jobs) every `interval_s` (default: a quarter of the timeout, at most 30 s)
    until `stop` is set."""
    interval = interval_s or min(30.0, max(1.0, heartbeat_timeout_s / 4))
    while not stop.wait(interval):
        try:
            reap_stale_jobs(session_factory, heartbeat_timeout_s=heartbeat_timeout_s)
            if resend_after_s:
                resend_waiting_jobs(session_factory, resend_after_s=resend_after_s)
        except Exception:
            log.exception("reaper pass failed; trying again in %.0fs", interval)
