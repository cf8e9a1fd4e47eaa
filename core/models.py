"""SQLAlchemy 2 models: users and API tokens, jobs with their append-only transition history and event
stream, uploaded dataset files.

Status and event kinds are plain string columns validated in Python (no database enum types, so adding a
value never needs a migration). Timestamps are always timezone-aware UTC, on SQLite too. The schema is
created by Alembic (`core/migrations/`), never by `create_all` in production code.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates
from sqlalchemy.types import TypeDecorator

from core.states import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return f"job_{secrets.token_hex(6)}"


def new_file_id() -> str:
    return f"file_{secrets.token_hex(6)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime (core.models.utcnow())")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StatusType(TypeDecorator[JobStatus]):
    """A string column that only ever holds a `JobStatus` value and reads back as one."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


class EventKind(StrEnum):
    log = "log"
    progress = "progress"
    metrics = "metrics"
    checkpoint = "checkpoint"
    samples = "samples"
    status = "status"
    error = "error"


JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id for the event stream.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JsonType}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)  # may see and cancel every job, manage tokens
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="default")
    token_prefix: Mapped[str] = mapped_column(String(16))  # shown in listings; never enough to authenticate
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the raw token
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(back_populates="tokens")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    algorithm: Mapped[str] = mapped_column(String(32))
    status: Mapped[JobStatus] = mapped_column(StatusType(), default=JobStatus.queued)
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    spec_submitted: Mapped[dict[str, Any]]
    preset_id: Mapped[str | None] = mapped_column(String(64))
    preset_version: Mapped[int | None]
    preset_overrides: Mapped[list[str] | None] = mapped_column(
        JsonType
    )  # objective keys overridden on purpose
    spec_resolved: Mapped[dict[str, Any]]
    attempt: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    error: Mapped[dict[str, Any] | None]  # {code, message, category, log_tail}
    output_dir: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    last_checkpoint: Mapped[str | None] = mapped_column(Text)
    last_step: Mapped[int | None]
    total_steps: Mapped[int | None]
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    @validates("status")
    def _check_status(self, _key: str, value: str) -> JobStatus:
        return JobStatus(value)  # a typo fails here, not at flush time


class JobTransition(Base):
    """Append-only: one row per status change, written by `core.transitions.transition` only."""

    __tablename__ = "job_transitions"
    __table_args__ = (Index("ix_job_transitions_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    from_status: Mapped[JobStatus | None] = mapped_column(StatusType())  # None: the job was created
    to_status: Mapped[JobStatus] = mapped_column(StatusType())
    reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """The job's event stream; `id` is the cursor clients page with (`?after=<id>`)."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    step: Mapped[int | None]
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @validates("kind")
    def _check_kind(self, _key: str, value: str) -> str:
        try:
            return EventKind(value).value
        except ValueError:
            raise ValueError(f"unknown event kind {value!r}; known: {[k.value for k in EventKind]}") from None


class UploadedFile(Base):
    __tablename__ = "uploaded_files"
    __table_args__ = (Index("ix_uploaded_files_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_file_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int]
    format: Mapped[str] = mapped_column(String(16), default="jsonl")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """A client's `Idempotency-Key` for a create request: the same key and body replay the first result."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "scope", "key", name="uq_idempotency_user_scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(16))  # "jobs" or "files"
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the request body
    resource_id: Mapped[str] = mapped_column(String(32))  # the job or file the first request created
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerRecord(Base):
    """A live worker: what it consumes and can run, refreshed every heartbeat (`core.workers`)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery hostname, pid@host
    hostname: Mapped[str] = mapped_column(String(200))
    queues: Mapped[dict[str, Any]]  # {"queues": [...]}
    capabilities: Mapped[dict[str, Any]]  # {"gpus": int, "deepspeed": bool, "vllm": bool}
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
