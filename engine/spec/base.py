"""Pieces shared by every job spec: strict models, model/dataset/hardware references, LoRA, distribution.

Torch-free on purpose: api, worker, SDK and engine all import this package. Names follow TRL / HF
`TrainingArguments` so that a config block from the paper index pastes in unchanged.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# One rule for every number of a spec: finite, and bounded so that it fits the 32-bit columns and the
# loops that use it. Counts named like steps, lengths or batch sizes get tighter ceilings.
INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 1e9
NAMED_LIMITS: tuple[tuple[Callable[[str], bool], int, str], ...] = (  # (name predicate, ceiling, what)
    (lambda n: n.endswith("_steps") or n == "num_iterations", 10_000_000, "steps"),
    (lambda n: n.endswith(("_length", "_len", "_cache")) or n == "max_new_tokens", 1_048_576, "tokens"),
    (lambda n: n.endswith("_batch_size") or n.startswith("num_generations"), 65_536, "items"),
    (lambda n: n == "num_rows", 10_000_000, "rows"),
    (lambda n: n == "num_train_epochs", 1_000, "epochs"),
)


def _types_in(annotation: Any) -> set[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        return set().union(*(_types_in(a) for a in typing.get_args(annotation)))
    return {annotation}


def check_number(name: str, value: Any) -> None:
    """Raise ValueError when `value` (a number, or numbers inside lists/dicts) breaks the spec-wide rule."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_number(name, item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            check_number(f"{name}.{key}", item)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (NaN and Infinity are refused), got {value}")
    if not isinstance(value, int | float):
        return
    limit, unit = (INT_LIMIT, "") if isinstance(value, int) else (int(FLOAT_LIMIT), "")
    for matches, ceiling, what in NAMED_LIMITS:
        if matches(name.rsplit(".", 1)[-1]):
            limit, unit = ceiling, f" {what}"
            break
    if abs(value) > limit:
        raise ValueError(f"{name} = {value} is out of range: at most {limit:,}{unit} in magnitude")


class SpecError(ValueError):
    """A cross-field validation error that names the field to fix (the API reports it as `param`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default. Every number is finite and
    bounded (`check_number`), and true/false is not a number."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if field is None or not isinstance(value, bool):
                    continue
                kinds = _types_in(field.annotation)
                if bool not in kinds and Any not in kinds and kinds & {int, float}:
                    raise SpecError(name, f"{name} must be a number, not {str(value).lower()}")
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name:
            check_number(info.field_name, value)
        return value


BUNDLED_MODELS = {"smollm2-135m-instruct"}
# random weights built from a config, with a code-built tokenizer (tests, CPU demos): their Llama sizes
TINY_ARCHS: dict[str, dict[str, int]] = {
    "llama": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
    },
    # The same size with 2 wider heads: vLLM's attention needs head_dim >= 32.
    "llama-hd32": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
    },
}
TINY_MODELS = set(TINY_ARCHS) | {"vlm"}  # tiny:vlm: engine.multimodal.vlm
# The generated sets every worker has (engine.data.builtin); each job class names the ones with its row format.
BUILTIN_DATASETS = ("arithmetic", "shapes", "chat", "preferences", "unpaired")
BUILTIN_DEFAULT_ROWS = 1000  # rows a built-in set generates when `num_rows` is not given


def check_model_ref(value: str) -> str:
    """`bundled:NAME`, `tiny:ARCH`, a local path, or a Hugging Face hub id (`org/name`)."""
    value = value.strip()
    if not value:
        raise ValueError(
            "model must not be empty: use an HF id, a local path, 'bundled:smollm2-135m-instruct' or 'tiny:llama'"
        )
    if value.startswith("bundled:") and value.removeprefix("bundled:") not in BUNDLED_MODELS:
        raise ValueError(
            f"unknown bundled model {value!r}; known: {sorted('bundled:' + m for m in BUNDLED_MODELS)}"
        )
    if value.startswith("tiny:") and value.removeprefix("tiny:") not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {value!r}; known: {sorted('tiny:' + m for m in TINY_MODELS)}")
    return value


def check_teacher_ref(value: str | None, who: str) -> None:
    """A teacher is required by `who` (e.g. "MiniLLM") and must be a model reference like the student's."""
    if value is None:
        raise SpecError(
            "teacher_model_name_or_path",
            f"{who} needs a teacher: set teacher_model_name_or_path to an HF id, a local path "
            "(e.g. a previous job's final/ folder), 'bundled:smollm2-135m-instruct' or 'tiny:llama'",
        )
    try:
        check_model_ref(value)
    except ValueError as exc:
        raise SpecError("teacher_model_name_or_path", str(exc)) from None


