"""GRPO-family policy losses, registered in the `policy` family.

    out = policy_loss(PolicyBatch(logps, mask, advantages, ...), PolicyLossConfig.from_spec(cfg), counts)

`policy_loss` dispatches on `cfg.loss_type` through the registry. Every registered function runs
the same pipeline, in this order: importance ratio (token / sequence = GSPO / sequence_token =
GSPO-token) -> per-token surrogate of the loss type -> off-policy sequence mask -> high-entropy
token mask -> vLLM importance-sampling weight -> k3 KL penalty (optionally bias-corrected) ->
aggregation by global counts (`engine.functional.aggregate`) -> entropy bonus.

Normalisation (the loops sum micro-batch losses and never divide by gradient_accumulation_steps):
grpo/sapo = sum of per-sequence token means / global sequences; bnpo/dapo/cispo/vespo = global
token mean; dr_grpo = sum / (global sequences * max_completion_length); luspo = sum / global
sequences. Metrics are contributions under the same global counts, so they sum over micro-batches.

Not here: rewards and advantages (`engine.advantages`), log-prob / entropy computation, gathering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.functional import GlobalCounts, aggregate, clamp_count, k3_kl, masked_sum
from engine.losses.batches import PolicyBatch
from engine.losses.masks import IS_MODES, high_entropy_mask, off_policy_mask, vllm_is_weights
from engine.losses.registry import LossOutput, get_loss, register

IS_LEVELS = ("token", "sequence", "sequence_token")


@dataclass(frozen=True)
class PolicyLossConfig:
    """The loss-relevant fields of a `GRPOConfig` (TRL names; seed-era defaults).

    `vllm_is_correction` is already `use_vllm and vllm_importance_sampling_correction`;
    `vllm_is_clip_max` is `vllm_importance_sampling_clip_max` (the spec stores the older `..._cap` there).
    `entropy_coef` is the coefficient in force for this step (adaptive entropy: the loop replaces it).
    """

    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    importance_sampling_level: str = "token"
    beta: float = 0.0
    use_bias_correction_kl: bool = False
    top_entropy_quantile: float = 1.0
    off_policy_mask_threshold: float | None = None
    vllm_is_correction: bool = False
    vllm_is_mode: str = "sequence_mask"
    vllm_is_clip_min: float | None = None
    vllm_is_clip_max: float | None = 3.0
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    max_completion_length: int | None = 256
    entropy_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.importance_sampling_level not in IS_LEVELS:
            raise ValueError(
                f"importance_sampling_level {self.importance_sampling_level!r} unknown; known: {list(IS_LEVELS)}"
            )
        if self.vllm_is_mode not in IS_MODES:
            raise ValueError(
                f"vllm_importance_sampling_mode {self.vllm_is_mode!r} unknown; known: {list(IS_MODES)}"
            )
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise ValueError(f"top_entropy_quantile must be in [0, 1], got {self.top_entropy_quantile}")

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def effective_epsilon_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @classmethod
    def from_spec(cls, config: Any) -> PolicyLossConfig:
        """Build from an `engine.spec` GRPOConfig (or a subclass; an RLOOConfig gives loss_type 'rloo').

        RLOO puts its KL into the reward, so its loss config has beta = 0; its loss has no vLLM
        importance-sampling weight, so vllm_is_correction is off whatever use_vllm says.
        """

        def get(name: str, default: Any) -> Any:
            return getattr(config, name, default)

        is_rloo = not hasattr(config, "loss_type")
        clip_max = get("vllm_importance_sampling_clip_max", 3.0)
        return cls(
            loss_type="rloo" if is_rloo else config.loss_type,
            epsilon=get("epsilon", 0.2),
            epsilon_high=get("epsilon_high", None),
            delta=get("delta", None),
            importance_sampling_level=get("importance_sampling_level", "token"),
            beta=0.0 if is_rloo else get("beta", 0.0),
            use_bias_correction_kl=get("use_bias_correction_kl", False),
            top_entropy_quantile=get("top_entropy_quantile", 1.0),
            off_policy_mask_threshold=get("off_policy_mask_threshold", None),
            vllm_is_correction=bool(
                not is_rloo and get("use_vllm", False) and get("vllm_importance_sampling_correction", True)
            ),
            vllm_is_mode=get("vllm_importance_sampling_mode", "sequence_mask"),
            vllm_is_clip_min=get("vllm_importance_sampling_clip_min", None),
            vllm_is_clip_max=clip_max,
            sapo_temperature_pos=get("sapo_temperature_pos", 1.0),
            sapo_temperature_neg=get("sapo_temperature_neg", 1.05),
            vespo_k_pos=get("vespo_k_pos", 2.0),
            vespo_lambda_pos=get("vespo_lambda_pos", 3.0),
            vespo_k_neg=get("vespo_k_neg", 3.0),
            vespo_lambda_neg=get("vespo_lambda_neg", 2.0),
            max_completion_length=get("max_completion_length", None),
            entropy_coef=get("entropy_coef", 0.0),
        )


# --- importance ratio ------------------------------------------------------------------------------


def importance_log_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor, level: str) -> Tensor:
    """log rho. logps (B, T) with grad, old_logps (B, T), mask (B, T).

    token: logps - old, (B, T). sequence (GSPO, arXiv 2507.18071): masked mean of logps - old, (B, 1);
    gradient reaches every token as rho_i * m / |o_i|. sequence_token (GSPO-token): logps - sg(logps)
    + sg(sequence mean), (B, T): the value of the sequence ratio with a per-token gradient.
    "sequence_sum" (RLOO): masked sum of logps - old, (B, 1).
    """
    m = mask.to(logps.dtype)
    delta = (logps - old_logps) * m
    if level == "token":
        return logps - old_logps
    lengths = m.sum(-1, keepdim=True).clamp(min=1)
    if level == "sequence":
        return delta.sum(-1, keepdim=True) / lengths
    if level == "sequence_token":
        seq = (delta.sum(-1, keepdim=True) / lengths).detach()
        return logps - logps.detach() + seq
    if level == "sequence_sum":
        return delta.sum(-1, keepdim=True)
    raise ValueError(f"importance_sampling_level {level!r} unknown; known: {list(IS_LEVELS)}")


# --- per-token surrogates --------------------------------------------------------------------------


@dataclass
class _Terms:
    """What a surrogate sees. ratio: (B, T) or (B, 1) with grad; adv: (B, 1) or (B, T)."""

    logps: Tensor
    old_logps: Tensor
    mask: Tensor
    ratio: Tensor
    adv: Tensor
    is_weight: Tensor | None


Surrogate = Callable[[_Terms, PolicyLossConfig, GlobalCounts], tuple[Tensor, dict[str, Tensor]]]


def _clip_metrics(t: _Terms, cfg: PolicyLossConfig, counts: GlobalCounts) -> dict[str, Tensor]:
    ratio = t.ratio.detach().expand_as(t.mask)
    adv = t.adv.expand_as(t.mask)
    low = (ratio < 1 - cfg.epsilon_low) & (adv < 0)
    high = (ratio > 1 + cfg.effective_epsilon_high) & (adv > 0)
    n = clamp_count(counts.num_tokens)
    return {
        "policy/clip_ratio_low": masked_sum(low.to(ratio.dtype), t.mask) / n,
        "policy/clip_ratio_high": masked_sum(high.to(ratio.dtype), t.mask) / n,
        "policy/clip_ratio": masked_sum((low | high).to(ratio.dtype), t.mask) / n,
    }


def clipped_surrogate(
    t: _Terms, cfg: PolicyLossConfig, counts: GlobalCounts
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clip (grpo, bnpo, dr_grpo, dapo, luspo): -min(rho' A, clip(rho, 1-eps, 1+eps_high) A).

    rho' = min(rho, delta) when `delta` is set (two-sided clipping, INTELLECT-2 arXiv 2505.07291).
    """
    clipped = t.ratio.clamp(1 - cfg.epsilon_low, 1 + cfg.effective_epsilon_high)
    unclipped = t.ratio.clamp(max=cfg.delta) if cfg.delta is not None else t.ratio
    loss = -torch.minimum(unclipped * t.adv, clipped * t.adv)
    return loss, _clip_metrics(t, cfg, counts)


