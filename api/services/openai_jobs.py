"""The OpenAI fine-tuning vocabulary mapped onto papertrain jobs (used by `api.openai_compat`).

    method supervised    -> sft   (rows {"messages": [...]}, used as they are)
    method dpo           -> dpo   (rows {"input": {"messages"}, "preferred_output", "non_preferred_output"}
                                   become prompt / chosen / rejected)
    method reinforcement -> grpo  (rows {"messages": [...], ...item fields} become prompt + the fields; the
                                   grader string_check eq against {{item.answer}} is the `accuracy` reward)

Hyperparameters: n_epochs -> num_train_epochs, batch_size -> per_device_train_batch_size,
learning_rate_multiplier -> learning_rate = the algorithm's default x multiplier, beta -> beta; any other
key is a papertrain config field of the algorithm and passes through (validated like any spec).
Options papertrain cannot honour are refused with an `OpenAIError` naming the field.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.services import files as file_service
from api.services import jobs as job_service
from core.models import Job, JobEvent, UploadedFile, User
from core.settings import Settings
from engine.spec import CONFIG_CLASSES

METHODS = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
ALGORITHM_METHOD = {v: k for k, v in METHODS.items()}
RENAMED = {"n_epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size"}
REQUEST_KEYS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "integrations",
    "metadata",
}
UNSUPPORTED_RL = {"eval_interval", "eval_samples", "compute_multiplier", "reasoning_effort"}
STATUS = {
    "validating": "validating_files",
    "queued": "queued",
    "running": "running",
    "cancelling": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
_ITEM_REF = re.compile(r"^\{\{\s*item\.(answer|solution)\s*\}\}$")


class OpenAIError(Exception):
    """Rendered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def unsupported(param: str, why: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


# --- files -------------------------------------------------------------------------------------------


def file_object(row: UploadedFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": "fine-tune",
        "status": "processed",
        "status_details": None,
    }


def owned_file(session: Session, user: User, file_id: Any, param: str) -> UploadedFile:
    row = session.get(UploadedFile, file_id) if isinstance(file_id, str) else None
    if row is None or row.owner_id != user.id:
        raise OpenAIError(400, f"{param}: no uploaded file {file_id!r}", param=param, code="invalid_file")
    return row


def _converted(
    session: Session, user: User, row: UploadedFile, method: str, param: str, settings: Settings
) -> str:
    """The id of a file in papertrain's row format for `method` (the upload itself when it already is)."""
    out: list[dict[str, Any]] = []
    changed = False
    with Path(row.path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            item = json.loads(line)
            if method == "dpo" and "input" in item:
                try:
                    item = {
                        "prompt": item["input"]["messages"],
                        "chosen": item["preferred_output"],
                        "rejected": item["non_preferred_output"],
                    }
                except (KeyError, TypeError) as exc:
                    raise OpenAIError(
                        400,
                        f"{param}: line {lineno} is not a DPO row: missing {exc}; expected input.messages, "
                        "preferred_output and non_preferred_output",
                        param=param,
                        code="invalid_file",
                    ) from None
                changed = True
            elif method == "reinforcement" and "messages" in item and "prompt" not in item:
                item = {"prompt": item.pop("messages"), **item}
                changed = True
            out.append(item)
    if not changed:
        return row.id
    data = "".join(json.dumps(r) + "\n" for r in out).encode()
    name = f"{Path(row.filename).stem}.{method}.jsonl"
    return file_service.store_upload(session, user, name, io.BytesIO(data), settings).id


# --- jobs --------------------------------------------------------------------------------------------


def _grader_rewards(grader: Any) -> list[dict[str, Any]]:
    base = "method.reinforcement.grader"
    if not isinstance(grader, dict):
        raise unsupported(
            base, "a grader is required: string_check with operation 'eq' and reference '{{item.answer}}'"
        )
    if grader.get("type") != "string_check":
        raise unsupported(
            f"{base}.type", f"{grader.get('type')!r} graders are not available; use 'string_check'"
        )
    if grader.get("operation", "eq") != "eq":
        raise unsupported(f"{base}.operation", "only 'eq' is available (the accuracy reward)")
    if not _ITEM_REF.match(str(grader.get("reference", ""))):
        raise unsupported(
            f"{base}.reference",
            "use '{{item.answer}}' (or '{{item.solution}}'): the gold answer column of each row",
        )
    return [{"name": "accuracy"}]


def to_spec(
    session: Session, user: User, req: dict[str, Any], settings: Settings
) -> tuple[dict[str, Any], dict[str, str]]:
    """A papertrain job body for an OpenAI create request, and the map from spec params back to request
    params (for errors)."""
    for key in req:
        if key not in REQUEST_KEYS:
            raise unsupported(key, "not a fine-tuning job parameter papertrain accepts")
    if req.get("integrations"):
        raise unsupported(
            "integrations", "integrations are not available; metrics and events are in papertrain"
        )
    if req.get("metadata"):
        raise unsupported("metadata", "job metadata is not stored; use suffix to name the job")
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise OpenAIError(
            400, "model: required (a papertrain model: HF id, bundled:NAME or tiny:llama)", param="model"
        )
    method = req.get("method")
    if method is not None and req.get("hyperparameters"):
        raise unsupported("hyperparameters", "give hyperparameters inside method.<type>.hyperparameters")
    if method is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": req.get("hyperparameters") or {}}}
    if not isinstance(method, dict) or method.get("type") not in METHODS:
        kind = method.get("type") if isinstance(method, dict) else method
        raise unsupported("method.type", f"{kind!r} is not available; use one of {sorted(METHODS)}")
    kind = method["type"]
    algorithm = METHODS[kind]
    params = (method.get(kind) or {}).get("hyperparameters") or {}
    if not isinstance(params, dict):
        raise OpenAIError(
            400, f"method.{kind}.hyperparameters must be an object", param=f"method.{kind}.hyperparameters"
        )
    prefix = f"method.{kind}.hyperparameters"
    back = {"model": "model", "dataset.file_id": "training_file", "eval_dataset.file_id": "validation_file"}
    config: dict[str, Any] = {}
    for key, value in params.items():
        if value == "auto":
            continue
        if kind == "reinforcement" and key in UNSUPPORTED_RL:
            raise unsupported(f"{prefix}.{key}", "not available in papertrain's GRPO")
        if key == "learning_rate_multiplier":
            default = CONFIG_CLASSES[algorithm].model_fields["learning_rate"].default
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise OpenAIError(400, f"{prefix}.{key} must be a positive number", param=f"{prefix}.{key}")
            config["learning_rate"] = default * value
            back["config.learning_rate"] = f"{prefix}.{key}"
            continue
        name = RENAMED.get(str(key), str(key))  # JSON object keys
        config[name] = value
        back[f"config.{name}"] = f"{prefix}.{key}"
    if "seed" in req and req["seed"] is not None:
        config["seed"] = req["seed"]
        back["config.seed"] = "seed"
    training = owned_file(session, user, req.get("training_file"), "training_file")
    spec: dict[str, Any] = {
        "algorithm": algorithm,
        "model": req["model"],
        "dataset": {"file_id": _converted(session, user, training, kind, "training_file", settings)},
        "config": config,
    }
    if req.get("validation_file"):
        valid = owned_file(session, user, req["validation_file"], "validation_file")
        spec["eval_dataset"] = {
            "file_id": _converted(session, user, valid, kind, "validation_file", settings)
        }
    if req.get("suffix"):
        spec["name"] = str(req["suffix"])[:64]
    if kind == "reinforcement":
        spec["reward_funcs"] = _grader_rewards((method.get("reinforcement") or {}).get("grader"))
    return spec, back


def create_job(session: Session, user: User, req: dict[str, Any], settings: Settings) -> Job:
    spec, back = to_spec(session, user, req, settings)
    try:
        job = job_service.submit_job(session, user, spec, settings)
    except ApiError as exc:
        param = exc.info.param
        mapped = back.get(param or "", param)
        if param and param.startswith("config.") and param not in back:
            mapped = (
                f"method.{(req.get('method') or {}).get('type', 'supervised')}.hyperparameters.{param[7:]}"
            )
        raise OpenAIError(
            exc.status if exc.status != 422 else 400, exc.info.message, param=mapped, code=exc.info.code
        ) from None
    job.spec_submitted = req  # what the caller sent: the OpenAI request (retrieve reads it back)
    session.commit()
    return job


def job_object(job: Job) -> dict[str, Any]:
    resolved = job.spec_resolved or {}
    cfg = resolved.get("config") or {}
    req = job.spec_submitted if isinstance(job.spec_submitted, dict) else {}
    method = ALGORITHM_METHOD.get(job.algorithm, job.algorithm)
    default_lr = CONFIG_CLASSES[job.algorithm].model_fields["learning_rate"].default
    hyper = {
        "batch_size": cfg.get("per_device_train_batch_size", 0) * cfg.get("gradient_accumulation_steps", 1),
        "learning_rate_multiplier": (cfg.get("learning_rate") or default_lr) / default_lr,
        "n_epochs": cfg.get("num_train_epochs"),
    }
    if job.algorithm == "dpo":
        hyper["beta"] = cfg.get("beta")
    error = None
    if job.error:
        error = {
            "code": job.error.get("code", "job_failed"),
            "message": job.error.get("message", ""),
            "param": None,
        }
    succeeded = job.status.value == "succeeded"
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": int(job.created_at.timestamp()),
        "finished_at": int(job.finished_at.timestamp()) if job.finished_at else None,
        "error": error,
        "fine_tuned_model": f"{resolved.get('model')}:ft:{job.id}" if succeeded else None,
        "hyperparameters": hyper,
        "method": {"type": method, method: {"hyperparameters": hyper}},
        "model": resolved.get("model"),
        "organization_id": "papertrain",
        "result_files": [],
        "seed": cfg.get("seed"),
        "status": STATUS[job.status.value],
        "trained_tokens": None,
        "training_file": req.get("training_file") or (resolved.get("dataset") or {}).get("file_id"),
        "validation_file": req.get("validation_file"),
        "user_provided_suffix": req.get("suffix"),
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
    }


def list_jobs(session: Session, user: User, after: str | None, limit: int) -> tuple[list[Job], bool]:
    query = select(Job).where(Job.owner_id == user.id)
    if after:
        anchor = job_service.get_job(session, user, after)
        query = query.where(
            (Job.created_at < anchor.created_at)
            | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id))
        )
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    return jobs[:limit], len(jobs) > limit


