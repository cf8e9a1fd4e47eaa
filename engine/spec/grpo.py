"""Online RL configs: GRPO and its variants (GFPO, PAPO, MiniLLM) and RLOO. TRL `GRPOConfig` names."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from engine.spec.base import SpecError, StrictModel, TrainingArgs, check_teacher_ref
from engine.spec.names import (
    REWARD_FUNCS,
    SEQUENCE_TOKEN_LOSS_TYPES,
    GroupFilter,
    GrpoLossType,
    ImportanceSamplingLevel,
    RewardAggregation,
    RewardName,
    ScaleRewards,
    VllmIsMode,
)


class GenerationArgs(TrainingArgs):
    """Sampling and batching shared by every online algorithm (TRL seed-era defaults)."""

    learning_rate: float = Field(1e-6, gt=0)
    num_generations: int = Field(8, ge=1)
    num_generations_eval: int | None = Field(None, ge=1)
    max_prompt_length: int | None = Field(512, ge=1)
    max_completion_length: int = Field(256, ge=1)
    generation_batch_size: int | None = Field(None, ge=1)
    steps_per_generation: int | None = Field(None, ge=1)
    num_iterations: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0)
    mask_truncated_completions: bool = False
    reward_weights: list[float] | None = None
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1.0)
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_mode: VllmIsMode = "sequence_mask"
    vllm_importance_sampling_cap: float | None = Field(
        None,
        gt=0,
        exclude=True,
        description="older name of vllm_importance_sampling_clip_max: its value is stored there",
    )
    vllm_importance_sampling_clip_max: float | None = Field(3.0, gt=0)
    vllm_importance_sampling_clip_min: float | None = Field(None, ge=0)
    max_policy_lag: int | None = Field(
        None,
        ge=0,
        description="refuse to train on samples generated more than this many optimizer steps ago; None: no limit",
    )
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = Field(0.6, ge=0, le=1)
    ref_model_sync_steps: int = Field(512, ge=1)
    disable_dropout: bool = False
    log_completions: bool = True
    num_completions_to_print: int | None = Field(4, ge=0)
    remove_unused_columns: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_is_cap(cls, data: Any) -> Any:
        """The older `vllm_importance_sampling_cap` is stored as `..._clip_max`: one value, one field."""
        if not isinstance(data, dict) or data.get("vllm_importance_sampling_cap") is None:
            return data
        cap = data["vllm_importance_sampling_cap"]
        clip_max = data.get("vllm_importance_sampling_clip_max")
        if clip_max is not None and clip_max != cap:
            raise SpecError(
                "vllm_importance_sampling_cap",
                f"vllm_importance_sampling_cap={cap} and vllm_importance_sampling_clip_max={clip_max} "
                "name the same bound; set only vllm_importance_sampling_clip_max",
            )
        data = dict(data)
        data["vllm_importance_sampling_clip_max"] = cap
        data["vllm_importance_sampling_cap"] = None
        return data

    @model_validator(mode="after")
    def _batching(self) -> GenerationArgs:
        ga, spg = self.gradient_accumulation_steps, self.steps_per_generation
        if spg is not None and self.generation_batch_size is not None:
            raise SpecError(
                "steps_per_generation",
                "set only one of steps_per_generation and generation_batch_size (the other is derived)",
            )
        if spg is not None and spg % ga and ga % spg:
            raise SpecError(
                "steps_per_generation",
                f"steps_per_generation={spg} must be a multiple of gradient_accumulation_steps={ga} "
                "(or divide it, as in the Lite PPO recipe): each optimizer step must use whole generations",
            )
        if (
            self.generation_batch_size is not None
            and self.generation_batch_size % self.per_device_train_batch_size
        ):
            raise SpecError(
                "generation_batch_size",
                "generation_batch_size must be a multiple of per_device_train_batch_size",
            )
        fields = type(self).model_fields
        vllm_fields = {
            f
            for f in fields
            if f.startswith("vllm_") and f != "vllm_mode" and getattr(self, f) != fields[f].default
        }
        if vllm_fields and not self.use_vllm:
            raise SpecError(
                sorted(vllm_fields)[0],
                f"{sorted(vllm_fields)[0]} only applies with use_vllm=True (vLLM generation)",
            )
        lo, hi = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if lo is not None and hi is not None and lo >= hi:
            raise SpecError(
                "vllm_importance_sampling_clip_min",
                "vllm_importance_sampling_clip_min must be below vllm_importance_sampling_clip_max",
            )
        if self.reward_weights is not None and not self.reward_weights:
            raise SpecError("reward_weights", "reward_weights must not be empty (omit it for equal weights)")
        return self

    @property
    def effective_steps_per_generation(self) -> int:
        if self.steps_per_generation is not None:
            return self.steps_per_generation
        if self.generation_batch_size is not None:
            return max(1, self.generation_batch_size // self.per_device_train_batch_size)
        return self.gradient_accumulation_steps


class GRPOConfig(GenerationArgs):
    # Group-relative advantages need two samples per prompt; a subclass whose advantage does not compare
    # samples of a group lowers this (and only this) rule.
    min_generations: ClassVar[int] = 2
    loss_type: GrpoLossType = "dapo"
    beta: float = Field(0.0, ge=0)
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float | None = Field(None, gt=0)
    delta: float | None = Field(None, gt=1.0, description="two-sided clipping cap on the unclipped ratio")
    importance_sampling_level: ImportanceSamplingLevel = "token"
    scale_rewards: ScaleRewards = "group"
    multi_objective_aggregation: RewardAggregation = "sum_then_normalize"
    top_entropy_quantile: float = Field(1.0, ge=0.0, le=1.0)
    use_bias_correction_kl: bool = False
    off_policy_mask_threshold: float | None = Field(None, ge=0)
    sapo_temperature_pos: float = Field(1.0, gt=0)
    sapo_temperature_neg: float = Field(1.05, gt=0)
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    entropy_coef: float = 0.0
    use_adaptive_entropy: bool = False
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    entropy_coef_delta: float = 0.005
    entropy_target: float = 0.2
    cast_lm_head_to_fp32: bool = False
    dynamic_sampling: bool = Field(
        False, description="DAPO dynamic sampling: drop zero-variance groups and refill"
    )
    max_dynamic_sampling_rounds: int = Field(4, ge=1)
    num_remains_in_group: int | None = Field(None, ge=1, description="GFPO: keep k completions per group")
    group_filter: GroupFilter | None = None

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _scale_bool(cls, v: object) -> object:
        if v is True:
            return "group"
        if v is False:
            return "none"
        return v

    @model_validator(mode="after")
    def _grpo(self) -> GRPOConfig:
        if self.num_generations < self.min_generations:
            raise SpecError(
                "num_generations",
                f"num_generations must be >= {self.min_generations}: group-relative advantages need at "
                "least two samples",
            )
        if self.loss_type == "cispo" and self.epsilon_high is None:
            raise SpecError(
                "epsilon_high",
                "loss_type 'cispo' caps the ratio at the absolute value epsilon_high; set it explicitly "
                "(ScaleRL uses epsilon_high=5.0; leaving it unset would cap every ratio at epsilon=0.2)",
            )
        if self.loss_type != "cispo" and self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise SpecError(
                "epsilon_high", f"epsilon_high={self.epsilon_high} must be >= epsilon={self.epsilon}"
            )
        if self.delta is not None and self.delta <= 1 + (self.epsilon_high or self.epsilon):
            raise SpecError(
                "delta",
                "delta should exceed 1 + epsilon_high (it caps the unclipped ratio above the clip band)",
            )
        if (
            self.importance_sampling_level == "sequence_token"
            and self.loss_type not in SEQUENCE_TOKEN_LOSS_TYPES
        ):
            raise SpecError(
                "importance_sampling_level",
                "importance_sampling_level 'sequence_token' (GSPO-token) supports loss_type "
                + ", ".join(SEQUENCE_TOKEN_LOSS_TYPES),
            )
        if (
            self.loss_type == "vespo"
            and self.use_vllm
            and self.vllm_importance_sampling_mode.startswith("sequence")
        ):
            raise SpecError(
                "vllm_importance_sampling_mode",
                "loss_type 'vespo' with vLLM correction needs a token_* vllm_importance_sampling_mode",
            )
        if self.num_remains_in_group is not None:
            if self.num_remains_in_group >= self.num_generations:
                raise SpecError(
                    "num_remains_in_group", "num_remains_in_group must be smaller than num_generations"
                )
            if self.group_filter is None:
                raise SpecError(
                    "group_filter",
                    "num_remains_in_group needs group_filter ('shortest' or 'reward_per_token')",
                )
        return self

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def effective_epsilon_high(self) -> float:
        return self.epsilon_high if self.epsilon_high is not None else self.epsilon


class GFPOConfig(GRPOConfig):
    num_remains_in_group: int | None = Field(None, ge=1)
    group_filter: GroupFilter | None = "shortest"


class PAPOConfig(GRPOConfig):
    loss_type: Literal["grpo", "dapo"] = "grpo"
    perception_loss_weight: float = 0.1
    mask_ratio: float = Field(0.3, ge=0, le=1)
    mask_type: Literal["random", "patch", "grid"] = "random"
    der_loss_weight1: float = 0.03
    der_loss_weight2: float = 0.03


class MiniLLMConfig(GRPOConfig):
    min_generations: ClassVar[int] = 1  # one sample learns from the teacher (its group advantage is 0)
    teacher_model_name_or_path: str | None = Field(
        None, description="required: the teacher (HF id, local path, 'bundled:...' or 'tiny:llama')"
    )
    rkl_advantage: bool = True
    single_step_decomposition: bool = True
    kd_temperature: float = Field(1.0, gt=0)
    gamma: float = Field(0.0, ge=0, le=1)
    length_normalization: bool = True

    @model_validator(mode="after")
    def _teacher(self) -> MiniLLMConfig:
        check_teacher_ref(self.teacher_model_name_or_path, "MiniLLM")
        return self


class RLOOConfig(GenerationArgs):
    beta: float = Field(0.05, ge=0)
    num_generations: int = Field(2, ge=2)
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float | None = Field(None, gt=0)
    normalize_advantages: bool = False
    reward_clip_range: tuple[float, float] | None = None


def _param_of(reward: RewardName, default: Any, **kwargs: Any) -> Any:
    """A RewardFuncSpec field that belongs to one reward (set on any other reward, it is refused)."""
    return Field(default, json_schema_extra={"reward": reward}, **kwargs)


class RewardFuncSpec(StrictModel):
    """One reward function of an online job. Built-ins run on the worker; nothing user-supplied is executed."""

    name: RewardName
    max_completion_len: int | None = _param_of(
        "soft_overlong_punishment",
        None,
        ge=1,
        description="soft_overlong_punishment: unset = the job's max_completion_length",
    )
    soft_punish_cache: int | None = _param_of(
        "soft_overlong_punishment",
        None,
        ge=0,
        description="soft_overlong_punishment: unset = a fifth of a derived max_completion_len, else 0",
    )
    ngram_size: int = _param_of("repetition_penalty", 3, ge=1)
    max_penalty: float = _param_of("repetition_penalty", -1.0, le=0)
    max_len: int | None = _param_of("cosine_scaled", None, ge=1)
    model: str | None = _param_of("reward_model", None)
    url: str | None = _param_of("http", None)
    timeout_s: float = _param_of("http", 30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _only_its_params(cls, data: Any) -> Any:
        """A parameter of another reward is an error, not silently ignored (defaults, as in a resolved
        spec, are fine)."""
        if not isinstance(data, dict) or data.get("name") not in REWARD_PARAMS:
            return data
        allowed = REWARD_PARAMS[data["name"]]
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if key == "name" or key in allowed or field is None or value == field.default:
                continue
            takes = f"takes only {sorted(allowed)}" if allowed else "takes no parameters"
            raise SpecError(key, f"{key} does not apply to the {data['name']!r} reward, which {takes}")
        return data

    @model_validator(mode="after")
    def _params(self) -> RewardFuncSpec:
        cache, limit = self.soft_punish_cache, self.max_completion_len
        if (
            self.name == "soft_overlong_punishment"
            and cache is not None
            and limit is not None
            and cache > limit
        ):
            raise SpecError(
                "soft_punish_cache",
                f"soft_punish_cache={cache} must not exceed max_completion_len={limit} "
                "(DAPO uses 4,096 of 20,480; leave both unset to derive them from max_completion_length)",
            )
        if self.name == "reward_model" and not self.model:
            raise SpecError(
                "model", "reward_model needs 'model' (a sequence-classification model id or path)"
            )
        if self.name == "http" and not self.url:
            raise SpecError("url", "http reward needs 'url'")
        return self


# The parameters each reward reads (from the fields' own `reward` marks); any other one set on it is refused.
REWARD_PARAMS: dict[str, frozenset[str]] = {
    name: frozenset(
        field
        for field, info in RewardFuncSpec.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("reward") == name
    )
    for name in REWARD_FUNCS
}


def derive_overlong_lengths(func: dict[str, Any], max_completion_length: int) -> dict[str, Any]:
    """A soft_overlong_punishment entry with its lengths written out (other entries unchanged).

    max_completion_len unset: the job's max_completion_length, so the punishment follows a budget the
    user changes; soft_punish_cache unset with it: a fifth of that length (DAPO's 4,096 of 20,480).
    An explicit max_completion_len keeps its meaning, with cache 0 (a hard cut) unless given.
    """
    if func.get("name") != "soft_overlong_punishment" or func.get("max_completion_len") is not None:
        return func
    out = dict(func, max_completion_len=max_completion_length)
    if out.get("soft_punish_cache") is None:
        out["soft_punish_cache"] = max_completion_length // 5
    return out
