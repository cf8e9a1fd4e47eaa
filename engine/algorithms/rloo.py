"""RLOO, REINFORCE with leave-one-out baselines (arXiv 2402.14740), on the GRPO loop.

    python -m engine.train --spec rloo.json --out runs/rloo     # dispatches to train(spec, ctx)

Generation, batching (`num_generations`, `steps_per_generation`, `num_iterations`), rewards, vLLM,
`mask_truncated_completions`, checkpoints and resume are the GRPO loop's (`engine.algorithms.grpo`); this
module only supplies its `Objective`:

- old log-probs are always computed at generation time (no grad, current weights); the reference model is
  loaded only when `beta` > 0;
- rewards are combined with `reward_weights` (NaN for unscorable rows), clipped to `reward_clip_range`,
  and the KL enters the reward: r_i <- r_i - beta * sum_t m_it (old_it - ref_it) (first-order estimator,
  may be negative; m is the loss mask);
- advantages are leave-one-out, A_i = r_i - mean of the other valid rewards of the group, optionally
  whitened over the generation batch (`normalize_advantages`); `engine.advantages.rloo_advantages`;
- the loss is the sequence-level clipped surrogate of summed log-probs, registry key `rloo`
  (`engine.losses`; its config has beta 0 and no vLLM importance-sampling weight).

Metrics: the loop's `rollout/reward_mean`, `rollout/reward_std` (of the weighted reward without the KL
term), `rollout/rewards/<name>_mean`, `rollout/frac_reward_zero_std`, completion lengths and
`rollout/clipped_ratio`; the loss's `policy/clip_ratio`, `policy/clip_ratio_low`, `policy/clip_ratio_high`;
and here `policy/kl`, the token mean of old - ref over the generation batch (only when beta > 0).

Not here: the loop, the loss formula, the advantage formula.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from engine import advantages as adv_lib
from engine import distributed
from engine.algorithms.common import TrainContext
from engine.algorithms.grpo import GRPOTrainer, Objective
from engine.losses import PolicyLossConfig
from engine.rollout.buffer import ScoredRollout


def kl_penalised_advantages(
    rewards: Tensor,
    num_generations: int,
    cfg: Any,
    old_logps: Tensor | None = None,
    ref_logps: Tensor | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """RLOO advantages of one generation batch and the `policy/kl` metric.

    rewards: (N,) combined rewards of the whole generation batch (NaN: unscorable), groups of
    `num_generations` rows.
    old_logps, ref_logps, mask: (n, T) no-grad log-probs and the loss mask of this rank's rows (all N
    with one process; several processes gather the per-row KL); needed when `cfg.beta` > 0.
    cfg: an RLOOConfig (`beta`, `reward_clip_range`, `normalize_advantages`).
    Returns advantages (N,) on the host and {"policy/kl": token mean of old - ref} when beta > 0.
    """
    kl, metrics = None, {}
    if cfg.beta > 0:
        if old_logps is None or ref_logps is None or mask is None:
            raise ValueError("RLOO with beta > 0 needs old and reference log-probs and the loss mask")
        kl, _ = distributed.gather_rows(adv_lib.rloo_sequence_kl(old_logps, ref_logps, mask))
        kl = kl.to(rewards.device)
        m = mask.to(old_logps.dtype)
        totals = distributed.all_reduce_counts((float(((old_logps - ref_logps) * m).sum()), float(m.sum())))
        metrics["policy/kl"] = totals[0] / max(totals[1], 1.0)
    advantages, _ = adv_lib.rloo_advantages(
        rewards,
        num_generations,
        kl=kl,
        beta=cfg.beta,
        reward_clip_range=cfg.reward_clip_range,
        normalize_advantages=cfg.normalize_advantages,
    )
    return advantages, metrics


def rloo_objective(cfg: Any) -> Objective:
    """The GRPO loop's `Objective` for an RLOOConfig."""

    def advantages(rewards: Tensor, group: int, rollout: ScoredRollout) -> tuple[Tensor, dict[str, float]]:
        return kl_penalised_advantages(
            rewards, group, cfg, rollout.old_logps, rollout.ref_logps, rollout.loss_mask
        )

    loss = PolicyLossConfig.from_spec(cfg)
    if loss.loss_type != "rloo" or loss.beta != 0.0 or loss.vllm_is_correction:
        raise ValueError(f"an RLOOConfig must give the 'rloo' loss with beta 0 and no IS weight, got {loss}")
    return Objective(
        loss=loss, aggregation="sum_then_normalize", always_old_logps=True, advantages=advantages
    )


def train(spec: Any, ctx: TrainContext) -> Path:
    """Run an RLOO job; returns DIR/final."""
    return GRPOTrainer(spec, ctx, rloo_objective(spec.config)).train()
