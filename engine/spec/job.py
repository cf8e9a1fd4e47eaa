"""A job spec: a discriminated union on `algorithm`. `config` holds the algorithm's TRL-named
hyperparameters; everything else says what to train on and where."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, cast, get_args

from pydantic import Field, TypeAdapter, field_validator, model_validator

from engine.spec.base import (
    BUILTIN_DATASETS,
    TINY_ARCHS,
    DatasetSpec,
    DistributedSpec,
    HardwareSpec,
    LoraSpec,
    SpecError,
    StrictModel,
    check_model_ref,
)
from engine.spec.grpo import (
    GFPOConfig,
    GRPOConfig,
    MiniLLMConfig,
    PAPOConfig,
    RewardFuncSpec,
    RLOOConfig,
    derive_overlong_lengths,
)
from engine.spec.offline import (
    BCOConfig,
    CPOConfig,
    DPOConfig,
    GKDConfig,
    GOLDConfig,
    KTOConfig,
    RewardConfig,
    SFTConfig,
)
from engine.spec.precision import check_precision, precision_of

# Model references known to be text-only (image jobs need a vision-language model such as tiny:vlm).
TEXT_ONLY_MODEL_PREFIXES = ("tiny:llama", "bundled:")
IMAGE_BUILTINS = frozenset({"shapes"})


class _JobBase(StrictModel):
    """Fields every job has. Each algorithm's class adds its `algorithm` tag and `config`, and says (as class
    variables) which `engine.algorithms` module trains it and which built-in sets have its row format. Every
    list of algorithms (ALGORITHMS, CONFIG_CLASSES, RUNNABLE_ALGORITHMS, ...) is derived from these classes."""

    # The engine.algorithms module that trains it; None: the spec validates (every paper-index block is
    # accepted) but the job is refused at submission until its loop lands.
    loop: ClassVar[str | None] = None
    builtin_datasets: ClassVar[tuple[str, ...]] = ()

    name: str | None = Field(None, max_length=200, description="display name")
    model: str = Field(..., description="HF id, local path, 'bundled:smollm2-135m-instruct' or 'tiny:llama'")
    dataset: DatasetSpec
    eval_dataset: DatasetSpec | None = None
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)
    peft_config: LoraSpec | None = None
    distributed: DistributedSpec | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_model_ref(v)

    @model_validator(mode="after")
    def _fits(self) -> _JobBase:
        algorithm = getattr(self, "algorithm", None)
        fits = self.builtin_datasets
        for field, ds in (("dataset", self.dataset), ("eval_dataset", self.eval_dataset)):
            if ds is not None and ds.builtin and ds.builtin not in fits:
                raise SpecError(
                    f"{field}.builtin",
                    f"the built-in {ds.builtin!r} set does not fit algorithm {algorithm!r}; use one of {sorted(fits)}",
                )
        cfg = getattr(self, "config", None)
        if (
            cfg is not None
            and getattr(cfg, "use_vllm", False)
            and getattr(cfg, "vllm_mode", None) == "colocate"
            and self.hardware.accelerator != "gpu"
        ):
            raise SpecError(
                "config.vllm_mode",
                "config.vllm_mode 'colocate' runs vLLM inside the trainer and needs a GPU worker: set hardware "
                "{accelerator: 'gpu', gpus: 1}, or vllm_mode 'server' (a vLLM server process, CPU too)",
            )
        if (
            self.distributed
            and self.distributed.num_processes > max(1, self.hardware.gpus)
            and self.hardware.accelerator == "gpu"
        ):
            raise SpecError(
                "distributed.num_processes",
                f"distributed.num_processes={self.distributed.num_processes} exceeds hardware.gpus={self.hardware.gpus}",
            )
        task = "SEQ_CLS" if algorithm == "reward" else "CAUSAL_LM"  # what the trainer builds
        if self.peft_config is not None and self.peft_config.task_type not in (None, task):
            raise SpecError(
                "peft_config.task_type",
                f"peft_config.task_type {self.peft_config.task_type!r} does not fit algorithm {algorithm!r}, "
                f"which trains a {task} model; drop task_type or set {task!r}",
            )
        if cfg is not None:
            check_precision(self)
        return self


class _OnlineJob(_JobBase):
    """Generates completions and scores them with `reward_funcs` while it trains."""

    builtin_datasets: ClassVar[tuple[str, ...]] = ("arithmetic",)
    reward_funcs: list[RewardFuncSpec] = Field(default_factory=lambda: [RewardFuncSpec(name="accuracy")])

    @model_validator(mode="before")
    @classmethod
    def _overlong_lengths(cls, data: Any) -> Any:
        """Write out the lengths soft_overlong_punishment derives from config.max_completion_length."""
        if not isinstance(data, dict) or not isinstance(data.get("reward_funcs"), list):
            return data
        config = data.get("config")
        budget = (
            config.get("max_completion_length")
            if isinstance(config, dict)
            else getattr(config, "max_completion_length", None)
        )
        if budget is None:
            config_class: Any = cls.model_fields["config"].annotation
            budget = config_class.model_fields["max_completion_length"].default
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            return data  # the config's own validation names the field
        funcs = [
            derive_overlong_lengths(f, budget) if isinstance(f, dict) else f for f in data["reward_funcs"]
        ]
        return {**data, "reward_funcs": funcs}

    @model_validator(mode="after")
    def _weights(self) -> _OnlineJob:
        w = self.config.reward_weights  # type: ignore[attr-defined]
        if w is not None and len(w) != len(self.reward_funcs):
            raise SpecError(
                "config.reward_weights",
                f"config.reward_weights has {len(w)} entries for {len(self.reward_funcs)} reward_funcs",
            )
        if not self.reward_funcs:
            raise SpecError(
                "reward_funcs", 'reward_funcs must name at least one reward (e.g. [{"name": "accuracy"}])'
            )
        return self


class _DistillJob(_JobBase):
    """Trains the student on a teacher's token distributions (the teacher is in the config)."""

    loop = "distill"
    builtin_datasets = ("chat",)


