"""Offline configs: SFT (+BEMA), DPO, KTO, BCO, CPO, reward modelling, and GKD/GOLD distillation.
TRL names and seed-era defaults; options that only exist in newer TRL are accepted too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from engine.spec.base import SpecError, StrictModel, TrainingArgs, check_teacher_ref
from engine.spec.names import DPO_LOSS_TYPES, CpoLossType, FDivergence, KtoLossType, SftLossType


class BEMASpec(StrictModel):
    """Bias-corrected EMA of weights (arXiv 2508.00180); TRL `BEMACallback` parameters."""

    update_freq: int = Field(400, ge=1)
    ema_power: float = Field(0.5, ge=0)
    bias_power: float = Field(0.2, ge=0)
    lag: int = Field(10, ge=0)
    update_after: int = Field(0, ge=0)
    multiplier: float = Field(1.0, gt=0)
    min_ema_multiplier: float = Field(0.0, ge=0, le=1)


class SFTConfig(TrainingArgs):
    learning_rate: float = Field(2e-5, gt=0)
    loss_type: SftLossType = "nll"
    max_length: int | None = Field(1024, ge=1)
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_start"
    packing: bool = False
    packing_strategy: Literal["bfd", "bfd_split", "bfd-requeue", "wrapped"] = "bfd"  # bfd-requeue: older name
    padding_free: bool = False
    completion_only_loss: bool | None = None
    assistant_only_loss: bool = False
    dataset_text_field: str = "text"
    eos_token: str | None = None
    pad_to_multiple_of: int | None = Field(None, ge=1)
    disable_dropout: bool = False
    shuffle_dataset: bool = False
    bema: BEMASpec | None = None


class DPOConfig(TrainingArgs):
    learning_rate: float = Field(1e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    label_smoothing: float | None = Field(None, ge=0, lt=1, description="None: 0, or 1e-3 for exo_pair")
    discopop_tau: float = Field(0.05, gt=0)
    f_divergence_type: FDivergence = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    ld_alpha: float | None = Field(None, ge=0, le=1)
    use_weighting: bool = False
    rpo_alpha: float | None = Field(None, ge=0)
    reference_free: bool = False
    max_length: int | None = Field(1024, ge=1)
    max_prompt_length: int | None = Field(512, ge=1)
    max_completion_length: int | None = Field(None, ge=1)
    truncation_mode: Literal["keep_start", "keep_end"] = "keep_end"
    padding_free: bool = False
    precompute_ref_log_probs: bool = False
    precompute_ref_batch_size: int | None = Field(None, ge=1)
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = Field(0.6, ge=0, le=1)
    ref_model_sync_steps: int = Field(512, ge=1)

    @field_validator("loss_type", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _dpo(self) -> DPOConfig:
        if not self.loss_type:
            raise SpecError("loss_type", "loss_type must name at least one loss")
        unknown = [n for n in self.loss_type if n not in DPO_LOSS_TYPES]
        if unknown:
            raise SpecError(
                "loss_type", f"unknown DPO loss_type {unknown[0]!r}; known: {list(DPO_LOSS_TYPES)}"
            )
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise SpecError(
                "loss_weights",
                f"loss_weights has {len(self.loss_weights)} entries but loss_type has {len(self.loss_type)}",
            )
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise SpecError(
                "label_smoothing",
                "exo_pair needs label_smoothing > 0 (log of 0 otherwise); the paper uses 1e-3",
            )
        if self.use_weighting and {"aot", "aot_pair", "aot_unpaired"} & set(self.loss_type):
            raise SpecError("use_weighting", "use_weighting (WPO) is not defined for the aot losses")
        if "robust" in self.loss_type and (self.label_smoothing or 0) >= 0.5:
            raise SpecError(
                "label_smoothing",
                "robust needs label_smoothing < 0.5 (the loss divides by 1 - 2*label_smoothing)",
            )
        return self

    @property
    def effective_label_smoothing(self) -> float:
        """exo_pair with the smoothing left unset uses the paper's 1e-3 (the seed-era default behaviour)."""
        if self.label_smoothing is not None:
            return self.label_smoothing
        return 1e-3 if "exo_pair" in self.loss_type else 0.0


