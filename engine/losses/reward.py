"""Reward-model loss (`reward` family): Bradley-Terry with margins and centring.

    out = reward_loss(chosen_rewards, rejected_rewards, num_pairs, margin=m, center_rewards_coefficient=eta)

Rewards are the classifier's scalar outputs (B,). Loss = sum_i -log s(r+ - r- - m_i) / N
+ eta * sum_i (r+ + r-)^2 / N with N the global pair count. Not here: the classifier forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.functional import Count, clamp_count
from engine.losses.registry import LossOutput, get_loss, register


@register("reward", "bradley_terry")
def bradley_terry(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    num_pairs: Count,
    margin: Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> LossOutput:
    """Bradley-Terry (InstructGPT, arXiv 2203.02155; margin: Llama 2, arXiv 2307.09288; centring:
    arXiv 2312.09244). chosen_rewards, rejected_rewards, margin: (B,)."""
    n = clamp_count(num_pairs)
    diff = chosen_rewards - rejected_rewards
    shifted = diff - margin.to(diff.dtype) if margin is not None else diff
    loss = -F.logsigmoid(shifted).sum() / n
    metrics: dict[str, Tensor] = {}
    if center_rewards_coefficient is not None:
        centre = ((chosen_rewards + rejected_rewards) ** 2).sum() / n
        loss = loss + center_rewards_coefficient * centre
        metrics["reward/centering"] = centre.detach()
    with torch.no_grad():
        d = diff.detach()
        metrics.update(
            {
                "reward/loss": loss.detach(),
                "reward/accuracy": (d > 0).to(d.dtype).sum() / n,
                "reward/margin": d.sum() / n,
                "reward/mean_reward": (chosen_rewards.detach() + rejected_rewards.detach()).sum() / (2 * n),
            }
        )
    return LossOutput(loss=loss, metrics=metrics)


def reward_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    num_pairs: Count,
    margin: Tensor | None = None,
    center_rewards_coefficient: float | None = None,
    loss_type: str = "bradley_terry",
) -> LossOutput:
    """The reward-model loss for one micro-batch (global pair count)."""
    return get_loss("reward", loss_type)(
        chosen_rewards, rejected_rewards, num_pairs, margin, center_rewards_coefficient
    )
