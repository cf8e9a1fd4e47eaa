"""Length and repetition penalties on the generated token ids: soft_overlong_punishment, repetition_penalty.

- `soft_overlong_punishment` (DAPO, arXiv:2503.14476, Eq. 13) with L = `max_completion_len`, c =
  `soft_punish_cache` (default 0) and |y| = number of generated tokens: 0 when |y| <= L - c,
  ((L - c) - |y|) / c when L - c < |y| <= L, and -1 when |y| > L. The formula lives in
  `engine.advantages.soft_overlong_punishment`; this module only adapts it to the reward contract.
- `repetition_penalty`: (1 - unique n-grams / n-grams) * `max_penalty` over the token ids with n =
  `ngram_size`; 0 for completions shorter than n tokens (TRL `get_repetition_penalty_reward`).
"""

from __future__ import annotations

from typing import Any

import torch

from engine.rewards.registry import NamedReward, RewardContext, Rewards, register


@register("soft_overlong_punishment")
def soft_overlong_punishment(spec: Any, ctx: RewardContext) -> NamedReward:
    from engine.advantages import soft_overlong_punishment as punish

    max_len = spec.max_completion_len or ctx.max_completion_length
    cache = spec.soft_punish_cache or 0
    if cache > max_len:
        raise ValueError(
            f"soft_punish_cache={cache} must not exceed max_completion_len={max_len} (DAPO uses 4096 of 20480)"
        )

    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        lengths = torch.tensor([len(ids) for ids in completion_ids], dtype=torch.float64)
        return [float(v) for v in punish(lengths, max_len, cache).tolist()]

    return NamedReward("soft_overlong_punishment", fn)


@register("repetition_penalty")
def repetition_penalty(spec: Any, ctx: RewardContext) -> NamedReward:
    n, penalty = spec.ngram_size, spec.max_penalty
    if penalty > 0:
        raise ValueError(f"max_penalty must be <= 0 (a penalty), got {penalty}")

    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        out: Rewards = []
        for ids in completion_ids:
            ids = list(ids)
            if len(ids) < n or penalty == 0:
                out.append(0.0)
                continue
            grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
            out.append((1.0 - len(set(grams)) / len(grams)) * penalty)
        return out

    return NamedReward("repetition_penalty", fn)
