"""PAPO perception terms (arXiv 2507.06448), added to a `grpo` / `dapo` policy loss.

    out = papo_perception_loss(logps, masked_logps, entropies, masked_entropies, mask, num_tokens,
                               perception_loss_weight=0.1, der_loss_weight1=0.03, der_loss_weight2=0.03)
    total = policy_loss(...).loss + out.loss

logps / entropies come from the policy on the original input, masked_* from the same policy on the
corrupted input (both with grad). Not here: image corruption, forwards.
"""

from __future__ import annotations

from torch import Tensor

from engine.functional import Count, clamp_count, k3_kl, masked_sum
from engine.losses.registry import LossOutput


def perception_kl(logps: Tensor, masked_logps: Tensor, clamp_max: float = 0.2) -> Tensor:
    """Per-token implicit perception KL: clamp(k3 of (masked - original), 0, clamp_max), (B, T)."""
    return k3_kl(logps, masked_logps).clamp(0.0, clamp_max)


def papo_perception_loss(
    logps: Tensor,
    masked_logps: Tensor,
    entropies: Tensor,
    masked_entropies: Tensor,
    mask: Tensor,
    num_tokens: Count,
    perception_loss_weight: float = 0.1,
    der_loss_weight1: float = 0.03,
    der_loss_weight2: float = 0.03,
) -> LossOutput:
    """(-gamma KL_prc + eta1 H + eta2 H_mask) summed over completion tokens / global token count.

    All inputs (B, T). The perception KL is maximised (minus sign); both entropies are minimised (the
    Double Entropy Loss that keeps the maximised KL from being gamed by a high-entropy masked policy).
    Deliberate difference from TRL: padding positions are excluded (TRL averages over all B x T positions).
    """
    n = clamp_count(num_tokens)
    kl = masked_sum(perception_kl(logps, masked_logps), mask) / n
    h = masked_sum(entropies, mask) / n
    h_mask = masked_sum(masked_entropies, mask) / n
    loss = -perception_loss_weight * kl + der_loss_weight1 * h + der_loss_weight2 * h_mask
    return LossOutput(
        loss=loss,
        metrics={
            "papo/perception_kl": kl.detach(),
            "papo/entropy": h.detach(),
            "papo/masked_entropy": h_mask.detach(),
            "papo/loss": loss.detach(),
        },
    )
