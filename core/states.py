"""The job state machine as data: the statuses, named status sets and the allowed-transitions table.

Pure on purpose (no database, no models): `core.models` stores `JobStatus`, and `core.transitions` moves a
job between states by this table.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    validating = "validating"
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


S = JobStatus
TERMINAL = frozenset({S.succeeded, S.failed, S.cancelled})
ACTIVE = frozenset({S.validating, S.queued, S.running, S.cancelling})
CANCELLABLE = frozenset({S.validating, S.queued, S.running})  # cancelling: already on its way
RETRYABLE = frozenset({S.failed, S.cancelled})  # a user retry starts a new attempt of the same job

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    S.validating: frozenset({S.queued, S.failed, S.cancelled}),
    S.queued: frozenset({S.running, S.cancelled, S.failed}),
    # running -> queued: the reaper re-queues a job whose worker died (resumes from its last checkpoint)
    S.running: frozenset({S.succeeded, S.failed, S.cancelling, S.queued}),
    # cancelling -> succeeded/failed: the engine finished or crashed before it saw the stop signal
    S.cancelling: frozenset({S.cancelled, S.failed, S.succeeded}),
    S.succeeded: frozenset(),
    S.failed: frozenset({S.queued}),  # POST /v1/jobs/{id}/retry
    S.cancelled: frozenset({S.queued}),  # POST /v1/jobs/{id}/retry
}


class InvalidTransition(Exception):
    def __init__(self, from_status: JobStatus, to_status: JobStatus, job_id: str | None = None) -> None:
        allowed = sorted(ALLOWED[from_status])
        super().__init__(
            f"job {job_id or '?'} cannot go from {from_status.value!r} to {to_status.value!r} "
            f"(allowed from {from_status.value!r}: {[s.value for s in allowed] or 'none, it is final'})"
        )
        self.from_status = from_status
        self.to_status = to_status
        self.job_id = job_id
