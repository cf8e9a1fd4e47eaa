"""Pieces shared by every job spec: strict models, model/dataset/hardware references, LoRA, distribution.

Torch-free on purpose: api, worker, SDK and engine all import this package. Names follow TRL / HF
`TrainingArguments` so that a config block from the paper index pastes in unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


BUNDLED_MODELS = {"smollm2-135m-instruct"}
TINY_MODELS = {"llama"}  # random weights built from a config, with a code-built tokenizer (tests)
# Which algorithms each built-in set feeds (its format is known in advance, so a mismatch is a 422).
BUILTIN_DATASET_ALGORITHMS = {
    "arithmetic": {"grpo", "gfpo", "papo", "minillm", "rloo"},
    "chat": {"sft", "gkd", "gold"},
    "preferences": {"dpo", "cpo", "reward", "kto", "bco"},
    "unpaired": {"kto", "bco"},
}
BUILTIN_DATASETS = set(BUILTIN_DATASET_ALGORITHMS)
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
    target_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None


class DeepSpeedConfig(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer_device: Literal["none", "cpu"] = "none"
    offload_param_device: Literal["none", "cpu"] = "none"
    zero3_init_flag: bool = False
    gradient_clipping: float | None = None


class DistributedSpec(StrictModel):
    """The accelerate launch config of the paper index's ZeRO entry, as JSON."""

    distributed_type: Literal["NO", "MULTI_GPU", "DEEPSPEED"] = "NO"
    num_processes: int = Field(1, ge=1)
    deepspeed_config: DeepSpeedConfig | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None

    @model_validator(mode="after")
    def _ds(self) -> DistributedSpec:
        if self.deepspeed_config is not None and self.distributed_type != "DEEPSPEED":
            raise ValueError("deepspeed_config needs distributed_type: 'DEEPSPEED'")
        return self


class TrainingArgs(StrictModel):
    """The HF `TrainingArguments` subset every algorithm shares (HF defaults unless an algorithm overrides)."""

    learning_rate: float = Field(5e-5, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="optimizer steps; -1 = derive from num_train_epochs")
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
    optim: Literal["adamw_torch", "adamw_torch_fused", "sgd"] = "adamw_torch"
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(500, ge=1, description="checkpoint every N optimizer steps")
    save_total_limit: int | None = Field(2, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    bf16: bool | None = Field(None, description="None: bf16 on GPU, float32 on CPU")
    fp16: bool = False
    gradient_checkpointing: bool = False
    disable_dropout: bool = True
    shuffle_dataset: bool = True
    dataloader_num_workers: int = Field(0, ge=0)
    report_to: Any = None
    output_dir: str | None = Field(None, description="ignored: the platform owns output locations")


JsonDict = Annotated[dict[str, Any], Field(default_factory=dict)]


class SpecError(ValueError):
    """A cross-field validation error that names the field to fix (the API reports it as `param`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
