"""Send a job to its worker queue only once the transaction that created it has committed.

    with session_scope() as session:
        job = Job(...); session.add(job)
        enqueue_job(session, job)      # nothing is sent yet
    # committed -> `papertrain.run_job(job_id)` is on queue `job.queue`

A rolled-back (or closed-without-commit) transaction sends nothing, so a worker never sees a job id
the database does not have. The message carries the job id only; the worker re-reads everything else.
This module does not retry a failed send: the job stays `queued` in the database, the failure is logged,
and the workers' reaper sends it again later (`worker.reaper.resend_waiting_jobs`; the task is idempotent,
so a second message for the same id is always safe).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from core.celery_app import RUN_JOB_TASK

log = logging.getLogger(__name__)

Sender = Callable[[str, str], None]
_PENDING = "papertrain.pending_job_sends"


def send_run_job(job_id: str, queue: str, *, app: Any = None) -> None:
    """Publish `papertrain.run_job(job_id)` to `queue` now (no transaction involved)."""
    if app is None:
        from core.celery_app import get_celery

        app = get_celery()
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)


def enqueue_job(session: Session, job: Any, *, sender: Sender | None = None) -> None:
    """Send `job.id` to `job.queue` after `session` commits; forget it if the transaction ends otherwise.

    `sender(job_id, queue)` defaults to `send_run_job` on the process-wide Celery app.
    """
    if job.id is None:
        session.flush()  # ids generated at flush time must exist before we remember them
    # Plain values, captured now: after commit the ORM object is expired and must not be touched.
    job_id, queue = str(job.id), str(job.queue)
    if not event.contains(session, "after_commit", _send_pending):
        event.listen(session, "after_commit", _send_pending)
        event.listen(session, "after_transaction_end", _drop_pending)
    session.info.setdefault(_PENDING, []).append((job_id, queue, sender or send_run_job))


def _send_pending(session: Session) -> None:
    for job_id, queue, sender in session.info.pop(_PENDING, []):
        try:
            sender(job_id, queue)
        except Exception:
            log.exception("job %s is committed as queued but could not be sent to queue %r", job_id, queue)


def _drop_pending(session: Session, transaction: SessionTransaction) -> None:
    # Fires after after_commit on success (the list is already empty) and after a rollback or close.
    if transaction.parent is None and not transaction.nested:
        dropped = session.info.pop(_PENDING, [])
        if dropped:
            log.debug("transaction ended without commit; not sending %s", [d[0] for d in dropped])
