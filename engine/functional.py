"""Tensor primitives shared by the losses and the training loops.

Masked sums and means, NaN-aware statistics, per-token log-probs and entropies from logits, the k3
KL estimator, and `aggregate`: the one helper that turns a per-token loss into a scalar normalised
by **global** counts (tokens or sequences of the whole optimizer step, all micro-batches and
ranks). Because every divisor is global, calling a loss once per micro-batch and summing the
results gives exactly the full-batch loss; loops never divide by gradient_accumulation_steps.

Pure tensor code: no model, no distributed calls, no host syncs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Count = float | int | Tensor


@dataclass(frozen=True)
class GlobalCounts:
    """Totals over the whole optimizer step (all micro-batches, all ranks) that losses divide by.

    num_tokens: active (mask == 1) completion tokens; num_sequences: completions (rows), fully
    masked rows included. entropy_threshold: optional global `top_entropy_quantile` threshold
    (see `engine.losses.masks.entropy_threshold`); when None the threshold is taken from the
    micro-batch the loss sees, which breaks exact micro-batch invariance of the entropy mask.
    num_entropy_tokens: tokens the entropy mask keeps over the step (what the entropy bonus is
    averaged over when `top_entropy_quantile` < 1); when None the micro-batch's own kept count is
    used, exact only when the micro-batch is the whole step.
    """

    num_tokens: Count
    num_sequences: Count
    entropy_threshold: Count | None = None
    num_entropy_tokens: Count | None = None

    @classmethod
    def from_mask(cls, mask: Tensor) -> GlobalCounts:
        """Counts of one (B, T) mask, for single-process, single-micro-batch use."""
        return cls(num_tokens=mask.sum(), num_sequences=mask.shape[0])


def clamp_count(count: Count) -> Count:
    """max(1, count): a fully masked step must give 0, never 0/0."""
    if isinstance(count, Tensor):
        return count.clamp(min=1)
    return max(1.0, float(count))


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Sum of `values * mask` (mask 1 where a value counts); `dim=None` sums everything."""
    prod = values * mask.to(values.dtype)
    if dim is None:
        return prod.sum()
    return prod.sum(dim=dim, keepdim=keepdim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Mean of the values where mask == 1; an all-zero mask gives 0 (count clamped to 1)."""
    mask = mask.to(values.dtype)
    total = masked_sum(values, mask, dim=dim, keepdim=keepdim)
    count = mask.sum() if dim is None else mask.sum(dim=dim, keepdim=keepdim)
    return total / count.clamp(min=1)


def nanmean(values: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Mean ignoring NaNs; NaN where every value is NaN."""
    if dim is None:
        return torch.nanmean(values)
    return torch.nanmean(values, dim=dim, keepdim=keepdim)


def nanstd(values: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (n - 1); NaN with fewer than 2 values."""
    valid = ~torch.isnan(values)
    n = valid.sum() if dim is None else valid.sum(dim=dim, keepdim=True)
    mean = nanmean(values, dim=dim, keepdim=True) if dim is not None else nanmean(values)
    sq = torch.where(valid, (values - mean) ** 2, torch.zeros_like(values))
    ss = sq.sum() if dim is None else sq.sum(dim=dim, keepdim=True)
    var = ss / (n - 1).to(values.dtype)
    var = torch.where(n >= 2, var, torch.full_like(var, float("nan")))
    std = var.sqrt()
    if dim is not None and not keepdim:
        std = std.squeeze(dim)
    return std


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """log softmax(logits)[..., index]: (B, T, V), (B, T) -> (B, T). Exact in every dtype."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    # low precision: a row-wise log_softmax keeps the normaliser accurate
    rows = [
        torch.gather(F.log_softmax(row, dim=-1), -1, idx.unsqueeze(-1)).squeeze(-1)
        for row, idx in zip(logits, index, strict=True)
    ]
    return torch.stack(rows)


def chunked_selective_log_softmax(logits: Tensor, index: Tensor, chunk_size: int = 1024) -> Tensor:
    """`selective_log_softmax` computed in float32 (or float64) over chunks of rows to bound memory.

    logits (N, V) or (B, T, V); same math as the unchunked version (the `chunked_nll` path).
    """
    shape = index.shape
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_index = index.reshape(-1)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    out = [
        selective_log_softmax(flat_logits[s : s + chunk_size].to(dtype), flat_index[s : s + chunk_size])
        for s in range(0, flat_index.numel(), chunk_size)
    ]
    if not out:
        return flat_logits.new_zeros(shape, dtype=dtype)
    return torch.cat(out).reshape(shape)


def entropy_from_logits(logits: Tensor, chunk_size: int = 128) -> Tensor:
    """Entropy in nats of softmax(logits) over the last dim: (..., V) -> (...), in chunks of rows."""
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for s in range(0, flat.shape[0], chunk_size):
        chunk = flat[s : s + chunk_size]
        logp = F.log_softmax(chunk, dim=-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    if not parts:
        return flat.new_zeros(logits.shape[:-1])
    return torch.cat(parts).reshape(logits.shape[:-1])


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: e^(ref - logp) - (ref - logp) - 1 >= 0."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


# --- aggregation -----------------------------------------------------------------------------------


def _token_mean(per_token: Tensor, mask: Tensor, counts: GlobalCounts, max_len: int | None) -> Tensor:
    return masked_sum(per_token, mask) / clamp_count(counts.num_tokens)


def _sequence_mean(per_token: Tensor, mask: Tensor, counts: GlobalCounts, max_len: int | None) -> Tensor:
    per_seq = masked_sum(per_token, mask, dim=-1) / mask.sum(-1).clamp(min=1).to(per_token.dtype)
    return per_seq.sum() / clamp_count(counts.num_sequences)


def _sequence_sum(per_token: Tensor, mask: Tensor, counts: GlobalCounts, max_len: int | None) -> Tensor:
    return masked_sum(per_token, mask) / clamp_count(counts.num_sequences)


def _fixed_length(per_token: Tensor, mask: Tensor, counts: GlobalCounts, max_len: int | None) -> Tensor:
    if max_len is None or max_len < 1:
        raise ValueError("aggregation 'fixed_length' (dr_grpo) needs max_completion_length >= 1")
    return masked_sum(per_token, mask) / (clamp_count(counts.num_sequences) * max_len)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, GlobalCounts, int | None], Tensor]] = {
    # sum(m*L) / global active tokens (bnpo, dapo, cispo, vespo)
    "token_mean": _token_mean,
    # sum_i [sum_t m*L / max(1, |o_i|)] / global sequences (grpo, sapo)
    "sequence_mean": _sequence_mean,
    # sum(m*L) / global sequences: each sequence weighted by its length (luspo)
    "sequence_sum": _sequence_sum,
    # sum(m*L) / (global sequences * max_completion_length) (dr_grpo)
    "fixed_length": _fixed_length,
}


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str,
    counts: GlobalCounts,
    max_completion_length: int | None = None,
) -> Tensor:
    """Reduce a per-token loss (B, T) (or (B, 1), broadcast) under `mask` (B, T) to a scalar.

    Every mode divides by global counts, so summing the results of disjoint micro-batches equals the
    result on their union. Fully masked rows contribute 0 and never divide by zero.
    """
    try:
        fn = AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(f"unknown aggregation {mode!r}; known: {sorted(AGGREGATIONS)}") from None
    per_token = per_token.expand_as(mask) if per_token.shape != mask.shape else per_token
    return fn(per_token, mask, counts, max_completion_length)