def cispo_surrogate(
    t: _Terms, cfg: PolicyLossConfig, counts: GlobalCounts
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): -sg(min(rho, epsilon_high)) * A * logp.

    The cap is the absolute value `epsilon_high`. Deliberate difference from TRL: epsilon_high must be
    set (TRL silently falls back to epsilon = 0.2, which scales every on-policy gradient by 0.2).
    """
    if cfg.epsilon_high is None:
        raise ValueError(
            "loss_type 'cispo' caps the ratio at the absolute value epsilon_high; set epsilon_high "
            "explicitly (ScaleRL uses 5.0)"
        )
    capped = t.ratio.detach().clamp(max=cfg.epsilon_high)
    loss = -capped * t.adv * t.logps
    over = (t.ratio.detach() > cfg.epsilon_high) & (t.adv > 0)
    metrics = {
        "policy/cispo_clip_ratio": masked_sum(over.expand_as(t.mask).to(t.logps.dtype), t.mask)
        / clamp_count(counts.num_tokens)
    }
    return loss, metrics


def sapo_surrogate(
    t: _Terms, cfg: PolicyLossConfig, counts: GlobalCounts
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (arXiv 2511.20347): -(4 / tau) * sigmoid(tau * (rho - 1)) * A, tau = tau_pos if A > 0 else tau_neg."""
    tau = torch.where(
        t.adv > 0,
        torch.full_like(t.adv, cfg.sapo_temperature_pos),
        torch.full_like(t.adv, cfg.sapo_temperature_neg),
    )
    loss = -(4.0 / tau) * torch.sigmoid(tau * (t.ratio - 1)) * t.adv
    return loss, {}


