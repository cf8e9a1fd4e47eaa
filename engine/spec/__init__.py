"""The job contract: pure Pydantic v2, no torch. Imported by api, worker, SDK and engine.

from engine.spec import parse_job_spec, resolve
spec = parse_job_spec({"algorithm": "sft", "model": "tiny:llama", "dataset": {"builtin": "chat"}})
"""

from engine.spec.base import DatasetSpec, HardwareSpec, LoraSpec, StrictModel
from engine.spec.job import (
    ALGORITHMS,
    CONFIG_CLASSES,
    RUNNABLE_ALGORITHMS,
    JobSpec,
    parse_job_spec,
    resolve,
    unsupported,
)

__all__ = [
    "ALGORITHMS",
    "CONFIG_CLASSES",
    "RUNNABLE_ALGORITHMS",
    "DatasetSpec",
    "HardwareSpec",
    "JobSpec",
    "LoraSpec",
    "StrictModel",
    "parse_job_spec",
    "resolve",
    "unsupported",
]
