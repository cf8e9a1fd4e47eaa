"""Distillation losses (`distill` family): GKD / GOLD generalized JSD, ULD, MiniLLM.

    out = distill_loss(student_logits, teacher_logits, mask, num_tokens, DistillLossConfig.from_spec(cfg))

Token-level losses sum over label positions (mask (B, T) == 1) and the vocabulary, divided by the
global label-token count of the optimizer step. `gkd` ignores the sampling temperature (GKD's loss
runs at temperature 1); `gold` divides both logits by `temperature`; `minillm` is MiniLLM's
single-step reverse KL at `kd_temperature`. Also: `uld` (sorted-L1 distance between aligned
distributions, cross-tokenizer) and `minillm_rkl_advantages` (per-token reverse-KL advantages).
Not here: generation, teacher forwards, cross-tokenizer alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.functional import Count, clamp_count, masked_sum
from engine.losses.registry import LossOutput, get_loss, register


@dataclass(frozen=True)
class DistillLossConfig:
    """loss_type: `gkd`, `gold` or `minillm`; beta: JSD interpolation; temperature: divides both logits."""

    loss_type: str = "gkd"
    beta: float = 0.5
    temperature: float = 1.0

    @classmethod
    def from_spec(cls, config: Any) -> DistillLossConfig:
        """GOLDConfig -> gold (loss at `temperature`); GKDConfig -> gkd (loss at 1.0); MiniLLMConfig ->
        minillm (`kd_temperature`, reverse KL)."""
        if hasattr(config, "kd_temperature"):
            return cls(loss_type="minillm", beta=1.0, temperature=config.kd_temperature)
        if hasattr(config, "use_uld_loss"):
            return cls(loss_type="gold", beta=config.beta, temperature=config.temperature)
        return cls(loss_type="gkd", beta=config.beta, temperature=1.0)


def generalized_jsd_per_token(
    student_logits: Tensor, teacher_logits: Tensor, beta: float, temperature: float = 1.0
) -> Tensor:
    """Generalized JSD (GKD, arXiv 2306.13649, eq. 1) per position: (..., V) -> (...).

    M = beta P_T + (1 - beta) P_S; JSD = beta KL(P_T || M) + (1 - beta) KL(P_S || M). Endpoints are
    plain KLs: beta = 0 -> KL(P_T || P_S) (forward), beta = 1 -> KL(P_S || P_T) (reverse).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0.0:
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if beta == 1.0:
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    log_m = torch.logsumexp(torch.stack([log_s + math.log(1 - beta), log_t + math.log(beta)]), dim=0)
    kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
    kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def _jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    num_tokens: Count,
    beta: float,
    temperature: float,
    name: str,
) -> LossOutput:
    per_token = generalized_jsd_per_token(student_logits, teacher_logits.detach(), beta, temperature)
    loss = masked_sum(per_token, mask) / clamp_count(num_tokens)
    return LossOutput(loss=loss, metrics={f"distill/{name}": loss.detach()})


@register("distill", "gkd")
def gkd(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, num_tokens: Count, cfg: DistillLossConfig
) -> LossOutput:
    """GKD (arXiv 2306.13649): generalized JSD at temperature 1 (GKD's temperature only affects
    sampling). logits (B, T, V), mask (B, T); / global label tokens."""
    return _jsd_loss(student_logits, teacher_logits, mask, num_tokens, cfg.beta, 1.0, "gkd")


@register("distill", "gold")
def gold(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, num_tokens: Count, cfg: DistillLossConfig
) -> LossOutput:
    """GOLD (same-tokenizer path): generalized JSD with both logits divided by `cfg.temperature`."""
    return _jsd_loss(student_logits, teacher_logits, mask, num_tokens, cfg.beta, cfg.temperature, "gold")


@register("distill", "minillm")
def minillm(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, num_tokens: Count, cfg: DistillLossConfig
) -> LossOutput:
    """MiniLLM (arXiv 2306.08543) single-step term: sum_t m KL(P_S || P_T) / global tokens at
    `cfg.temperature` (= kd_temperature). Deliberate difference from TRL: only real completion tokens count and
    the divisor is global, so the term is not multiplied by gradient accumulation."""
    return _jsd_loss(
        student_logits, teacher_logits, mask, num_tokens, 1.0, cfg.temperature, "minillm_single_step"
    )


@register("distill", "uld")
def uld(
    student_probs: Tensor,
    teacher_probs: Tensor,
    mask: Tensor,
    num_sequences: Count,
    cfg: DistillLossConfig | None = None,
) -> LossOutput:
    """ULD (arXiv 2402.12030): sorted-L1 distance between aligned distributions.

    student_probs (B, K, Vs), teacher_probs (B, K, Vt): aligned positions k (mask (B, K) == 1). Each
    distribution is sorted descending and zero-padded to max(Vs, Vt); per sequence the L1 distances
    are averaged over its aligned positions; sequences are summed and divided by the global count.
    """
    vs, vt = student_probs.shape[-1], teacher_probs.shape[-1]
    width = max(vs, vt)
    s = F.pad(torch.sort(student_probs, dim=-1, descending=True).values, (0, width - vs))
    t = F.pad(torch.sort(teacher_probs.detach(), dim=-1, descending=True).values, (0, width - vt))
    dist = (s - t).abs().sum(-1)
    m = mask.to(dist.dtype)
    per_seq = (dist * m).sum(-1) / m.sum(-1).clamp(min=1)
    loss = per_seq.sum() / clamp_count(num_sequences)
    return LossOutput(loss=loss, metrics={"distill/uld": loss.detach()})


def distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, num_tokens: Count, cfg: DistillLossConfig
) -> LossOutput:
    """The token-level distillation loss `cfg.loss_type` (gkd, gold, minillm) for one micro-batch."""
    return get_loss("distill", cfg.loss_type)(student_logits, teacher_logits, mask, num_tokens, cfg)


def minillm_rkl_advantages(
    student_logps: Tensor,
    teacher_logps: Tensor,
    mask: Tensor,
    gamma: float = 0.0,
    length_normalization: bool = True,
) -> Tensor:
    """MiniLLM per-token reverse-KL advantages (B, T), detached, added to the GRPO advantage.

    R_t = m_t (log P_T(y_t) - log P_S(y_t)) on sampled tokens. gamma = 0: A_t = R_t. gamma > 0:
    A_t = sum_{s>=t} gamma^(s-t) R_s, divided by sum_{s>=t} gamma^(s-t) m~_s (m~ = m, or 1e-4 on
    padding) when `length_normalization`. Deliberate differences from TRL: padding is masked (TRL's mask is all
    ones), the advantage is detached, and the unnormalised return is not scaled by gamma^t.
    """
    m = mask.to(student_logps.dtype)
    rewards = (teacher_logps.detach() - student_logps.detach()) * m
    if gamma == 0.0:
        return rewards
    m_tilde = torch.where(m > 0, m, torch.full_like(m, 1e-4))
    num = torch.zeros_like(rewards)
    den = torch.zeros_like(rewards)
    run_num = rewards.new_zeros(rewards.shape[0])
    run_den = rewards.new_zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        run_num = rewards[:, t] + gamma * run_num
        run_den = m_tilde[:, t] + gamma * run_den
        num[:, t] = run_num
        den[:, t] = run_den
    return num / den if length_normalization else num
