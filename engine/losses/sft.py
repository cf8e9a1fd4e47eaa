"""SFT token losses, registered in the `sft` family.

    out = sft_loss(logps, mask, "nll", num_tokens)   # logps, mask: (B, T); num_tokens: global label tokens

`nll` / `chunked_nll`: -sum(m log p) / N. `dft` (Dynamic Fine-Tuning, arXiv 2508.05629):
-sum(m sg(p) log p) / N. N = label tokens of the whole optimizer step (all micro-batches and
ranks), so summing micro-batch losses gives the step loss. `chunked_nll` is the same math; the
memory saving lives in how the loop computes log-probs (`engine.functional.chunked_selective_log_softmax`),
here it only upcasts low-precision log-probs to float32.
Not here: label masking, packing (engine.data).
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.functional import Count, clamp_count, masked_sum
from engine.losses.registry import LossOutput, get_loss, register


def _metrics(logps: Tensor, mask: Tensor, num_tokens: Count) -> dict[str, Tensor]:
    return {"sft/nll": (-masked_sum(logps.detach(), mask) / clamp_count(num_tokens)).detach()}


@register("sft", "nll")
def nll(logps: Tensor, mask: Tensor, num_tokens: Count) -> LossOutput:
    """Token cross-entropy: -sum(m * logp) / num_tokens. logps, mask: (B, T). Zero (still connected
    to the graph) when no token counts."""
    loss = -masked_sum(logps, mask) / clamp_count(num_tokens)
    return LossOutput(loss=loss, metrics=_metrics(logps, mask, num_tokens))


@register("sft", "chunked_nll")
def chunked_nll(logps: Tensor, mask: Tensor, num_tokens: Count) -> LossOutput:
    """`nll` computed in at least float32 (same math; TRL's chunked path)."""
    if logps.dtype in (torch.float16, torch.bfloat16):
        logps = logps.float()
    return nll(logps, mask, num_tokens)


@register("sft", "dft")
def dft(logps: Tensor, mask: Tensor, num_tokens: Count) -> LossOutput:
    """DFT (arXiv 2508.05629): -sum(m * sg(p) * logp) / num_tokens; gradient -sum(m grad p) / N."""
    loss = -masked_sum(torch.exp(logps.detach()) * logps, mask) / clamp_count(num_tokens)
    return LossOutput(loss=loss, metrics=_metrics(logps, mask, num_tokens))


def sft_loss(logps: Tensor, mask: Tensor, loss_type: str, num_tokens: Count) -> LossOutput:
    """The SFT loss `loss_type` for one micro-batch: logps, mask (B, T); num_tokens global."""
    out = get_loss("sft", loss_type)(logps, mask, num_tokens)
    metrics = dict(out.metrics)
    metrics["sft/loss"] = out.loss.detach()
    return LossOutput(loss=out.loss, metrics=metrics)
