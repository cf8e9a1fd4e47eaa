"""Engine events -> `JobEvent` rows, committed in batches, plus the job fields they move.

    recorder = EventRecorder(session_factory, job_id)
    recorder.add({"type": "progress", "step": 3, "total_steps": 10, "epoch": 0.3, "ts": ...})
    recorder.flush_if_due()      # the runner calls this from its loop; flush() at the end

Row shape (what the api reads): `kind` is the engine event type (`done` is stored as a `log` row that
also carries `final_path`), `step` is the event's step when it has one, `data` is the event without its
`type` key (so metrics live in `data["metrics"]`, samples in `data["samples"]`, a checkpoint's path in
`data["path"]`). `job.last_step`, `job.total_steps` and `job.last_checkpoint` follow the stream.

A failed commit keeps the batch and tries again on the next flush (bounded), so a briefly locked
database never loses events or fails a job. This module does not talk to MLflow or the engine process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session

from core.models import EventKind, Job, JobEvent, utcnow
from engine.events import EVENT_TYPES

log = logging.getLogger(__name__)

# engine event type -> JobEvent kind: the same name, except that `done` is stored as a `log` row. Every
# engine type must name a kind (EventKind raises on one that does not).
KIND_OF = {t: EventKind("log" if t == "done" else t).value for t in EVENT_TYPES}
MAX_PENDING_ROWS = 20_000
# Kinds a resumed run emits again for the steps it redoes: the earlier run's rows from those steps on are
# superseded (deleted) when the new ones are written, so histories never run backwards or repeat.
REDONE_KINDS = (
    "progress",
    "metrics",
    "samples",
    "checkpoint",
)  # beyond this, a database that refuses writes costs the oldest rows


def to_row(event: dict[str, Any]) -> tuple[str, int | None, dict[str, Any]]:
    """(kind, step, data) for one engine event; an unknown type becomes a `log` row that says so."""
    type_ = event.get("type")
    data = {k: v for k, v in event.items() if k != "type"}
    step = event.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    if type_ == "done":
        data.setdefault("level", "info")
        data.setdefault(
            "message", f"training finished at step {step}; final model in {event.get('final_path')}"
        )
    if type_ == "error":  # tracebacks go to the worker's log, never to the api
        data.pop("traceback", None)
    kind = KIND_OF.get(str(type_))
    if kind is None:
        kind = "log"
        data = {"level": "warning", "message": f"unknown engine event type {type_!r}", "event": data}
    return kind, step, data


class EventRecorder:
    """Buffers engine events and writes them, with the job fields they imply, in one transaction per batch."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        job_id: str,
        *,
        batch_size: int = 100,
        flush_interval_s: float = 0.5,
    ) -> None:
        self._session_factory = session_factory
        self.job_id = job_id
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._pending: list[tuple[str, int | None, dict[str, Any]]] = []
        self._job_fields: dict[str, Any] = {}
        self._last_flush = time.monotonic()
        self._urgent = False
        self.last_step: int | None = None
        self.total_steps: int | None = None
        self.last_checkpoint: str | None = None
        self.final_path: str | None = None
        self.error: dict[str, Any] | None = None  # the engine's own error event, if it sent one
        self.rows_written = 0
        self._earlier_max_id: int | None = (
            None  # the job's last event id before this run (set on first flush)
        )
        self.superseded = 0  # rows of an earlier run deleted because this run redid their steps

    def add(self, event: dict[str, Any]) -> None:
        kind, step, data = to_row(event)
        self._pending.append((kind, step, data))
        if len(self._pending) > MAX_PENDING_ROWS:
            dropped = len(self._pending) - MAX_PENDING_ROWS
            del self._pending[:dropped]
            log.warning(
                "job %s: dropped %d buffered events (database not accepting writes)", self.job_id, dropped
            )
        type_ = event.get("type")
        if step is not None and type_ in ("progress", "metrics", "checkpoint", "done", "samples"):
            self.last_step = step if self.last_step is None else max(self.last_step, step)
            self._job_fields["last_step"] = self.last_step
        if type_ == "progress" and isinstance(event.get("total_steps"), int):
            self.total_steps = event["total_steps"]
            self._job_fields["total_steps"] = self.total_steps
        elif type_ == "checkpoint" and event.get("path"):
            self.last_checkpoint = str(event["path"])
            self._job_fields["last_checkpoint"] = self.last_checkpoint
            self._urgent = True  # a resume point must be durable before the engine can die
        elif type_ == "done":
            self.final_path = event.get("final_path")
        elif type_ == "error":
            self.error = data
            self._urgent = True

    def flush_if_due(self) -> None:
        due = time.monotonic() - self._last_flush >= self.flush_interval_s
        if self._pending and (self._urgent or due or len(self._pending) >= self.batch_size):
            self.flush()

    def flush(self) -> bool:
        """Write everything buffered; False (and the buffer kept) if the database refused."""
        self._last_flush = time.monotonic()
        if not self._pending and not self._job_fields:
            return True
        rows, fields = list(self._pending), dict(self._job_fields)
        try:
            with self._session_factory() as session, session.begin():
                now = utcnow()
                superseded = self._supersede(session, rows)
                session.add_all(
                    JobEvent(job_id=self.job_id, kind=kind, step=step, data=data, created_at=now)
                    for kind, step, data in rows
                )
                if fields:
                    session.execute(update(Job).where(Job.id == self.job_id).values(**fields, updated_at=now))
        except Exception as exc:
            log.warning("job %s: could not write %d events yet (%s); will retry", self.job_id, len(rows), exc)
            return False
        self._pending = self._pending[len(rows) :]
        self._job_fields = {}
        self._urgent = False
        self.rows_written += len(rows)
        self.superseded += superseded
        return True

    def _supersede(self, session: Session, rows: list[tuple[str, int | None, dict[str, Any]]]) -> int:
        """Delete the earlier runs' rows of the steps this batch redoes (same transaction as the insert)."""
        if self._earlier_max_id is None:
            last = session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == self.job_id))
            self._earlier_max_id = int(last or 0)
        first_step: dict[str, int] = {}
        for kind, step, _ in rows:
            if kind in REDONE_KINDS and step is not None:
                first_step[kind] = min(step, first_step.get(kind, step))
        deleted = 0
        for kind, step in first_step.items():
            stale = delete(JobEvent).where(
                JobEvent.job_id == self.job_id,
                JobEvent.kind == kind,
                JobEvent.step >= step,
                JobEvent.id <= self._earlier_max_id,
            )
            result = cast("CursorResult[Any]", session.execute(stale))  # a DELETE's result counts its rows
            deleted += result.rowcount or 0
        return deleted
