"""Built-in rewards for online jobs, keyed by `RewardFuncSpec.name` (see `registry.py` for the contract).

from engine.rewards import RewardContext, build_reward_funcs
funcs = build_reward_funcs(spec.reward_funcs, RewardContext(max_completion_length=64))
scores = funcs[0](prompts=prompts, completions=texts, completion_ids=ids, answer=answers)
"""

from engine.rewards import constant, model, penalties, remote, verifiable  # noqa: F401  (registers the built-ins)
from engine.rewards.registry import (
    NamedReward,
    RewardContext,
    RewardFunc,
    Rewards,
    build_reward,
    build_reward_funcs,
    known_rewards,
    register,
)

__all__ = [
    "NamedReward",
    "RewardContext",
    "RewardFunc",
    "Rewards",
    "build_reward",
    "build_reward_funcs",
    "known_rewards",
    "register",
]
