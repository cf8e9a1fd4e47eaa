"""Typed inputs of the losses: small dataclasses whose fields document their shapes.

B = rows (completions, pairs or unpaired examples) in the micro-batch, T = completion width.
Masks are 1 where a token counts. Sequence log-probs are sums over completion tokens.
Nothing here computes anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PolicyBatch:
    """One micro-batch for the GRPO-family losses.

    logps: (B, T) per-token log-probs of the current policy, with grad (logits / temperature).
    mask: (B, T) 1 where the token counts (completion * tool mask * not truncated).
    advantages: (B,) per sequence, or (B, T) per token (e.g. MiniLLM).
    old_logps: (B, T) no grad; None means on-policy (ratio = exp(logps - logps.detach())).
    ref_logps: (B, T) reference model log-probs, needed when beta != 0.
    sampling_logps: (B, T) log-probs reported by the sampler (vLLM), for IS correction / off-policy mask.
    entropies: (B, T) entropies of the policy's next-token distributions; grad only matters for the
        entropy bonus (the entropy mask detaches them).
    """

    logps: Tensor
    mask: Tensor
    advantages: Tensor
    old_logps: Tensor | None = None
    ref_logps: Tensor | None = None
    sampling_logps: Tensor | None = None
    entropies: Tensor | None = None


@dataclass
class PreferenceBatch:
    """One micro-batch of preference pairs (DPO, CPO).

    chosen_logps / rejected_logps: (B,) sums of completion-token log-probs of the policy, with grad.
    ref_chosen_logps / ref_rejected_logps: (B,) same for the reference (None: reference-free, i.e. 0).
    chosen_lengths / rejected_lengths: (B,) completion token counts (ipo, sigmoid_norm, CPO ipo/simpo).
    chosen_nll: (B,) sum over chosen completion tokens of -log p (the `sft` loss and RPO / CPO NLL).
    chosen_weights / rejected_weights: (B,) WPO weights omega(y) (see `engine.losses.dpo.wpo_weights`).
    """

    chosen_logps: Tensor
    rejected_logps: Tensor
    ref_chosen_logps: Tensor | None = None
    ref_rejected_logps: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None
    chosen_nll: Tensor | None = None
    chosen_weights: Tensor | None = None
    rejected_weights: Tensor | None = None


@dataclass
class UnpairedBatch:
    """One micro-batch of unpaired feedback (KTO, BCO).

    logps: (B,) sums of completion-token log-probs of the policy, with grad.
    ref_logps: (B,) same for the reference model (no grad).
    labels: (B,) bool, True = desirable.
    weights: (B,) optional per-row weights (BCO's density-ratio weights for undesirable rows).
    """

    logps: Tensor
    ref_logps: Tensor
    labels: Tensor
    weights: Tensor | None = None
