"""MiniLLM: on-policy distillation optimised as a policy gradient, a GRPO loop with a teacher.

    python -m engine.train --spec minillm.json --out runs/minillm

Generation, rewards, batching, the GRPO advantage and the clipped objective of the configured `loss_type`
are `engine.algorithms.grpo`'s (`MiniLLMTrainer` subclasses `GRPOTrainer`; `num_generations` may be 1,
whose group advantage is 0). Per micro-batch, with student and teacher logits over the completion
positions divided by `kd_temperature`, MiniLLM adds:

* `rkl_advantage`: the per-token reverse-KL advantage of `engine.losses.minillm_rkl_advantages`
  (R_t = log P_T(y_t) - log P_S(y_t), discounted by `gamma`, optionally `length_normalization`) added to
  the row's GRPO advantage, so the policy term becomes a (B, T)-advantage GRPO loss;
* `single_step_decomposition`: the full-vocabulary reverse KL(P_S || P_T) of every completion token
  (`distill` loss `minillm`), divided by the completion tokens of the whole optimizer step.

As in TRL, the policy term's log-probs use GRPO's `temperature` while both MiniLLM terms use
`kd_temperature`. Where TRL's version lets padding leak into the sums, back-propagates through the advantage
or scales the single-step term by gradient accumulation, this one does not: padding never counts, the advantage is detached, and the single-step term has a global divisor
(it is not multiplied by gradient accumulation). The student's decoder runs once per micro-batch: its
hidden states feed the GRPO log-probs and both MiniLLM terms; the teacher runs under inference mode.
The teacher is loaded and checked as for GKD (`engine.algorithms.distill.load_teacher`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.distill import load_teacher, shared_vocab
from engine.algorithms.grpo import GRPOTrainer
from engine.functional import Count, GlobalCounts
from engine.logprobs import LOGIT_BUDGET, output_logits, stats_from_hidden, target_hidden
from engine.losses import DistillLossConfig, distill_loss, minillm_rkl_advantages
from engine.rollout.buffer import MicroBatch


def _minillm_chunk(
    student: Any,
    teacher: Any,
    h_student: torch.Tensor,
    h_teacher: torch.Tensor,
    targets: torch.Tensor,
    num_tokens: Count,
    cfg: DistillLossConfig,
    vocab: int,
    single_step: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """((n, 2) detached [log P_S(y), log P_T(y)] at kd_temperature, single-step loss of the chunk)."""
    s_logits = output_logits(student, h_student)[:, :vocab]  # (n, V) float32, temperature 1
    with torch.no_grad():
        t_logits = output_logits(teacher, h_teacher)[:, :vocab]
        t = targets.unsqueeze(-1)
        s_lp = F.log_softmax(s_logits.detach() / cfg.temperature, dim=-1).gather(-1, t).squeeze(-1)
        t_lp = F.log_softmax(t_logits / cfg.temperature, dim=-1).gather(-1, t).squeeze(-1)
    if single_step:  # the library divides both logits by cfg.temperature (= kd_temperature)
        mask = torch.ones(s_logits.shape[0], dtype=s_logits.dtype, device=s_logits.device)
        loss = distill_loss(s_logits, t_logits, mask, num_tokens, cfg).loss
    else:
        loss = s_logits.new_zeros(())
    return torch.stack([s_lp, t_lp], dim=-1), loss


def minillm_terms(
    student: Any,
    teacher: Any,
    h_student: torch.Tensor,
    h_teacher: torch.Tensor,
    targets: torch.Tensor,
    num_tokens: Count,
    cfg: DistillLossConfig,
    vocab: int,
    single_step: bool,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the selected completion tokens (hidden states (n, H) of both models, targets (n,)):
    ((n, 2) detached student / teacher log-probs of the targets at kd_temperature, the single-step
    reverse-KL loss / `num_tokens`, or 0). Chunked over tokens, activation-checkpointed with gradients."""
    size = chunk_size or max(1, LOGIT_BUDGET // (4 * vocab))
    use_ckpt = single_step and torch.is_grad_enabled() and h_student.requires_grad
    logps, losses = [], []
    for start in range(0, h_student.shape[0], size):
        end = start + size
        args = (student, teacher, h_student[start:end], h_teacher[start:end], targets[start:end])
        rest = (num_tokens, cfg, vocab, single_step)
        lp, loss = (
            checkpoint(_minillm_chunk, *args, *rest, use_reentrant=False)
            if use_ckpt
            else _minillm_chunk(*args, *rest)
        )
        logps.append(lp)
        losses.append(loss)
    if not logps:
        return h_student.new_zeros(0, 2).float(), h_student.sum().float() * 0.0
    return torch.cat(logps), torch.stack(losses).sum()


class MiniLLMTrainer(GRPOTrainer):
    def __init__(self, spec: Any, ctx: TrainContext) -> None:
        super().__init__(spec, ctx)
        self.teacher = load_teacher(spec, ctx, self.tokenizer)
        self.vocab = shared_vocab(self.model, self.teacher, self.tokenizer, ctx)
        self.distill_cfg = DistillLossConfig.from_spec(self.cfg)
        self._hidden: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        ctx.events.log(
            f"minillm: teacher {self.cfg.teacher_model_name_or_path}, kd_temperature={self.cfg.kd_temperature}, "
            f"rkl_advantage={self.cfg.rkl_advantage} (gamma={self.cfg.gamma}), "
            f"single_step_decomposition={self.cfg.single_step_decomposition}"
        )

    def _logps(
        self, model: Any, mb: MicroBatch, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The policy's log-probs of the current micro-step from the hidden states `micro_step` already
        computed (one decoder forward); any other call is GRPO's own."""
        if self._hidden is None or model is not self.model:
            return super()._logps(model, mb, with_entropy)
        hidden, targets, index = self._hidden
        self._hidden = None
        out = stats_from_hidden(
            model,
            hidden,
            targets,
            tuple(mb.loss_mask.shape),
            index,
            temperature=self.cfg.temperature,
            with_entropy=with_entropy,
        )
        return out["logps"], out.get("entropies")

    def micro_step(self, mb: MicroBatch, counts: GlobalCounts, metrics: StepMetrics) -> torch.Tensor:
        cfg, ctx = self.cfg, self.ctx
        mask = mb.loss_mask  # (b, C)
        index = mask.reshape(-1).nonzero().squeeze(-1)
        args = (mb.input_ids, mb.attention_mask, mb.logits_to_keep, index)
        with ctx.autocast():
            h_student, targets = target_hidden(self.model, *args)
            with torch.inference_mode():
                h_teacher, _ = target_hidden(self.teacher, *args)
            h_teacher = h_teacher.clone()
            logps, single_step = minillm_terms(
                self.model,
                self.teacher,
                h_student,
                h_teacher,
                targets,
                counts.num_tokens,
                self.distill_cfg,
                self.vocab,
                cfg.single_step_decomposition,
            )
        grid = torch.zeros(mask.numel(), 2, dtype=torch.float32, device=mask.device)
        grid = grid.index_put((index,), logps).reshape(*mask.shape, 2)
        student_kd, teacher_kd = grid[..., 0], grid[..., 1]
        reward = (teacher_kd - student_kd) * mask
        metrics.add_sum("distill/rkl_reward", reward.sum() / max(1.0, float(counts.num_tokens)))
        if cfg.rkl_advantage:
            rkl = minillm_rkl_advantages(student_kd, teacher_kd, mask, cfg.gamma, cfg.length_normalization)
            mb = dataclasses.replace(mb, advantages=mb.advantages.unsqueeze(1) + rkl)
        self._hidden = (h_student, targets, index)
        try:
            loss = super().micro_step(mb, counts, metrics)
        finally:
            self._hidden = None
        if cfg.single_step_decomposition:
            metrics.add_sum("distill/minillm_single_step", single_step.detach())
            loss = loss + single_step
        return loss


def train(spec: Any, ctx: TrainContext) -> Path:
    """Run a MiniLLM job; returns DIR/final."""
    return MiniLLMTrainer(spec, ctx).train()
