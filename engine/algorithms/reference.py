"""Completion log-probs of a model and of a frozen reference, and reference tables computed before training.

    stats = completion_stats(policy, tokens, with_log_sum_p2=True)   # per-token `logps` (B, K), ...
    seq = summed_logps(policy, tokens)                  # (B,) sums over each row's completion tokens
    ref_seq = reference_logps(ref, tokens)              # the same under the reference, inference mode
    table = precompute(ref, examples, collate, batch_size, score, ctx)   # (N, k) on the CPU
    ref_seq = lookup(table, indices, device)            # the rows of one micro-batch

Every function reads a `TokenBatch` as built by `engine.data.collate.pad_rows`: its loss mask selects the
completion tokens, and a packed batch (padding-free) runs the decoder without padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.data.collate import TokenBatch
from engine.logprobs import token_stats
from engine.models import Reference


def completion_stats(
    model: Any, tokens: TokenBatch, with_log_sum_p2: bool = False
) -> dict[str, torch.Tensor]:
    """Per-token statistics (B, K) of the completion tokens of `tokens` (`engine.logprobs.token_stats`):
    `logps`, and `log_sum_p2` when asked for; zeros where the loss mask is 0."""
    return token_stats(
        model,
        tokens.input_ids,
        tokens.attention_mask,
        tokens.logits_to_keep,
        mask=tokens.loss_mask,
        index=tokens.target_index,
        packed=tokens.packed,
        with_log_sum_p2=with_log_sum_p2,
    )


def summed_logps(model: Any, tokens: TokenBatch) -> torch.Tensor:
    """(B,) sums of the completion-token log-probs of `tokens` under `model`."""
    return (completion_stats(model, tokens)["logps"] * tokens.loss_mask).sum(-1)


def reference_logps(
    ref: Reference, tokens: TokenBatch, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Sequence log-probs under the reference, under inference mode: `reduce(per-token logps)`, by default
    the sum over each row's completion tokens."""
    with ref.use() as model:
        logps = completion_stats(model, tokens)["logps"]
        seq = (logps * tokens.loss_mask).sum(-1) if reduce is None else reduce(logps)
    return seq.clone()  # a normal tensor (outside inference mode) that autograd may use


def precompute(
    examples: Sequence[Any],
    collate: Callable[[list[Any]], Any],
    batch_size: int,
    score: Callable[[Any], torch.Tensor],
    ctx: Any,
) -> torch.Tensor:
    """(N, k) float32 table on the CPU: `score(batch)` -> (b, k) for every example, in batches of
    `batch_size` examples of similar length, each collated by `collate(examples)` and moved to the device."""
    out: torch.Tensor | None = None
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collate([examples[i] for i in indices]).to(ctx.device)
        with ctx.autocast():
            values = score(batch).float().cpu()
        if out is None:
            out = torch.zeros(len(examples), values.shape[1], dtype=torch.float32)
        out[torch.tensor(indices)] = values
    assert out is not None  # `examples` is never empty: the data loaders refuse an empty dataset
    return out


def lookup(table: torch.Tensor | None, indices: list[int], device: torch.device) -> torch.Tensor | None:
    """The table's rows of one micro-batch, on the device (None without a table)."""
    return None if table is None else table[torch.tensor(indices)].to(device)