class SFTJob(_JobBase):
    loop = "sft"
    builtin_datasets = ("chat",)
    algorithm: Literal["sft"]
    config: SFTConfig = Field(default_factory=SFTConfig)


class DPOJob(_JobBase):
    loop = "dpo"
    builtin_datasets = ("preferences",)
    algorithm: Literal["dpo"]
    config: DPOConfig = Field(default_factory=DPOConfig)


class KTOJob(_JobBase):
    loop = "kto"
    builtin_datasets = ("preferences", "unpaired")
    algorithm: Literal["kto"]
    config: KTOConfig = Field(default_factory=KTOConfig)


class BCOJob(_JobBase):
    loop = "bco"
    builtin_datasets = ("preferences", "unpaired")
    algorithm: Literal["bco"]
    config: BCOConfig = Field(default_factory=BCOConfig)


class CPOJob(_JobBase):
    loop = "cpo"
    builtin_datasets = ("preferences",)
    algorithm: Literal["cpo"]
    config: CPOConfig = Field(default_factory=CPOConfig)


class RewardJob(_JobBase):
    loop = "reward"
    builtin_datasets = ("preferences",)
    algorithm: Literal["reward"]
    config: RewardConfig = Field(default_factory=RewardConfig)


class GRPOJob(_OnlineJob):
    loop = "grpo"
    builtin_datasets = ("arithmetic", "shapes")  # shapes: image prompts, for a vision-language model
    algorithm: Literal["grpo"]
    config: GRPOConfig = Field(default_factory=GRPOConfig)


class GFPOJob(_OnlineJob):
    loop = "grpo"
    builtin_datasets = ("arithmetic", "shapes")
    algorithm: Literal["gfpo"]
    config: GFPOConfig = Field(default_factory=GFPOConfig)