class DatasetSpec(StrictModel):
    """Exactly one source: a built-in generated set, a local path, an uploaded file id, or an HF dataset id."""

    builtin: str | None = Field(None, description=f"one of {sorted(BUILTIN_DATASETS)}")
    path: str | None = Field(None, description="JSONL or Parquet file on the worker's filesystem")
    file_id: str | None = Field(None, description="id returned by POST /v1/files")
    hf_id: str | None = Field(None, description="Hugging Face dataset id (needs hub access on the worker)")
    split: str = "train"
    config_name: str | None = None
    num_rows: int | None = Field(
        None, ge=1, description="use only the first N rows (built-ins: generate N rows)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("builtin", "path", "file_id", "hf_id") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "dataset needs exactly one of 'builtin', 'path', 'file_id', 'hf_id' "
                f'(got {given or "none"}), e.g. {{"builtin": "arithmetic"}}'
            )
        if self.builtin and self.builtin not in BUILTIN_DATASETS:
            raise ValueError(f"unknown built-in dataset {self.builtin!r}; known: {sorted(BUILTIN_DATASETS)}")
        return self


class HardwareSpec(StrictModel):
    """Where the job runs: `cpu`, or a GPU machine with `gpus` devices. Picks the worker queue."""

    accelerator: Literal["cpu", "gpu"] = "cpu"
    gpus: int = Field(0, ge=0, le=64)

    @model_validator(mode="after")
    def _consistent(self) -> HardwareSpec:
        if self.accelerator == "cpu" and self.gpus:
            raise ValueError("hardware.gpus must be 0 when accelerator is 'cpu' (set accelerator: 'gpu')")
        if self.accelerator == "gpu" and not self.gpus:
            raise ValueError("hardware.gpus must be >= 1 when accelerator is 'gpu'")
        return self

    @property
    def queue(self) -> str:
        return "cpu" if self.accelerator == "cpu" else f"gpu-{self.gpus}"


class LoraSpec(StrictModel):
    """peft `LoraConfig` fields (same defaults)."""

    peft_type: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    lora_alpha: int = Field(8, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = Field(
        None,
        description="unset: peft's default for the architecture (Llama: q_proj, v_proj); "
        '"all-linear" for every linear layer, or a list of module names',
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    task_type: Literal["CAUSAL_LM", "SEQ_CLS"] | None = Field(
        None,
        description="accepted so a LoraConfig pastes in; papertrain sets it from the algorithm "
        "(SEQ_CLS for reward models, CAUSAL_LM otherwise)",
    )


class DeepSpeedConfig(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer_device: Literal["none", "cpu"] = "none"
    offload_param_device: Literal["none", "cpu"] = "none"
    zero3_init_flag: bool = False
    gradient_clipping: float | None = None


class DistributedSpec(StrictModel):
    """The accelerate launch config of the paper index's ZeRO entry, as JSON."""

    distributed_type: Literal["NO", "MULTI_GPU", "DEEPSPEED"] = "NO"
    num_processes: int = Field(1, ge=1, le=1024, description="processes in all (over every machine)")
    num_machines: int = Field(1, ge=1, le=128, description="machines the processes are spread over")
    deepspeed_config: DeepSpeedConfig | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None

    @model_validator(mode="after")
    def _ds(self) -> DistributedSpec:
        if self.deepspeed_config is not None and self.distributed_type != "DEEPSPEED":
            raise ValueError("deepspeed_config needs distributed_type: 'DEEPSPEED'")
        if self.num_processes % self.num_machines:
            raise ValueError(
                f"num_processes={self.num_processes} must be a multiple of num_machines={self.num_machines}: "
                "every machine runs the same number of processes"
            )
        return self


class TrainingArgs(StrictModel):
    """The HF `TrainingArguments` subset every algorithm shares (HF defaults unless an algorithm overrides)."""

    learning_rate: float = Field(5e-5, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(
        -1, ge=-1, description="optimizer steps (>= 1); -1 = derive from num_train_epochs; 0 is refused"
    )
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr", "inverse_sqrt"
    ] = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    adam_epsilon: float = Field(1e-8, gt=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    optim: Literal["adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop"] = Field(
        "adamw_torch_fused",
        description="adamw_torch_fused: AdamW with torch's fused kernel on every device torch has one for "
        "(CPU included), else AdamW; adamw_torch: AdamW without it; adafactor: transformers' Adafactor with a "
        "fixed learning rate; sgd, adagrad, rmsprop: torch's",
    )
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(500, ge=1, description="checkpoint every N optimizer steps")
    save_total_limit: int | None = Field(2, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    precision: Literal["float32", "bf16-autocast", "bf16-pure", "fp16-autocast"] | None = Field(
        None,
        description="float32; bf16-autocast (float32 weights, bf16 forward: what bf16 true means); bf16-pure "
        "(weights, gradients and optimizer states in bf16); fp16-autocast (float32 weights, fp16 forward, "
        "loss scaling; GPU only). Unset: from distributed.mixed_precision, fp16, bf16; else bf16-autocast "
        "on GPU, float32 on CPU",
    )
    bf16: bool | None = Field(
        None, description="bf16 autocast over float32 weights (precision 'bf16-autocast'); None: on GPU only"
    )
    fp16: bool = False
    gradient_checkpointing: bool = False
    disable_dropout: bool = True
    shuffle_dataset: bool = True
    dataloader_num_workers: int = Field(0, ge=0)
    report_to: Any = None
    output_dir: str | None = Field(None, description="ignored: the platform owns output locations")

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_steps must be >= 1, or -1 to train for num_train_epochs")
        return value


JsonDict = Annotated[dict[str, Any], Field(default_factory=dict)]
