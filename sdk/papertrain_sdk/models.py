"""What the API returns, as Pydantic models. Unknown fields are kept (a newer server may add some)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Job(_Model):
    id: str
    name: str | None = None
    algorithm: str
    status: str
    queue: str | None = None
    preset_id: str | None = None
    preset_version: int | None = None
    attempt: int = 0
    max_attempts: int | None = None
    last_step: int | None = None
    total_steps: int | None = None
    error: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # only on single-job reads
    spec_submitted: dict[str, Any] | None = None
    spec_resolved: dict[str, Any] | None = None
    last_checkpoint: str | None = None
    mlflow_run_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobPage(_Model):
    jobs: list[Job]
    next_cursor: str | None = None


class Event(_Model):
    id: int
    kind: str
    step: int | None = None
    data: dict[str, Any] = {}
    created_at: datetime | None = None


class EventPage(_Model):
    events: list[Event]
    next_cursor: int | None = None
    has_more: bool = False


class Checkpoint(_Model):
    step: int | None = None
    path: str
    created_at: datetime | None = None


class FileInfo(_Model):
    id: str
    filename: str
    bytes: int
    rows: int
    format: str
    created_at: datetime | None = None


class Preset(_Model):
    id: str
    version: int
    title: str
    algorithm: str
    config: dict[str, Any]
    job: dict[str, Any] = {}
    notes: str = ""
    runnable: bool = True


class Warning(_Model):  # noqa: A001 - the API's name
    code: str
    message: str
    param: str | None = None


class DryRun(_Model):
    spec: dict[str, Any]
    preset: dict[str, Any] | None = None
    preset_diff: list[dict[str, Any]] = []
    warnings: list[Warning] = []
    estimate: dict[str, Any] = {}