class PAPOJob(_OnlineJob):
    loop = "papo"
    builtin_datasets = ("shapes",)
    algorithm: Literal["papo"]
    config: PAPOConfig = Field(default_factory=PAPOConfig)


class MiniLLMJob(_OnlineJob):
    loop = "minillm"
    algorithm: Literal["minillm"]
    config: MiniLLMConfig = Field(default_factory=MiniLLMConfig)


class RLOOJob(_OnlineJob):
    loop = "rloo"
    builtin_datasets = ("arithmetic", "shapes")
    algorithm: Literal["rloo"]
    config: RLOOConfig = Field(default_factory=RLOOConfig)


class GKDJob(_DistillJob):
    algorithm: Literal["gkd"]
    config: GKDConfig = Field(default_factory=GKDConfig)


class GOLDJob(_DistillJob):
    algorithm: Literal["gold"]
    config: GOLDConfig = Field(default_factory=GOLDConfig)


JobSpec = Annotated[
    SFTJob
    | DPOJob
    | KTOJob
    | BCOJob
    | CPOJob
    | RewardJob
    | GRPOJob
    | GFPOJob
    | PAPOJob
    | MiniLLMJob
    | RLOOJob
    | GKDJob
    | GOLDJob,
    Field(discriminator="algorithm"),
]
JOB_CLASSES: dict[str, type[_JobBase]] = {
    get_args(cls.model_fields["algorithm"].annotation)[0]: cls for cls in get_args(get_args(JobSpec)[0])
}
ALGORITHMS = tuple(JOB_CLASSES)
CONFIG_CLASSES: dict[str, type[StrictModel]] = {
    name: cast("type[StrictModel]", cls.model_fields["config"].annotation)
    for name, cls in JOB_CLASSES.items()
}
RUNNABLE_ALGORITHMS = frozenset(name for name, cls in JOB_CLASSES.items() if cls.loop is not None)
ONLINE_ALGORITHMS = frozenset(name for name, cls in JOB_CLASSES.items() if issubclass(cls, _OnlineJob))
DISTILL_ALGORITHMS = frozenset(name for name, cls in JOB_CLASSES.items() if issubclass(cls, _DistillJob))
AlgorithmFamily = Literal["offline", "online", "distillation"]


def family_of(algorithm: str) -> AlgorithmFamily:
    """offline: learns from the dataset's rows; online: generates and scores completions with rewards;
    distillation: learns a teacher's distributions, on sampled completions too."""
    if algorithm in ONLINE_ALGORITHMS:
        return "online"
    return "distillation" if algorithm in DISTILL_ALGORITHMS else "offline"


# built-in set -> the algorithms whose row format it has (a mismatch is a 422)
BUILTIN_DATASET_ALGORITHMS: dict[str, frozenset[str]] = {
    ds: frozenset(name for name, cls in JOB_CLASSES.items() if ds in cls.builtin_datasets)
    for ds in BUILTIN_DATASETS
}


# Names that stand for "your model here" in examples (e.g. the paper index's "teacher-model"): a spec naming
# one validates as written, but a job with it could only fail when the worker tries to download it.
PLACEHOLDER_MODEL = re.compile(
    r"^(?:(?:teacher|student|reward|base|policy|your|my)[-_ ]?)?model(?:[-_ ]?(?:name|id|path))?$|^<.*>$|^path/to/",
    re.IGNORECASE,
)


def placeholder_model(spec: Any) -> SpecError | None:
    """The first model reference of a spec that is a placeholder, as an error naming its field."""
    refs = [("model", spec.model)]
    teacher = getattr(spec.config, "teacher_model_name_or_path", None)
    if teacher:
        refs.append(("config.teacher_model_name_or_path", teacher))
    refs += [
        (f"reward_funcs.{i}.model", r.model) for i, r in enumerate(getattr(spec, "reward_funcs", []) or [])
    ]
    for field, ref in refs:
        if ref and PLACEHOLDER_MODEL.match(ref.strip()):
            return SpecError(
                field,
                f"{ref!r} is a placeholder, not a model: name a real model (a Hugging Face id such as "
                "Qwen/Qwen3-1.7B, a local path or a previous job's final/ folder, 'bundled:smollm2-135m-instruct' "
                "or 'tiny:llama')",
            )
    return None


