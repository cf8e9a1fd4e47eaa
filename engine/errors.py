"""Typed job errors: what went wrong, whose it is to fix, and how. Torch-free.

    info = classify(exc)   # {"code", "category", "message", "param", "remediation"}

`category` is `user` when the job's own input is at fault (spec, dataset, a training run that diverged) and
`platform` otherwise. The engine sends `classify(exc)` in its `error` event; the worker keeps it as the job's
error. Messages that reach the api carry no tracebacks and no absolute server paths (`scrub`): those stay
in the server logs.
"""

from __future__ import annotations

import re
from typing import Any

# An absolute path not preceded by a word character, ':' or '/' (so URLs keep their path).
_ABS_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+([\w.@+-]*)")


class JobError(Exception):
    """An error the engine raises on purpose, already classified."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        category: str = "user",
        param: str | None = None,
        remediation: str | None = None,
        step: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.category, self.param = code, category, param
        self.remediation, self.step = remediation, step


class NonFiniteLoss(JobError):
    """Raised where the optimizer steps, before a non-finite update reaches the weights."""

    def __init__(self, step: int, what: str = "loss") -> None:
        super().__init__(
            f"the {what} became NaN or infinite at optimizer step {step}; the run diverged",
            code="non_finite_loss",
            param="config.learning_rate",
            remediation="lower config.learning_rate, set config.max_grad_norm, or check the data of that step; "
            "the job resumes from its last checkpoint when retried",
            step=step,
        )


def scrub(text: str) -> str:
    """`text` with absolute paths cut to their last component (`.../name`)."""
    return _ABS_PATH.sub(lambda m: ".../" + m.group(1) if m.group(1) else "...", text)


def classify(exc: BaseException) -> dict[str, Any]:
    """The typed error of an exception that ended a job."""
    from engine.data.formats import DataFormatError
    from engine.spec.base import SpecError

    if isinstance(exc, JobError):
        info: dict[str, Any] = {
            "code": exc.code,
            "category": exc.category,
            "message": str(exc),
            "param": exc.param,
            "remediation": exc.remediation,
        }
        if exc.step is not None:
            info["step"] = exc.step
    elif isinstance(exc, SpecError):
        info = {
            "code": "invalid_spec",
            "category": "user",
            "message": str(exc),
            "param": exc.field,
            "remediation": f"fix {exc.field} and submit the job again",
        }
    elif isinstance(exc, DataFormatError):
        info = {
            "code": "invalid_dataset",
            "category": "user",
            "message": f"the dataset cannot be used: {exc}",
            "param": "dataset",
            "remediation": "fix the rows named in the message (or pick another dataset) and submit again",
        }
    else:
        info = {
            "code": "engine_error",
            "category": "platform",
            "message": f"{type(exc).__name__}: {exc}",
            "param": None,
            "remediation": "retry the job; if it fails again, report it to the operator with the job id",
        }
    info["message"] = scrub(str(info["message"]))
    return info