def _event_object(ev: JobEvent) -> dict[str, Any]:
    data = ev.data or {}
    level, kind, message = "info", "message", ev.kind
    if ev.kind == "status":
        message = f"Job status: {data.get('to')}" + (f" ({data['reason']})" if data.get("reason") else "")
    elif ev.kind == "log":
        level = {"warning": "warn", "error": "error"}.get(str(data.get("level")), "info")
        message = str(data.get("message", ""))
    elif ev.kind == "metrics":
        kind = "metrics"
        metrics = data.get("metrics") or {}
        message = f"Step {ev.step}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float)
        )
        data = {"step": ev.step, **metrics}
    elif ev.kind == "checkpoint":
        message = f"Checkpoint saved at step {ev.step}"
    elif ev.kind == "progress":
        message = f"Step {data.get('step')}/{data.get('total_steps')}"
    elif ev.kind == "error":
        level, message = "error", str(data.get("message", "error"))
    elif ev.kind == "samples":
        message = f"Samples at step {ev.step}"
    return {
        "id": f"ftevent-{ev.id}",
        "object": "fine_tuning.job.event",
        "created_at": int(ev.created_at.timestamp()),
        "level": level,
        "message": message,
        "type": kind,
        "data": data,
    }


def list_events(
    session: Session, user: User, job_id: str, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; `after` is an event id from a previous page (older events come next)."""
    job_service.get_job(session, user, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        try:
            query = query.where(JobEvent.id < int(after.removeprefix("ftevent-")))
        except ValueError:
            raise OpenAIError(400, "after: not an event id from this API", param="after") from None
    rows = list(session.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
    return [_event_object(r) for r in rows[:limit]], len(rows) > limit


def list_checkpoints(session: Session, user: User, job_id: str) -> list[dict[str, Any]]:
    job = job_service.get_job(session, user, job_id)
    points, _ = job_service.list_checkpoints(session, user, job_id)
    history = job_service.metrics_history(session, user, job_id)
    model = (job.spec_resolved or {}).get("model")
    out = []
    for p in reversed(points):
        step = p["step"]
        metrics = {"step": step}
        for name, series in history.items():
            at = [pt["value"] for pt in series if pt["step"] == step]
            if at:
                metrics[name.replace("/", "_")] = at[-1]
        out.append(
            {
                "id": f"ftckpt-{job.id}-{step}",
                "object": "fine_tuning.job.checkpoint",
                "created_at": int(p["created_at"].timestamp()),
                "fine_tuned_model_checkpoint": f"{model}:ft:{job.id}:ckpt-step-{step}",
                "fine_tuning_job_id": job.id,
                "metrics": metrics,
                "step_number": step,
            }
        )
    return out
