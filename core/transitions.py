"""Moving a job between states: the one function that changes `Job.status` after creation.

Every status change goes through `transition()`: it locks the job row, checks `core.states.ALLOWED`, updates
the job and appends a `JobTransition` history row plus a `status` event, all in the caller's transaction (it
never commits). Nothing else assigns `Job.status` after creation.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.models import Job, JobEvent, JobTransition, utcnow
from core.states import ALLOWED, TERMINAL, InvalidTransition, JobStatus

# Fields a transition may set alongside the status (the others belong to creation or the history).
_SETTABLE = frozenset(
    {
        "attempt",
        "max_attempts",
        "error",
        "output_dir",
        "mlflow_run_id",
        "last_checkpoint",
        "last_step",
        "total_steps",
        "worker_id",
        "heartbeat_at",
        "cancel_requested_at",
        "started_at",
        "finished_at",
    }
)


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} does not exist")
        self.job_id = job_id


def lock_job(session: Session, job_id: str) -> Job:
    """Load the job with its row locked until the caller's transaction ends.

    PostgreSQL: `SELECT ... FOR UPDATE`. SQLite has no row locks: a no-op UPDATE takes the database's write
    lock first (waiting up to the busy timeout), so the read that follows sees the latest committed row and
    no other writer can change it before we commit.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE jobs SET status = status WHERE id = :id"), {"id": job_id})
    job = session.scalars(
        select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def record_created(session: Session, job: Job, *, reason: str | None = None) -> None:
    """Open a new job's history (from nothing to its first status). Call once, right after `session.add(job)`."""
    now = utcnow()
    session.add(
        JobTransition(job_id=job.id, from_status=None, to_status=job.status, reason=reason, created_at=now)
    )
    session.add(
        JobEvent(
            job_id=job.id,
            kind="status",
            data={"from": None, "to": job.status.value, "reason": reason, "attempt": job.attempt},
            created_at=now,
        )
    )


def transition(
    session: Session, job_id: str, to: JobStatus | str, *, reason: str | None = None, **fields: Any
) -> Job:
    """Move `job_id` to `to` (raises `InvalidTransition` if the table forbids it) and record it.

    `fields` are other job columns to set in the same change (e.g. `worker_id=`, `started_at=`, `error=`).
    Entering a final status stamps `finished_at` unless given. The caller commits.
    """
    to = JobStatus(to)
    unknown = set(fields) - _SETTABLE
    if unknown:
        raise TypeError(f"transition() cannot set {sorted(unknown)}; settable: {sorted(_SETTABLE)}")
    job = lock_job(session, job_id)
    from_status = job.status
    if to not in ALLOWED[from_status]:
        raise InvalidTransition(from_status, to, job_id)

    now = utcnow()
    if to in TERMINAL:
        fields.setdefault("finished_at", now)
    for key, value in fields.items():
        setattr(job, key, value)
    job.status = to
    job.updated_at = now
    session.add(
        JobTransition(
            job_id=job.id,
            from_status=from_status,
            to_status=to,
            reason=reason,
            attempt=job.attempt,
            created_at=now,
        )
    )
    session.add(
        JobEvent(
            job_id=job.id,
            kind="status",
            data={"from": from_status.value, "to": to.value, "reason": reason, "attempt": job.attempt},
            created_at=now,
        )
    )
    session.flush()
    return job