def unsupported(spec: Any) -> SpecError | None:
    """Why a valid spec cannot be trained by this engine yet (None when it can). The api answers 422 with it
    and the engine refuses it too, so an accepted option is never silently ignored."""
    placeholder = placeholder_model(spec)
    if placeholder is not None:
        return placeholder
    if spec.algorithm not in RUNNABLE_ALGORITHMS:
        return SpecError(
            "algorithm",
            f"algorithm {spec.algorithm!r} validates but cannot be trained yet; "
            f"runnable now: {sorted(RUNNABLE_ALGORITHMS)}",
        )
    problem = _distributed_unsupported(spec) or _multimodal_unsupported(spec)
    if problem is not None:
        return problem
    problem = _options_unsupported(spec)
    if problem is not None:
        return problem
    if spec.algorithm in ONLINE_ALGORITHMS:
        cfg = spec.config
        processes = spec.distributed.num_processes if spec.distributed is not None else 1
        completions = cfg.per_device_train_batch_size * cfg.effective_steps_per_generation * processes
        if completions % cfg.num_generations:
            return SpecError(
                "config.per_device_train_batch_size",
                f"per_device_train_batch_size x steps_per_generation x processes = {completions} completions "
                f"per generation is not a multiple of num_generations={cfg.num_generations}: a generation "
                f"samples whole groups (a group may be spread over processes), so raise "
                f"per_device_train_batch_size, steps_per_generation or distributed.num_processes until the "
                f"product is a multiple of {cfg.num_generations}",
            )
    if spec.algorithm in ONLINE_ALGORITHMS and spec.eval_dataset is not None:
        return SpecError(
            "eval_dataset", f"evaluation is not available for {spec.algorithm!r} yet; remove eval_dataset"
        )
    return None


# Options a GKD/GOLD config inherits (from SFT, or TRL's GOLD) that the distillation loop does not honour:
# field -> (the values it may take, why, and what to do).
DISTILL_FIXED: dict[str, tuple[tuple[object, ...], str]] = {
    "bema": ((None,), "the weight EMA is kept by SFT only; remove config.bema"),
    "loss_type": (("nll",), "the loss is the teacher-student divergence; remove config.loss_type"),
    "completion_only_loss": (
        (None, True),
        "distillation always trains on the completion only; remove config.completion_only_loss",
    ),
    "assistant_only_loss": (
        (False,),
        "distillation trains on the last assistant turn only; set assistant_only_loss false",
    ),
    "use_uld_loss": (
        (False,),
        "cross-tokenizer distillation (ULD) is not supported by this engine yet; use a teacher that shares "
        "the student's tokenizer and set use_uld_loss false",
    ),
    "use_vllm": (
        (False,),
        "distillation samples with transformers generate in this engine; set use_vllm false",
    ),
}

# vLLM's attention kernels need heads of at least this many dimensions (tiny:llama has 16).
VLLM_MIN_HEAD_DIM = 32


def _tokenizer_family(ref: str) -> str | None:
    """Which tokenizer a built-in model reference has (the tiny text models share one); None: only the
    model's files tell (a local folder, a hub id, tiny:vlm)."""
    if ref.startswith("tiny:") and ref.removeprefix("tiny:") in TINY_ARCHS:
        return "the tiny character tokenizer"
    return f"{ref}'s tokenizer" if ref.startswith("bundled:") else None