def vespo_weights(
    logps: Tensor,
    old_logps: Tensor,
    mask: Tensor,
    adv: Tensor,
    is_weight: Tensor | None,
    cfg: PolicyLossConfig,
) -> Tensor:
    """VESPO sequence weights phi, no grad: e^lam * w^k * e^(-lam w), phi(1) = 1.

    log w = clamp(sum_t m clamp(logps - old, -20, 20) + sum_t m clamp(log rho_IS, ln 1e-8, 20), ln 1e-8, 20);
    (k, lam) = positive pair if A >= 0 else negative pair; NaN / inf -> 0. The IS sum is masked here
    (TRL sums it unmasked; on padding it is 0 except in degenerate clip settings).
    """
    with torch.no_grad():
        m = mask.to(logps.dtype)
        lo = math.log(1e-8)
        log_w = ((logps - old_logps).clamp(-20, 20) * m).sum(-1, keepdim=True)
        if is_weight is not None:
            log_w = log_w + (torch.log(is_weight).clamp(lo, 20) * m).sum(-1, keepdim=True)
        log_w = log_w.clamp(lo, 20)
        pos = adv >= 0
        k = torch.where(pos, torch.full_like(adv, cfg.vespo_k_pos), torch.full_like(adv, cfg.vespo_k_neg))
        lam = torch.where(
            pos, torch.full_like(adv, cfg.vespo_lambda_pos), torch.full_like(adv, cfg.vespo_lambda_neg)
        ).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return torch.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)


def vespo_surrogate(
    t: _Terms, cfg: PolicyLossConfig, counts: GlobalCounts
) -> tuple[Tensor, dict[str, Tensor]]:
    """VESPO (arXiv 2602.10693): -phi_i * A * logp with phi from `vespo_weights` (the IS ratio is inside phi)."""
    if t.is_weight is not None and cfg.vllm_is_mode.startswith("sequence"):
        raise ValueError(
            "loss_type 'vespo' with vLLM correction needs a token_* vllm_importance_sampling_mode"
        )
    phi = vespo_weights(t.logps, t.old_logps, t.mask, t.adv, t.is_weight, cfg)
    loss = -phi * t.adv * t.logps
    phi_seq = phi.expand(t.mask.shape[0], -1)[:, :1]
    return loss, {"policy/vespo_phi_mean": phi_seq.sum() / clamp_count(counts.num_sequences)}


def rloo_surrogate(
    t: _Terms, cfg: PolicyLossConfig, counts: GlobalCounts
) -> tuple[Tensor, dict[str, Tensor]]:
    """RLOO (arXiv 2402.14740): sequence ratio of summed log-probs, -min(rho A, clip(rho) A), per sequence."""
    return clipped_surrogate(t, cfg, counts)


# --- the pipeline ----------------------------------------------------------------------------------


def _as_2d(advantages: Tensor, logps: Tensor) -> Tensor:
    if advantages.dim() == 1:
        return advantages.detach().unsqueeze(-1).to(logps.dtype)
    if advantages.shape != logps.shape:
        raise ValueError(
            f"advantages must be (B,) or (B, T) = {tuple(logps.shape)}, got {tuple(advantages.shape)}"
        )
    return advantages.detach().to(logps.dtype)


