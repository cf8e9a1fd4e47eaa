"""PAPO (perception-aware policy optimisation, arXiv 2507.06448): GRPO / DAPO on image prompts plus
perception terms, trained by the GRPO loop (`engine.algorithms.grpo`).

Every micro-step runs the policy twice with gradients: on the real images (the GRPO forward, with
entropies) and on the same images corrupted by `engine.multimodal.masking` (`mask_type`, `mask_ratio`).
The loss adds `engine.losses.papo_perception_loss`:

    L = J_grpo - perception_loss_weight * KL_prc + der_loss_weight1 * H + der_loss_weight2 * H_mask

with KL_prc the clamped k3 estimate between the two forwards (maximised) and H / H_mask the token-mean
entropies of the two forwards. The masks are drawn from the job's seed, the optimizer step and the
micro-step's place in it, so a job (and a resumed job) corrupts the same images the same way. Metrics:
`papo/perception_kl`, `papo/entropy`, `papo/masked_entropy`, `papo/loss` (the added term) and
`papo/masked_fraction` (the share of pixel values zeroed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.grpo import GRPOTrainer
from engine.functional import GlobalCounts
from engine.logprobs import token_logprobs
from engine.losses import papo_perception_loss
from engine.multimodal.masking import mask_vision, vision_patch_size
from engine.rollout.buffer import MicroBatch


def mask_seed(job_seed: int, step: int, micro: int) -> int:
    """The seed of one micro-step's image masks."""
    return (job_seed * 1_000_003 + step * 10_007 + micro) % (2**63 - 1)


class PAPOTrainer(GRPOTrainer):
    def __init__(self, spec: Any, ctx: TrainContext) -> None:
        super().__init__(spec, ctx)
        self.need_entropy = True  # the double entropy terms need the real forward's entropies
        from engine.models import unwrap

        base = unwrap(self.model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        self.patch = vision_patch_size(base)
        self._mask_step, self._mask_micro = -1, 0

    def _next_seed(self) -> int:
        if self._mask_step != self.ctx.step:
            self._mask_step, self._mask_micro = self.ctx.step, 0
        seed = mask_seed(self.ctx.seed, self.ctx.step, self._mask_micro)
        self._mask_micro += 1
        return seed

    def masked_vision(self, mb: MicroBatch) -> dict[str, torch.Tensor]:
        if not mb.vision:
            raise ValueError("PAPO needs images in every batch; a micro-batch had none")
        cfg = self.cfg
        return mask_vision(mb.vision, cfg.mask_ratio, cfg.mask_type, self._next_seed(), self.patch)

    def auxiliary_loss(
        self,
        mb: MicroBatch,
        logps: torch.Tensor,
        entropies: torch.Tensor | None,
        counts: GlobalCounts,
        metrics: StepMetrics,
    ) -> torch.Tensor:
        cfg = self.cfg
        masked = self.masked_vision(mb)
        with self.ctx.timer("masked_forward"), self.ctx.autocast():
            masked_logps, masked_entropies = token_logprobs(
                self.model,
                mb.input_ids,
                mb.attention_mask,
                logits_to_keep=mb.logits_to_keep,
                temperature=cfg.temperature,
                with_entropy=True,
                mask=mb.loss_mask,
                vision=masked,
            )
        assert entropies is not None and masked_entropies is not None
        out = papo_perception_loss(
            logps,
            masked_logps,
            entropies,
            masked_entropies,
            mb.loss_mask,
            counts.num_tokens,
            perception_loss_weight=cfg.perception_loss_weight,
            der_loss_weight1=cfg.der_loss_weight1,
            der_loss_weight2=cfg.der_loss_weight2,
        )
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        pixels = mb.vision["pixel_values"]
        zeroed = (masked["pixel_values"] == 0) & (pixels != 0)
        metrics.add_mean("papo/masked_fraction", zeroed.float().mean(), 1.0)
        return out.loss


def train(spec: Any, ctx: TrainContext) -> Path:
    """Run a PAPO job; returns DIR/final."""
    return PAPOTrainer(spec, ctx).train()