def _options_unsupported(spec: Any) -> SpecError | None:
    """Options of a valid config that the algorithm's loop cannot honour. Decided here, at submission; the
    loops only assert them."""
    cfg = spec.config
    lora = spec.peft_config is not None
    teacher = getattr(cfg, "teacher_model_name_or_path", None)
    student_tok, teacher_tok = _tokenizer_family(spec.model), _tokenizer_family(teacher or "")
    if student_tok and teacher_tok and student_tok != teacher_tok:
        return SpecError(
            "config.teacher_model_name_or_path",
            f"the teacher {teacher!r} has {teacher_tok} and the student {spec.model!r} {student_tok}: "
            "distillation compares the two models token by token, so pick a teacher with the student's tokenizer",
        )
    if getattr(cfg, "sync_ref_model", False):
        if spec.algorithm == "dpo" and (cfg.reference_free or cfg.precompute_ref_log_probs or lora):
            other = (
                "reference_free"
                if cfg.reference_free
                else "precompute_ref_log_probs"
                if cfg.precompute_ref_log_probs
                else "peft_config (the LoRA reference is the frozen base)"
            )
            return SpecError(
                "config.sync_ref_model",
                f"sync_ref_model needs a separate reference model, which {other} does not have; "
                "remove one of the two",
            )
        if spec.algorithm in ONLINE_ALGORITHMS and (cfg.beta == 0 or lora):
            return SpecError(
                "config.sync_ref_model",
                "sync_ref_model needs a reference model to move: set beta > 0 and train without peft_config "
                "(with LoRA the reference is the base model with the adapter disabled, which cannot be mixed)",
            )
    if spec.algorithm in DISTILL_ALGORITHMS:
        for field, (allowed, why) in DISTILL_FIXED.items():
            given = getattr(cfg, field, allowed[0])
            if given not in allowed:
                return SpecError(
                    f"config.{field}", f"{field}={given!r} is not available for {spec.algorithm}: {why}"
                )
        generations = getattr(cfg, "num_generations", 1)
        if cfg.per_device_train_batch_size % generations:
            return SpecError(
                "config.num_generations",
                f"num_generations={generations} must divide per_device_train_batch_size="
                f"{cfg.per_device_train_batch_size}: each micro-batch holds whole groups of samples of a prompt",
            )
    if getattr(cfg, "use_vllm", False) and spec.model.startswith("tiny:") and spec.model[5:] in TINY_ARCHS:
        arch = TINY_ARCHS[spec.model.removeprefix("tiny:")]
        head_dim = arch["hidden_size"] // arch["num_attention_heads"]
        if head_dim < VLLM_MIN_HEAD_DIM:
            servable = sorted(
                f"tiny:{n}"
                for n, a in TINY_ARCHS.items()
                if a["hidden_size"] // a["num_attention_heads"] >= VLLM_MIN_HEAD_DIM
            )
            return SpecError(
                "model",
                f"{spec.model} has attention heads of {head_dim} dimensions and vLLM needs at least "
                f"{VLLM_MIN_HEAD_DIM}; use {' or '.join(servable)} (same size, wider heads) or set use_vllm false",
            )
    return None


def _multimodal_unsupported(spec: Any) -> SpecError | None:
    """Image jobs (PAPO, or a built-in image set) need a vision-language model and transformers sampling."""
    images = (
        spec.algorithm == "papo"
        or spec.model == "tiny:vlm"
        or (spec.dataset is not None and spec.dataset.builtin in IMAGE_BUILTINS)
    )
    if not images:
        return None
    what = (
        "PAPO"
        if spec.algorithm == "papo"
        else f"the built-in {spec.dataset.builtin!r} set"
        if spec.dataset is not None and spec.dataset.builtin in IMAGE_BUILTINS
        else spec.model
    )
    if spec.model.startswith(TEXT_ONLY_MODEL_PREFIXES):
        return SpecError(
            "model",
            f"{what} needs a vision-language model, and {spec.model!r} reads text only; use 'tiny:vlm' or an "
            "image-text-to-text model (a local folder or hub id)",
        )
    if getattr(spec.config, "use_vllm", False):
        return SpecError(
            "config.use_vllm", f"{what} samples with transformers (image prompts); remove use_vllm"
        )
    return None


