"""Rewards -> advantages for the online algorithms.

Groups are consecutive blocks of `num_generations` rows of the *global* generation batch (gather
before calling). NaN marks an unscorable reward: it is left out of every mean and std and its row
gets advantage 0 (TRL 1.16's choice; the seed era counted such rows as reward 0).

    rewards = combine_rewards(per_func, weights, "sum_then_normalize", num_generations)
    advantages, stats = group_advantages(rewards, num_generations, "group")

Also: RLOO leave-one-out baselines, DAPO soft overlong punishment, DAPO dynamic-sampling and GFPO
group filters. Torch tensors in and out; nothing here syncs to the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.functional import nanmean, nanstd
from engine.spec.names import GROUP_FILTERS, REWARD_AGGREGATIONS, SCALE_REWARDS

STD_EPS = 1e-4


def _groups(values: Tensor, num_generations: int) -> Tensor:
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if values.shape[0] % num_generations:
        raise ValueError(
            f"{values.shape[0]} rows are not a whole number of groups of num_generations={num_generations}"
        )
    return values.reshape(-1, num_generations, *values.shape[1:])


def _scale(scale_rewards: str | bool) -> str:
    if scale_rewards is True:
        return "group"
    if scale_rewards is False:
        return "none"
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards {scale_rewards!r} unknown; known: {list(SCALE_REWARDS)}")
    return scale_rewards


def _unscorable_to_nan(total: Tensor, per_func: Tensor) -> Tensor:
    all_nan = torch.isnan(per_func).all(dim=-1)
    return torch.where(all_nan, torch.full_like(total, float("nan")), total)


def combine_rewards(
    per_func: Tensor,
    weights: Tensor | list[float] | None = None,
    aggregation: str = "sum_then_normalize",
    num_generations: int | None = None,
) -> Tensor:
    """(N, K) rewards of K functions -> (N,) one reward per completion.

    sum_then_normalize: sum_k w_k R_jk with NaN as 0; a row with every entry NaN stays NaN.
    normalize_then_sum (GDPO): each function normalised within its group,
    (R - nanmean_g) / (nanstd_g + 1e-4), then the weighted NaN-ignoring sum (all-NaN rows -> NaN).
    """
    if per_func.dim() != 2:
        raise ValueError(f"per_func must be (N, K), got shape {tuple(per_func.shape)}")
    k = per_func.shape[1]
    w = (
        torch.ones(k, dtype=per_func.dtype, device=per_func.device)
        if weights is None
        else torch.as_tensor(weights, dtype=per_func.dtype, device=per_func.device)
    )
    if w.shape != (k,):
        raise ValueError(f"reward_weights has {w.numel()} entries but there are {k} reward functions")
    if aggregation == "sum_then_normalize":
        scored = per_func
    elif aggregation == "normalize_then_sum":
        if num_generations is None:
            raise ValueError("multi_objective_aggregation 'normalize_then_sum' needs num_generations")
        g = _groups(per_func, num_generations)  # (N/G, G, K)
        scored = (
            (g - nanmean(g, dim=1, keepdim=True)) / (nanstd(g, dim=1, keepdim=True) + STD_EPS)
        ).reshape_as(per_func)
    else:
        raise ValueError(
            f"multi_objective_aggregation {aggregation!r} unknown; known: {list(REWARD_AGGREGATIONS)}"
        )
    total = torch.nansum(scored * w, dim=-1)
    return _unscorable_to_nan(total, per_func)


def reward_stats(per_func: Tensor, weights: Tensor | list[float] | None = None) -> dict[str, Tensor]:
    """`rollout/reward_mean` and `rollout/reward_std` of a generation batch, on the raw reward.

    The raw reward is the weighted sum of the functions' outputs (NaN as 0, all-NaN rows left out),
    whatever `multi_objective_aggregation` trains on: under normalize_then_sum the trained reward is
    normalised per group (mean about 0), which says nothing a user can compare with a published
    reward curve. Weighted, as both TRL eras log `reward`; std over the whole batch with Bessel's
    correction (TRL 1.16; the 0.27 era logged the mean of the group stds).
    """
    raw = combine_rewards(per_func, weights, "sum_then_normalize")
    return {"rollout/reward_mean": nanmean(raw).detach(), "rollout/reward_std": nanstd(raw).detach()}


def group_advantages(
    rewards: Tensor,
    num_generations: int,
    scale_rewards: str | bool = "group",
    *,
    aggregation: str = "sum_then_normalize",
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO advantages (N,) from rewards (N,), and detached stats.

    A = r - nanmean_group(r); "group": / (nanstd_group + 1e-4); "batch": / (nanstd_batch + 1e-4)
    (group mean, batch std); "none": no division. With aggregation "normalize_then_sum" the
    rewards are already per-function normalised and A = (r - nanmean_batch) / (nanstd_batch + 1e-4).
    Unscorable (NaN) rows get 0; a group with equal rewards gets 0. Stds use Bessel's correction.
    stats: rollout/reward_mean, rollout/reward_std (batch nanstd) of `rewards` as given (the loops log
    `reward_stats` of the raw rewards instead), rollout/frac_reward_zero_std.
    """
    scale = _scale(scale_rewards)
    g = _groups(rewards, num_generations)
    group_std = nanstd(g, dim=1, keepdim=True).expand_as(g).reshape_as(rewards)
    batch_std = nanstd(rewards)
    if aggregation == "normalize_then_sum":
        adv = (rewards - nanmean(rewards)) / (batch_std + STD_EPS)
        norm_std = batch_std.expand_as(rewards)
    elif aggregation == "sum_then_normalize":
        adv = (g - nanmean(g, dim=1, keepdim=True)).reshape_as(rewards)
        if scale == "group":
            adv = adv / (group_std + STD_EPS)
            norm_std = group_std
        elif scale == "batch":
            adv = adv / (batch_std + STD_EPS)
            norm_std = batch_std.expand_as(rewards)
        else:
            norm_std = group_std
    else:
        raise ValueError(
            f"multi_objective_aggregation {aggregation!r} unknown; known: {list(REWARD_AGGREGATIONS)}"
        )
    adv = torch.nan_to_num(adv, nan=0.0)
    zero_std = torch.isclose(norm_std, torch.zeros_like(norm_std)) | torch.isnan(norm_std)
    stats = {
        "rollout/reward_mean": nanmean(rewards).detach(),
        "rollout/reward_std": batch_std.detach(),
        "rollout/frac_reward_zero_std": zero_std.to(rewards.dtype).mean().detach(),
    }
    return adv, stats