def _entropy_bonus_count(cfg: PolicyLossConfig, counts: GlobalCounts, entropy_mask: Tensor) -> Any:
    """What the entropy bonus is averaged over: the active tokens, or with an entropy mask the tokens
    it keeps (the bonus is a mean entropy of the tokens that train, whatever share the mask keeps)."""
    if cfg.top_entropy_quantile >= 1.0:
        return clamp_count(counts.num_tokens)
    if counts.num_entropy_tokens is not None:
        return clamp_count(counts.num_entropy_tokens)
    return clamp_count(entropy_mask.sum())


def run_policy_loss(
    batch: PolicyBatch,
    cfg: PolicyLossConfig,
    counts: GlobalCounts,
    *,
    surrogate: Surrogate,
    aggregation: str,
    level: str | None = None,
    weight_inside: bool = False,
) -> LossOutput:
    """The shared GRPO pipeline (module docstring). `weight_inside`: the surrogate consumes the IS weight."""
    logps = batch.logps
    mask = batch.mask.to(logps.dtype)
    adv = _as_2d(batch.advantages, logps)
    old = logps.detach() if batch.old_logps is None else batch.old_logps.detach()
    level = level or cfg.importance_sampling_level
    ratio = torch.exp(importance_log_ratio(logps, old, mask, level))
    n_tok, n_seq = clamp_count(counts.num_tokens), clamp_count(counts.num_sequences)
    metrics: dict[str, Tensor] = {}

    is_weight = None
    if cfg.vllm_is_correction:
        if batch.sampling_logps is None:
            raise ValueError(
                "vLLM importance-sampling correction is on (use_vllm and vllm_importance_sampling_correction) "
                "but the batch has no sampling_logps; pass the sampler's log-probs or turn the correction off"
            )
        is_weight = vllm_is_weights(
            old, batch.sampling_logps, mask, cfg.vllm_is_mode, cfg.vllm_is_clip_min, cfg.vllm_is_clip_max
        )
        if is_weight.shape[-1] == 1:
            metrics["policy/is_ratio_mean"] = is_weight.sum() / n_seq
        else:
            metrics["policy/is_ratio_mean"] = masked_sum(is_weight, mask) / n_tok

    terms = _Terms(logps=logps, old_logps=old, mask=mask, ratio=ratio, adv=adv, is_weight=is_weight)
    per_token, extra = surrogate(terms, cfg, counts)
    metrics.update(extra)

    if cfg.off_policy_mask_threshold is not None:
        behaviour = batch.sampling_logps if batch.sampling_logps is not None else old
        keep = off_policy_mask(logps, behaviour, mask, adv, cfg.off_policy_mask_threshold)
        per_token = per_token * keep
        dropped = (1 - keep).expand(mask.shape[0], -1)[:, :1] if keep.shape[-1] == 1 else None
        if dropped is not None:
            metrics["policy/off_policy_masked"] = dropped.sum() / n_seq

    entropy_mask = mask
    if cfg.top_entropy_quantile < 1.0:
        if batch.entropies is None:
            raise ValueError("top_entropy_quantile < 1 needs batch.entropies (per-token entropies)")
        entropy_mask = high_entropy_mask(
            batch.entropies, mask, cfg.top_entropy_quantile, counts.entropy_threshold
        )
        per_token = per_token * entropy_mask
        metrics["policy/entropy_mask_ratio"] = entropy_mask.sum() / n_tok

    if is_weight is not None and not weight_inside:
        per_token = per_token * is_weight

    if cfg.beta != 0.0:
        if batch.ref_logps is None:
            raise ValueError("beta != 0 needs batch.ref_logps (reference model log-probs)")
        kl = k3_kl(logps, batch.ref_logps.detach())
        if cfg.use_bias_correction_kl:
            kl = kl * ratio  # not detached: the correction carries gradient too, as in TRL
        per_token = per_token + cfg.beta * kl
        metrics["policy/kl"] = masked_sum(kl.detach(), mask) / n_tok

    loss = aggregate(per_token, mask, aggregation, counts, cfg.max_completion_length)

    if batch.entropies is not None:
        metrics["policy/entropy"] = masked_sum(batch.entropies.detach(), mask) / n_tok
    if cfg.entropy_coef != 0.0:
        if batch.entropies is None:
            raise ValueError("entropy_coef != 0 needs batch.entropies (with grad) for the entropy bonus")
        metrics["policy/policy_loss"] = loss.detach()
        bonus = masked_sum(batch.entropies, entropy_mask) / _entropy_bonus_count(cfg, counts, entropy_mask)
        loss = loss - cfg.entropy_coef * bonus

    metrics["policy/loss"] = loss.detach()
    return LossOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


