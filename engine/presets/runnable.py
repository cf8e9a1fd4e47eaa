"""Can a preset run as shipped on the live workers, and what is the smallest change that makes it run.

    status = preset_status(get_preset("dr-grpo"), WorkerCapabilities(queues=frozenset({"cpu"})))
    status.runnable, status.param, status.reason, status.change

A preset is checked the way a submission is: merged with a stand-in model and a built-in dataset that fits
(a request always names its own), validated, passed through `engine.spec.unsupported` (what the engine
refuses), then held against what the live workers can do (`WorkerCapabilities`). So when the engine stops
refusing something, or a worker with vLLM, DeepSpeed or hub access comes up, the answer changes with no
edit here. `change` is a request fragment (merged over the preset like any request) that was checked to
make the preset run; it is None when no change to the job does (the method needs a worker that is not
there, or a value only the user can choose, such as a real teacher model). Torch-free.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from engine.presets import Preset, apply_preset
from engine.spec import parse_job_spec, unsupported
from engine.spec.base import SpecError
from engine.spec.grpo import GenerationArgs
from engine.spec.job import BUILTIN_DATASET_ALGORITHMS

STAND_IN_MODEL = "tiny:llama-hd32"  # tiny:llama with heads vLLM can serve
STAND_IN_VISION_MODEL = "tiny:vlm"  # for methods that train vision-language models only
VISION_ALGORITHMS = frozenset({"papo"})
LOCAL_PREFIXES = ("tiny:", "bundled:", "/", "./", "../", "~")


@dataclass(frozen=True)
class WorkerCapabilities:
    """What the live workers can do, together: the hardware queues they consume ("cpu", "gpu-1", ...),
    and whether one of them generates with vLLM, launches DeepSpeed, or downloads from the model hub."""

    queues: frozenset[str] = frozenset({"cpu"})
    vllm: bool = False
    deepspeed: bool = False
    hub_access: bool = False


@dataclass(frozen=True)
class PresetStatus:
    runnable: bool
    param: str | None = None
    reason: str | None = None
    change: dict[str, Any] | None = None


def capability_problem(
    spec: Any, caps: WorkerCapabilities, pinned_models: dict[str, str]
) -> SpecError | None:
    """Why no live worker can run a valid, engine-supported spec (None when one can).

    pinned_models: field -> model reference the preset itself fixes (a teacher); the user's own `model` is
    theirs to choose and is not held against the preset."""
    queue = spec.hardware.queue
    if queue not in caps.queues:
        live = ", ".join(sorted(caps.queues)) or "none"
        return SpecError("hardware", f"no live worker consumes the {queue!r} queue (live queues: {live})")
    if getattr(spec.config, "use_vllm", False) and not caps.vllm:
        return SpecError(
            "config.use_vllm", "no live worker can generate with vLLM; start a GPU worker with vLLM"
        )
    dist = spec.distributed
    if dist is not None and dist.distributed_type == "DEEPSPEED" and not caps.deepspeed:
        return SpecError("distributed", "no live worker can launch DeepSpeed; start a worker with DeepSpeed")
    for field, ref in pinned_models.items():
        if not caps.hub_access and not ref.startswith(LOCAL_PREFIXES):
            return SpecError(
                field,
                f"{ref!r} is a Hugging Face hub id and no live worker reports hub access; name a model the "
                "workers hold (a local path or a bundled: model) that shares the student's tokenizer",
            )
    return None


def _request(preset: Preset, change: dict[str, Any]) -> dict[str, Any]:
    fits = [name for name, algos in BUILTIN_DATASET_ALGORITHMS.items() if preset.algorithm in algos]
    model = STAND_IN_VISION_MODEL if preset.algorithm in VISION_ALGORITHMS else STAND_IN_MODEL
    return _merge({"model": model, "dataset": {"builtin": fits[0]}}, change)


def _problem(preset: Preset, change: dict[str, Any], caps: WorkerCapabilities) -> SpecError | None:
    try:
        spec = parse_job_spec(apply_preset(preset, _request(preset, change)))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][1:]) or "config"
        return SpecError(field, first["msg"].removeprefix("Value error, "))
    except ValueError as exc:
        return SpecError("config", str(exc))
    problem = unsupported(spec)
    if problem is not None:
        return problem
    pinned = {}
    teacher = preset.config.get("teacher_model_name_or_path")
    if teacher and "teacher_model_name_or_path" not in change.get("config", {}):
        pinned["config.teacher_model_name_or_path"] = teacher
    return capability_problem(spec, caps, pinned)


def _candidate(
    preset: Preset, change: dict[str, Any], problem: SpecError, caps: WorkerCapabilities
) -> dict[str, Any] | None:
    """One more edit that removes `problem`, or None when no job change can."""
    if problem.field == "config.per_device_train_batch_size":
        cfg = parse_job_spec(apply_preset(preset, _request(preset, change))).config
        if not isinstance(cfg, GenerationArgs):
            return None
        batch, spg, groups = (
            cfg.per_device_train_batch_size,
            cfg.effective_steps_per_generation,
            cfg.num_generations,
        )
        fit = next(b for b in range(batch, batch + groups + 1) if (b * spg) % groups == 0)
        return {"config": {"per_device_train_batch_size": fit}}
    if problem.field == "distributed":
        return {"distributed": None}
    if problem.field == "hardware" and "cpu" in caps.queues:
        return {"hardware": {"accelerator": "cpu"}}
    if "vllm_mode" in str(problem) and caps.vllm:  # colocated vLLM needs a GPU; a vLLM server runs on CPU
        return {"config": {"vllm_mode": "server"}}
    return None


def _merge(change: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """`more` over `change`, as a request goes over a preset: config key by key, other keys whole."""
    out = copy.deepcopy(change)
    for key, value in more.items():
        if key == "config":
            out["config"] = {**out.get("config", {}), **value}
        else:
            out[key] = value
    return out


def preset_status(preset: Preset, caps: WorkerCapabilities) -> PresetStatus:
    """Whether `preset` runs as shipped on workers with `caps`, and if not what stops it and the smallest
    verified change (a request fragment) that makes it run."""
    problem = _problem(preset, {}, caps)
    if problem is None:
        return PresetStatus(runnable=True)
    reason = str(problem).split(": ", 1)[-1]
    change: dict[str, Any] = {}
    current: SpecError | None = problem
    for _ in range(3):  # each edit removes one obstacle; presets have at most two stacked
        if current is None:
            break
        more = _candidate(preset, change, current, caps)
        if more is None:
            change = {}
            break
        change = _merge(change, more)
        current = _problem(preset, change, caps)
    return PresetStatus(
        runnable=False,
        param=problem.field,
        reason=reason,
        change=change if change and current is None else None,
    )