def rloo_sequence_kl(old_logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """RLOO's first-order KL per completion, (B, T) -> (B,): sum_t m (old - ref) (may be negative)."""
    return ((old_logps - ref_logps) * mask.to(old_logps.dtype)).sum(-1).detach()


def rloo_advantages(
    rewards: Tensor,
    num_generations: int,
    *,
    kl: Tensor | None = None,
    beta: float = 0.0,
    reward_clip_range: tuple[float, float] | None = None,
    normalize_advantages: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """RLOO advantages (arXiv 2402.14740): rewards (N,), kl (N,) -> (N,), stats.

    r <- clamp(r, reward_clip_range); r <- r - beta * kl; b_i = (sum of the other valid rewards of the
    group) / (n_g - 1); A = r - b (NaN when the group has a single valid reward); optional batch
    whitening (A - nanmean) / (nanstd + 1e-4); NaN -> 0.
    """
    stats = {"rollout/reward_mean": nanmean(rewards).detach(), "rollout/reward_std": nanstd(rewards).detach()}
    r = rewards
    if reward_clip_range is not None:
        lo, hi = reward_clip_range
        r = r.clamp(lo, hi)
    if kl is not None and beta != 0.0:
        r = r - beta * kl.to(r.dtype)
    g = _groups(r, num_generations)
    valid = ~torch.isnan(g)
    n = valid.sum(dim=1, keepdim=True).to(r.dtype)
    total = torch.nansum(g, dim=1, keepdim=True)
    baseline = (total - torch.nan_to_num(g, nan=0.0)) / (n - 1)
    baseline = torch.where(n > 1, baseline, torch.full_like(baseline, float("nan")))
    adv = (g - baseline).reshape_as(r)
    if normalize_advantages:
        adv = (adv - nanmean(adv)) / (nanstd(adv) + STD_EPS)
    g_std = nanstd(_groups(rewards, num_generations), dim=1)
    stats["rollout/frac_reward_zero_std"] = (
        (torch.isclose(g_std, torch.zeros_like(g_std)) | torch.isnan(g_std)).to(r.dtype).mean()
    )
    return torch.nan_to_num(adv, nan=0.0), stats


def soft_overlong_punishment(lengths: Tensor, max_completion_len: int, soft_punish_cache: int) -> Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13) of completion lengths (N,) -> (N,).

    0 up to L_max - L_cache; ((L_max - L_cache) - L) / L_cache inside the cache window; -1 beyond L_max.
    """
    if soft_punish_cache < 0 or soft_punish_cache > max_completion_len:
        raise ValueError(
            f"soft_punish_cache must be in [0, max_completion_len={max_completion_len}], got {soft_punish_cache}"
        )
    lengths = lengths.to(torch.get_default_dtype()) if not lengths.is_floating_point() else lengths
    start = max_completion_len - soft_punish_cache
    cache = max(soft_punish_cache, 1)
    inside = (start - lengths) / cache
    out = torch.where(lengths <= start, torch.zeros_like(lengths), inside)
    return torch.where(lengths > max_completion_len, torch.full_like(lengths, -1.0), out)


def zero_variance_groups(rewards: Tensor, num_generations: int, atol: float = 1e-8) -> Tensor:
    """DAPO dynamic sampling: (N/G,) bool, True for groups with no learning signal.

    A group has none when its valid (non-NaN) rewards are all equal (within `atol`) or fewer than two
    are valid. Rows of group j: `zero_variance_groups(...).repeat_interleave(num_generations)`.
    """
    g = _groups(rewards, num_generations)
    valid = ~torch.isnan(g)
    hi = torch.where(valid, g, torch.full_like(g, -float("inf"))).amax(dim=1)
    lo = torch.where(valid, g, torch.full_like(g, float("inf"))).amin(dim=1)
    return (valid.sum(dim=1) < 2) | ((hi - lo) <= atol)


# Rewards that score length or repetition, not the answer: DAPO's dynamic sampling looks past them.
SHAPING_REWARDS = frozenset({"soft_overlong_punishment", "repetition_penalty"})


def accuracy_rewards(
    per_func: Tensor, names: list[str], weights: Tensor | list[float] | None = None
) -> Tensor:
    """(N, K) rewards -> (N,) the weighted sum of the functions that judge the answer (all but
    `SHAPING_REWARDS`; every function when only shaping rewards are named).

    DAPO's dynamic sampling drops groups whose *accuracy* is all 0 or all 1: a length punishment that
    differs inside a group would otherwise keep a group with no signal about the answer.
    """
    if len(names) != per_func.shape[1]:
        raise ValueError(f"{len(names)} reward names for {per_func.shape[1]} reward columns")
    cols = [k for k, name in enumerate(names) if name not in SHAPING_REWARDS] or list(range(len(names)))
    w = None if weights is None else torch.as_tensor(weights, dtype=per_func.dtype)[cols]
    return combine_rewards(per_func[:, cols], w, "sum_then_normalize")


def gfpo_keep_mask(
    num_generations: int,
    num_remains_in_group: int,
    lengths: Tensor,
    rewards: Tensor | None = None,
    metric: str = "shortest",
) -> Tensor:
    """GFPO (arXiv 2508.09726) group filter: (N,) bool keeping k rows per group.

    shortest: the k shortest completions; reward_per_token: the k highest reward / max(1, length)
    (NaN rewards rank last). Ties keep the earlier row. Then recompute advantages on the kept rows
    with `group_advantages(rewards[keep], num_remains_in_group, ...)`.
    """
    if metric not in GROUP_FILTERS:
        raise ValueError(f"group_filter {metric!r} unknown; known: {list(GROUP_FILTERS)}")
    if not 1 <= num_remains_in_group <= num_generations:
        raise ValueError(
            f"num_remains_in_group must be in [1, num_generations={num_generations}], got {num_remains_in_group}"
        )
    lengths = lengths.to(torch.float64)
    if metric == "shortest":
        score = -lengths
    else:
        if rewards is None:
            raise ValueError("group_filter 'reward_per_token' needs rewards")
        score = rewards.to(torch.float64) / lengths.clamp(min=1)
        score = torch.nan_to_num(score, nan=-float("inf"))
    g = _groups(score, num_generations)
    order = torch.sort(g, dim=1, descending=True, stable=True).indices[:, :num_remains_in_group]
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(1, order, True)
    return keep.reshape(-1)
