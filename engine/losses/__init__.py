"""Every objective of the paper index as a registered pure function of tensors and masks.

    from engine.losses import PolicyBatch, PolicyLossConfig, GlobalCounts, policy_loss
    out = policy_loss(PolicyBatch(logps, mask, advantages), PolicyLossConfig.from_spec(cfg), counts)
    out.loss.backward(); metrics = out.metrics      # detached 0-d tensors, no host sync

Families (`registry_names(family)` lists the names): policy (GRPO variants and RLOO), dpo, kto,
bco, cpo, reward, sft, distill. Losses divide by global counts of the optimizer step, so loops call
them once per micro-batch and sum. Importing this package never imports transformers, vllm or
deepspeed. Formulas and signatures: docs/losses.md.
"""

# importing the family modules fills the registries
from engine.functional import GlobalCounts
from engine.losses.batches import PolicyBatch, PreferenceBatch, UnpairedBatch
from engine.losses.bema import BEMA
from engine.losses.cpo import CPOLossConfig, alphapo_reward, cpo_loss
from engine.losses.distill import (
    DistillLossConfig,
    distill_loss,
    generalized_jsd_per_token,
    minillm_rkl_advantages,
)
from engine.losses.dpo import (
    DPOLossConfig,
    DPOState,
    dpo_loss,
    f_divergence_score,
    ld_sequence_logps,
    log_sum_squared_probs,
    wpo_weights,
)
from engine.losses.masks import (
    entropy_threshold,
    high_entropy_mask,
    mask_truncated_completions,
    off_policy_mask,
    truncated_rows,
    vllm_is_metrics,
    vllm_is_weights,
)
from engine.losses.papo import papo_perception_loss, perception_kl
from engine.losses.policy import PolicyLossConfig, importance_log_ratio, policy_loss
from engine.losses.registry import FAMILIES, LossOutput, UnknownLossError, get_loss, register, registry_names
from engine.losses.reward import reward_loss
from engine.losses.sft import sft_loss
from engine.losses.state import RunningMean
from engine.losses.unpaired import (
    BCOLossConfig,
    BCOState,
    KTOLossConfig,
    UnpairedCounts,
    bco_loss,
    kto_loss,
    kto_reference_point,
    udm_density_weights,
)

__all__ = [
    "BEMA",
    "FAMILIES",
    "BCOLossConfig",
    "BCOState",
    "CPOLossConfig",
    "DPOLossConfig",
    "DPOState",
    "DistillLossConfig",
    "GlobalCounts",
    "KTOLossConfig",
    "LossOutput",
    "PolicyBatch",
    "PolicyLossConfig",
    "PreferenceBatch",
    "RunningMean",
    "UnknownLossError",
    "UnpairedBatch",
    "UnpairedCounts",
    "alphapo_reward",
    "bco_loss",
    "cpo_loss",
    "distill_loss",
    "dpo_loss",
    "entropy_threshold",
    "f_divergence_score",
    "generalized_jsd_per_token",
    "get_loss",
    "high_entropy_mask",
    "importance_log_ratio",
    "kto_loss",
    "kto_reference_point",
    "ld_sequence_logps",
    "log_sum_squared_probs",
    "mask_truncated_completions",
    "minillm_rkl_advantages",
    "off_policy_mask",
    "papo_perception_loss",
    "perception_kl",
    "policy_loss",
    "register",
    "registry_names",
    "reward_loss",
    "sft_loss",
    "truncated_rows",
    "udm_density_weights",
    "vllm_is_metrics",
    "vllm_is_weights",
    "wpo_weights",
]