@register("policy", "grpo")
def grpo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """GRPO (DeepSeekMath, arXiv 2402.03300): clipped surrogate; per-sequence token mean, / global sequences."""
    return run_policy_loss(batch, cfg, counts, surrogate=clipped_surrogate, aggregation="sequence_mean")


@register("policy", "bnpo")
def bnpo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """BNPO (arXiv 2506.02864): clipped surrogate; token mean over the global token count.

    TRL divides by the local micro-batch token count and by GA; the global count makes it
    split-invariant (same value when micro-batches have equal token counts).
    """
    return run_policy_loss(batch, cfg, counts, surrogate=clipped_surrogate, aggregation="token_mean")


@register("policy", "dr_grpo")
def dr_grpo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """Dr. GRPO (arXiv 2503.20783): clipped surrogate; sum / (global sequences * max_completion_length)."""
    return run_policy_loss(batch, cfg, counts, surrogate=clipped_surrogate, aggregation="fixed_length")


@register("policy", "dapo")
def dapo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """DAPO (arXiv 2503.14476): clipped surrogate (clip-higher via epsilon_high); global token mean.

    Deliberate differences from TRL, both in what `counts.num_tokens` holds:
    - it counts the active tokens of the optimizer step, not of the generation batch (TRL), so
      steps_per_generation != gradient_accumulation_steps no longer rescales the loss;
    - with `mask_truncated_completions` it leaves out the truncated rows (TRL 1.9 and later; the
      0.27 era counted them). A masked row adds nothing to the sum, so counting its tokens would
      only shrink every other token's weight by the share of truncated completions.
    """
    return run_policy_loss(batch, cfg, counts, surrogate=clipped_surrogate, aggregation="token_mean")


@register("policy", "cispo")
def cispo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """CISPO (MiniMax-M1, arXiv 2506.13585): see `cispo_surrogate`; global token mean, counted as for
    `dapo` (the optimizer step's active tokens, truncated rows left out when they are masked)."""
    return run_policy_loss(batch, cfg, counts, surrogate=cispo_surrogate, aggregation="token_mean")


@register("policy", "sapo")
def sapo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """SAPO (arXiv 2511.20347): soft sigmoid gate instead of clipping; aggregated like grpo."""
    return run_policy_loss(batch, cfg, counts, surrogate=sapo_surrogate, aggregation="sequence_mean")


@register("policy", "luspo")
def luspo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """LUSPO (arXiv 2602.05261): clipped surrogate, each sequence's loss scaled by its length:
    sum_i sum_t m L / global sequences (= sum_i |o_i| L_i / N for sequence-level ratios).

    Deliberate difference from TRL: padding never enters the mean, also when L is per-token (beta,
    masks); TRL averages over padded positions then.
    """
    return run_policy_loss(batch, cfg, counts, surrogate=clipped_surrogate, aggregation="sequence_sum")


@register("policy", "vespo")
def vespo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """VESPO (arXiv 2602.10693): see `vespo_surrogate`; global token mean, counted as for `dapo`."""
    return run_policy_loss(
        batch, cfg, counts, surrogate=vespo_surrogate, aggregation="token_mean", weight_inside=True
    )


@register("policy", "rloo")
def rloo(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """RLOO (arXiv 2402.14740): clipped sequence ratio of *summed* log-probs, one term per
    sequence, / global sequences. `importance_sampling_level` is ignored; use beta = 0 (KL is in the reward)
    and no vLLM IS weight (`PolicyLossConfig.from_spec` turns both off for an RLOOConfig).
    """
    return run_policy_loss(
        batch, cfg, counts, surrogate=rloo_surrogate, aggregation="sequence_mean", level="sequence_sum"
    )


def policy_loss(batch: PolicyBatch, cfg: PolicyLossConfig, counts: GlobalCounts) -> LossOutput:
    """The GRPO-family loss of `cfg.loss_type` for one micro-batch (sum over micro-batches = step loss)."""
    return get_loss("policy", cfg.loss_type)(batch, cfg, counts)
