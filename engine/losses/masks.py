"""Masks and weights applied to the GRPO-family per-token loss.

- `truncated_rows` / `mask_truncated_completions`: drop completions that hit the length limit.
- `entropy_threshold` / `high_entropy_mask`: `top_entropy_quantile` ("80/20 rule", arXiv 2506.01939).
- `off_policy_mask`: DeepSeek-V3.2's sequence mask (arXiv 2512.02556).
- `vllm_is_weights`: truncated / masked importance sampling against the sampler's log-probs;
  `vllm_is_metrics`: how far the sampler is from the trainer (ratios, clipped fraction, KL).

All outputs are detached. Nothing here gathers across ranks: the loop gathers the active entropies
of the optimizer step once and passes the threshold in `GlobalCounts.entropy_threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def truncated_rows(
    completion_ids: Tensor,
    completion_mask: Tensor,
    eos_token_ids: int | Sequence[int],
    pad_token_id: int | None,
) -> Tensor:
    """(B,) bool: True where the last generated token is neither EOS nor padding (hit the length limit).

    completion_ids, completion_mask: (B, T). Empty completions are not truncated.
    """
    eos = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    stops = eos + ([pad_token_id] if pad_token_id is not None else [])
    lengths = completion_mask.long().sum(-1)
    last_idx = (lengths - 1).clamp(min=0)
    last_tok = completion_ids.gather(-1, last_idx.unsqueeze(-1)).squeeze(-1)
    is_stop = torch.isin(
        last_tok, torch.tensor(stops, device=completion_ids.device, dtype=completion_ids.dtype)
    )
    return (lengths > 0) & ~is_stop


def mask_truncated_completions(mask: Tensor, truncated: Tensor) -> Tensor:
    """`mask_truncated_completions=True`: zero the mask rows (B, T) of truncated completions (B,) bool.

    The rows still count in group reward statistics and in `GlobalCounts.num_sequences`.
    """
    return mask * (~truncated.bool()).unsqueeze(-1).to(mask.dtype)


def entropy_threshold(entropies: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """The `1 - quantile` quantile (linear interpolation) of the active entropies, detached (0-d).

    entropies, mask: any matching shape (typically all micro-batches of an optimizer step
    concatenated). No active token gives +inf (nothing passes the mask).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"top_entropy_quantile must be in [0, 1], got {quantile}")
    active = entropies.detach()[mask.bool()]
    if active.numel() == 0:
        return entropies.new_tensor(math.inf)
    return torch.quantile(active.to(torch.float64), 1.0 - quantile).to(entropies.dtype)


def high_entropy_mask(
    entropies: Tensor, mask: Tensor, quantile: float, threshold: Tensor | float | None = None
) -> Tensor:
    """`top_entropy_quantile` mask E (B, T): 1 where mask == 1 and entropy >= threshold.

    quantile 1 keeps every active token; quantile 0 keeps only the maximum-entropy token(s) (ties
    keep several). `threshold=None` computes it from this micro-batch (TRL's behaviour); pass the
    global one for exact micro-batch invariance.
    """
    if quantile >= 1.0:
        return mask.detach().clone()
    if threshold is None:
        threshold = entropy_threshold(entropies, mask, quantile)
    keep = entropies.detach() >= threshold
    return mask.detach() * keep.to(mask.dtype)


def off_policy_mask(
    logps: Tensor, behaviour_logps: Tensor, mask: Tensor, advantages: Tensor, threshold: float
) -> Tensor:
    """DeepSeek-V3.2 off-policy sequence mask, detached.

    KL_i = sum_t m (behaviour - sg(logps)) / max(1, |o_i|); keep = [A >= 0] or [KL_i <= threshold].
    logps, behaviour_logps, mask: (B, T); advantages (B, 1) or (B, T). Returns (B, 1) or (B, T).
    """
    m = mask.to(logps.dtype)
    kl = ((behaviour_logps - logps.detach()) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    keep = (advantages.detach() >= 0) | (kl <= threshold)
    return keep.to(logps.dtype)


def vllm_is_weights(
    old_logps: Tensor,
    sampling_logps: Tensor,
    mask: Tensor,
    mode: str,
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> Tensor:
    """Importance weights of the trainer's old policy against the sampler, detached.

    d = (old - sampling) * mask. token_*: rho = e^d, (B, T); sequence_*: rho = e^(sum_t d), (B, 1)
    (a product over the sequence, not a geometric mean). *_truncate clamps to [clip_min, clip_max]
    (a None bound is not applied); *_mask zeroes weights outside the bounds and keeps the others as
    they are. `clip_max` is the seed-era `vllm_importance_sampling_cap`. A ratio that overflows to inf
    (long sequences) is outside any finite clip_max, so *_mask gives exactly 0 for it, not inf * 0 = NaN.
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown vllm_importance_sampling_mode {mode!r}; known: {list(IS_MODES)}")
    if mode.endswith("truncate") and clip_min is None and clip_max is None:
        raise ValueError(
            "vllm_importance_sampling_mode '*_truncate' needs vllm_importance_sampling_clip_max "
            "(or clip_min); both are None"
        )
    if clip_min is not None and clip_max is not None and clip_min >= clip_max:
        raise ValueError(f"vllm_importance_sampling_clip_min={clip_min} must be below clip_max={clip_max}")
    d = (old_logps.detach() - sampling_logps.detach()) * mask.to(old_logps.dtype)
    log_rho = d if mode.startswith("token") else d.sum(-1, keepdim=True)
    rho = torch.exp(log_rho)
    if mode.endswith("truncate"):
        return rho.clamp(min=clip_min, max=clip_max)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    inside = (rho >= lo) & (rho <= hi)
    return torch.where(inside, rho, torch.zeros_like(rho))


def vllm_is_metrics(
    old_logps: Tensor,
    sampling_logps: Tensor,
    mask: Tensor,
    mode: str,
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> dict[str, float]:
    """How far the sampler is from the trainer, on one generation batch (host floats, one sync).

    rho is the raw ratio `vllm_is_weights` starts from (per token, or per sequence for sequence_* modes),
    over tokens / sequences that count (sequences with no counted token are left out). Reports its mean,
    min and max, the fraction outside [clip_min, clip_max] (clamped by *_truncate, zeroed by *_mask), and
    the k3 estimate of KL(sampler || trainer): the token mean of r - 1 - log r with r = e^(old - sampling).
    """
    m = mask.to(old_logps.dtype)
    d = (old_logps.detach() - sampling_logps.detach()) * m
    if mode.startswith("token"):
        keep = m > 0
        rho = torch.exp(d)[keep]
    else:
        keep = m.sum(-1) > 0
        rho = torch.exp(d.sum(-1))[keep]
    if rho.numel() == 0:
        return {}
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    outside = ((rho < lo) | (rho > hi)).float().mean()
    r = torch.exp(d)
    kl = ((r - 1 - d) * m).sum() / m.sum().clamp(min=1)
    values = torch.stack([rho.mean(), rho.min(), rho.max(), outside, kl]).tolist()
    kind = "masked" if mode.endswith("mask") else "clipped"
    names = ("is_ratio_mean", "is_ratio_min", "is_ratio_max", f"is_{kind}_frac", "sampler_kl")
    return {f"rollout/{n}": float(v) for n, v in zip(names, values, strict=True)}