class KTOConfig(TrainingArgs):
    learning_rate: float = Field(1e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: KtoLossType = "kto"
    desirable_weight: float = Field(1.0, ge=0)
    undesirable_weight: float = Field(1.0, ge=0)
    max_length: int | None = Field(1024, ge=1)
    max_prompt_length: int | None = Field(512, ge=1)
    max_completion_length: int | None = Field(None, ge=1)
    padding_free: bool = False
    precompute_ref_log_probs: bool = False

    @model_validator(mode="after")
    def _kto(self) -> KTOConfig:
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise SpecError(
                "per_device_train_batch_size",
                "kto needs per_device_train_batch_size >= 2 (its KL reference pairs mismatched rows of a batch)",
            )
        return self


class BCOConfig(TrainingArgs):
    learning_rate: float = Field(5e-7, gt=0)
    beta: float = Field(0.1, gt=0)
    max_length: int | None = Field(1024, ge=1)
    max_prompt_length: int | None = Field(512, ge=1)
    max_completion_length: int | None = Field(None, ge=1)
    padding_free: bool = False
    prompt_sample_size: int = Field(1024, ge=1)
    min_density_ratio: float = 0.5
    max_density_ratio: float = 10.0


class CPOConfig(TrainingArgs):
    learning_rate: float = Field(1e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    loss_type: CpoLossType = "sigmoid"
    cpo_alpha: float = Field(1.0, ge=0)
    simpo_gamma: float = 0.5
    alpha: float = 0.0
    max_length: int | None = Field(1024, ge=1)
    max_prompt_length: int | None = Field(512, ge=1)
    max_completion_length: int | None = Field(None, ge=1)
    padding_free: bool = False

    @model_validator(mode="before")
    @classmethod
    def _alphapo_has_no_nll(cls, data: Any) -> Any:
        """AlphaPO is SimPO with the alpha reward shape and no NLL term: cpo_alpha resolves to 0, so the stored
        config says what trains, and an explicit non-zero cpo_alpha is refused rather than ignored."""
        if not isinstance(data, dict) or data.get("loss_type") != "alphapo":
            return data
        if data.get("cpo_alpha", 0.0) != 0.0:
            raise SpecError(
                "cpo_alpha",
                "loss_type 'alphapo' has no NLL term (cpo_alpha 0); drop cpo_alpha, or use loss_type 'simpo' "
                "with alpha for the alpha reward shape plus an NLL term",
            )
        return {**data, "cpo_alpha": 0.0}


class RewardConfig(TrainingArgs):
    learning_rate: float = Field(1e-4, gt=0)
    max_length: int | None = Field(1024, ge=1)
    center_rewards_coefficient: float | None = Field(None, ge=0)


class GKDConfig(SFTConfig):
    lmbda: float = Field(0.5, ge=0, le=1)
    beta: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(0.9, gt=0)
    max_new_tokens: int = Field(128, ge=1)
    seq_kd: bool = False
    teacher_model_name_or_path: str | None = Field(
        None, description="required: the teacher (HF id, local path, 'bundled:...' or 'tiny:llama')"
    )
    disable_dropout: bool = True

    @model_validator(mode="after")
    def _teacher(self) -> GKDConfig:
        check_teacher_ref(self.teacher_model_name_or_path, "distillation")
        return self


class GOLDConfig(GKDConfig):
    learning_rate: float = Field(1e-7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_completion_length: int = Field(128, ge=1)
    num_generations: int = Field(1, ge=1)
    generation_batch_size: int | None = Field(None, ge=1)
    use_uld_loss: bool = False
    use_extended_uld: bool = True
    uld_token_merge_strategy: Literal["observed", "bayesian"] = "observed"
    uld_use_hybrid_loss: bool = False
    uld_hybrid_matched_weight: float | None = None
    uld_hybrid_unmatched_weight: float | None = None
    uld_crossentropy_weight: float = 0.0
    uld_distillation_weight: float = 1.0
    uld_student_temperature: float = Field(1.0, gt=0)
    uld_teacher_temperature: float = Field(1.0, gt=0)
    uld_skip_student_eos: bool = True
    uld_skip_teacher_eos: bool = True
    teacher_tokenizer_name_or_path: str | None = None
    use_vllm: bool = False

    @model_validator(mode="after")
    def _gold(self) -> GOLDConfig:
        rows = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if (
            self.generation_batch_size is not None
            and self.generation_batch_size * self.num_generations != rows
        ):
            raise SpecError(
                "generation_batch_size",
                f"generation_batch_size * num_generations must equal per_device_train_batch_size * "
                f"gradient_accumulation_steps = {rows} (the rows of one optimizer step); leave it unset",
            )
        if self.max_length is not None and self.max_completion_length >= self.max_length:
            raise SpecError(
                "max_completion_length",
                f"max_completion_length={self.max_completion_length} must be smaller than "
                f"max_length={self.max_length} to leave room for the prompt",
            )
        return self
