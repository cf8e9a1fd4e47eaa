"""Response schemas (what clients can rely on), and the documented shape of a job request.

Job requests are read as plain dicts and validated by `engine.spec` (so that every error names its field
the same way); `JobRequest` only publishes their shape in the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.states import JobStatus
from engine.spec import DatasetSpec, HardwareSpec, JobSpec, LoraSpec
from engine.spec.base import DistributedSpec
from engine.spec.estimate import Estimate
from engine.spec.grpo import RewardFuncSpec
from engine.spec.job import AlgorithmFamily
from engine.spec.warnings import SpecWarning


class PresetJobRequest(BaseModel):
    """A paper preset plus what the request adds: the preset fixes the algorithm and its config; `config`
    overrides keys of it; job-level keys replace the preset's."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(description="preset id (GET /v1/presets)")
    algorithm: str | None = Field(None, description="optional; must be the preset's algorithm")
    name: str | None = Field(None, max_length=200)
    model: str = Field(description="HF id, local path, 'bundled:smollm2-135m-instruct' or 'tiny:llama'")
    dataset: DatasetSpec
    eval_dataset: DatasetSpec | None = None
    hardware: HardwareSpec | None = None
    peft_config: LoraSpec | None = None
    distributed: DistributedSpec | None = None
    reward_funcs: list[RewardFuncSpec] | None = None
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the preset's config (fields of its algorithm's config)",
    )
    override_preset_objective: bool | list[str] = Field(
        False,
        description="confirm changing keys of the preset's objective (e.g. config.loss_type): true, or the "
        "list of those keys; without it such a change is a 422",
    )


JobRequest = JobSpec | PresetJobRequest


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# What a job's error shows to its owner; the log tail and tracebacks stay in the server's logs and database.
PUBLIC_ERROR_KEYS = ("code", "message", "category", "param", "remediation", "step", "exit_code")


def public_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    from engine.errors import scrub

    if not error:
        return error
    out = {k: error[k] for k in PUBLIC_ERROR_KEYS if error.get(k) is not None}
    if isinstance(out.get("message"), str):
        out["message"] = scrub(out["message"])
    return out


class JobSummary(_Out):
    id: str
    name: str | None
    algorithm: str
    status: JobStatus
    queue: str
    preset_id: str | None
    preset_version: int | None
    attempt: int
    max_attempts: int
    last_step: int | None
    total_steps: int | None
    error: dict[str, Any] | None

    @field_validator("error", mode="before")
    @classmethod
    def _public_error(cls, value: Any) -> Any:
        return public_error(value) if isinstance(value, dict) else value

    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobDetail(JobSummary):
    preset_overrides: list[str] | None = None  # preset objective keys this job overrode on purpose
    spec_submitted: dict[str, Any]
    spec_resolved: dict[str, Any]
    output_dir: str | None
    mlflow_run_id: str | None
    mlflow_run_url: str | None = Field(
        None,
        description="the run's page in the MLflow UI (set when the deployment names PAPERTRAIN_MLFLOW_UI_URL)",
    )
    last_checkpoint: str | None
    worker_id: str | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    warnings: list[SpecWarning] = Field(
        default_factory=list, description="on creation only: e.g. no live worker consumes the job's queue yet"
    )


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = None
    total: int = 0  # jobs matching the filters, all pages together


class EventOut(_Out):
    id: int
    kind: str
    step: int | None
    data: dict[str, Any]
    created_at: datetime

    @field_validator("data", mode="after")
    @classmethod
    def _no_traceback(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "traceback" in value or "log_tail" in value:
            value = {k: v for k, v in value.items() if k not in ("traceback", "log_tail")}
        return value


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: int | None  # pass as `after` to get what came next (stays put when nothing new)
    has_more: bool


class MetricPoint(BaseModel):
    step: int | None
    value: float


class MetricsOut(BaseModel):
    metrics: dict[str, list[MetricPoint]]


class CheckpointOut(BaseModel):
    step: int | None
    path: str
    created_at: datetime


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointOut]
    last_checkpoint: str | None


class FileOut(_Out):
    id: str
    filename: str
    bytes: int
    rows: int
    format: str
    created_at: datetime


class FileList(BaseModel):
    files: list[FileOut]


class PresetOut(BaseModel):
    id: str
    version: int
    title: str
    paper_url: str
    section: str | None = None
    algorithm: str
    config: dict[str, Any]
    job: dict[str, Any] = {}
    notes: str = ""
    runnable: bool = Field(description="whether the preset runs as shipped on the live workers")
    runnable_param: str | None = Field(None, description="the field that stops it, when it does not run")
    runnable_reason: str | None = Field(None, description="why it does not run as shipped")
    runnable_change: dict[str, Any] | None = Field(
        None,
        description="the smallest request fragment (merged over the preset like any request) that was "
        "checked to make it run; null when no change to the job does (a worker or a user's choice is missing)",
    )


class PresetList(BaseModel):
    presets: list[PresetOut]


class Health(BaseModel):
    status: str
    database: str


class PresetRef(BaseModel):
    id: str
    version: int


class PresetChange(BaseModel):
    param: str = Field(description="dotted path of the key the request sets")
    preset_value: Any = Field(description="the preset's value (null: the preset leaves it at its default)")
    value: Any = Field(description="the request's value")
    preset_fixed: bool = Field(
        False, description="the preset sets this key (false: it leaves it at its default)"
    )
    objective: bool = Field(
        False,
        description="a key of the preset's objective: changing it needs `override_preset_objective` in the request",
    )


class DryRun(BaseModel):
    """What `POST /v1/jobs` would store for the same body; nothing is stored."""

    spec: dict[str, Any] = Field(description="the resolved spec: every default written out")
    preset: PresetRef | None
    preset_diff: list[PresetChange]
    warnings: list[SpecWarning]
    estimate: Estimate


class Me(_Out):
    id: int
    name: str
    created_at: datetime


class AlgorithmOut(BaseModel):
    id: str
    runnable: bool
    builtin_datasets: list[str] = Field(description="the built-in sets whose row format fits it")
    family: AlgorithmFamily = Field(
        description="offline: learns from the dataset's rows; online: generates completions and scores them "
        "with reward_funcs; distillation: learns a teacher's distributions. Online and distillation runs log "
        "generated samples"
    )


class AlgorithmList(BaseModel):
    algorithms: list[AlgorithmOut]


class BuiltinDatasetOut(BaseModel):
    name: str
    algorithms: list[str]


class BuiltinDatasetList(BaseModel):
    datasets: list[BuiltinDatasetOut]
