"""`constant`: 1.0 for every completion, the reward of a method that learns from something else.

MiniLLM distils from a teacher: its only task-free signal is the per-token reverse-KL advantage, and the
group advantage of a constant reward is 0 (TRL's MiniLLM trainer uses a constant 1.0 when it is given no
reward function).
"""

from __future__ import annotations

from typing import Any

from engine.rewards.registry import NamedReward, RewardContext, Rewards, register


@register("constant")
def constant(spec: Any, ctx: RewardContext) -> NamedReward:
    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        return [1.0] * len(completion_ids)

    return NamedReward("constant", fn)