# Algorithms whose loops are verified to give the single-process result on several processes (KTO's KL
# estimate and BCO's running mean are taken over every rank's rows). The others filter or teach in ways
# not checked across ranks yet.
DISTRIBUTED_ALGORITHMS = frozenset(
    {"sft", "dpo", "kto", "bco", "cpo", "reward", "gkd", "gold", "grpo", "gfpo", "rloo", "minillm"}
)


def _distributed_unsupported(spec: Any) -> SpecError | None:
    """The multi-process and DeepSpeed options the engine cannot honour (yet)."""
    dist = spec.distributed
    if dist is None or (dist.num_processes == 1 and dist.distributed_type == "NO"):
        return None
    cfg, ds = spec.config, dist.deepspeed_config
    deepspeed = dist.distributed_type == "DEEPSPEED"
    stage = ds.zero_stage if ds is not None else 0
    if spec.algorithm not in DISTRIBUTED_ALGORITHMS:
        return SpecError(
            "distributed",
            f"{spec.algorithm!r} runs in one process only for now; multi-process and DeepSpeed training "
            f"support {sorted(DISTRIBUTED_ALGORITHMS)}. Remove 'distributed'",
        )
    if ds is not None and ds.zero3_init_flag:
        return SpecError(
            "distributed.deepspeed_config.zero3_init_flag",
            "zero3_init_flag is not supported: the model is loaded whole, then partitioned. Remove it",
        )
    if ds is not None and ds.offload_param_device != "none" and stage != 3:
        return SpecError(
            "distributed.deepspeed_config.offload_param_device",
            "parameter offload needs zero_stage 3; raise zero_stage or set offload_param_device 'none'",
        )
    if ds is not None and ds.offload_optimizer_device != "none" and stage == 0:
        return SpecError(
            "distributed.deepspeed_config.offload_optimizer_device",
            "optimizer offload needs zero_stage 1-3; raise zero_stage or set offload_optimizer_device 'none'",
        )
    if deepspeed and getattr(cfg, "sync_ref_model", False):
        return SpecError(
            "config.sync_ref_model",
            "sync_ref_model is not available with DeepSpeed; use distributed_type MULTI_GPU or remove it",
        )
    if deepspeed and getattr(cfg, "bema", None) is not None:
        return SpecError("config.bema", "bema is not available with DeepSpeed; remove config.bema")
    if spec.algorithm in ONLINE_ALGORITHMS:
        per_process = cfg.per_device_train_batch_size * cfg.effective_steps_per_generation
        if getattr(cfg, "num_remains_in_group", None) is not None and per_process % cfg.num_generations:
            return SpecError(
                "config.num_remains_in_group",
                f"the GFPO filter ranks the completions of a group on one process, but {per_process} "
                f"completions per process and generation cut groups of {cfg.num_generations}: make "
                "per_device_train_batch_size x steps_per_generation a multiple of num_generations",
            )
        if getattr(cfg, "use_vllm", False) and getattr(cfg, "vllm_mode", None) == "colocate":
            return SpecError(
                "config.vllm_mode",
                "vllm_mode 'colocate' runs vLLM inside one training process; with several processes set "
                "vllm_mode 'server' (one vLLM server that every process samples from) or "
                "distributed.num_processes 1",
            )
    return None


_ADAPTER: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def parse_job_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a raw dict into one of the job classes (raises pydantic.ValidationError)."""
    return _ADAPTER.validate_python(data)


def resolve(spec: JobSpec) -> dict[str, Any]:
    """The fully expanded config the engine sees: every default written out (JSON-safe), the precision
    mode included (`config.precision`, derived from the other settings when unset)."""
    resolved = spec.model_dump(mode="json")
    resolved["config"]["precision"] = precision_of(spec)
    return resolved
