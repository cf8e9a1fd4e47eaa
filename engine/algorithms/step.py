"""The optimizer step every loop shares: one place for backward, clipping, the optimizer and its schedule,
mixed precision, checkpoints and resume, and the reference-model mix (TR-DPO `sync_ref_model`).

    stepper = OptimizerStep(ctx, model, tokenizer, total_steps, reference=ref_module_or_None)
    saved = stepper.resume()                 # None, or the checkpoint's data_position / algorithm_state
    for each optimizer step:
        for each micro-batch: stepper.backward(loss)   # losses are already divided by global counts
        stepper.step(metrics)                # unscale, clip, step, schedule, zero grads, mix reference
        stepper.report(metrics, epoch)       # progress event; metrics every logging_steps and at the end
        stepper.save_due(position, algorithm_state)    # a checkpoint every save_steps and at the end
    stepper.save_final()                     # DIR/final in Hugging Face format

Gradient accumulation needs no division here: every micro-batch loss is normalised by the whole optimizer
step's global counts, so the summed gradients are the gradient of the step's loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.algorithms.common import (
    Checkpointer,
    StepMetrics,
    TrainContext,
    build_optimizer,
    build_scheduler,
    clip_gradients,
)
from engine.errors import NonFiniteLoss

REFERENCE_KEY = "reference"  # algorithm_state key of a reference moved by sync_ref_model


@torch.no_grad()
def mix_into_reference(ref_model: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """TR-DPO soft update (arXiv 2404.09656): ref <- alpha * policy + (1 - alpha) * ref."""
    for r, p in zip(ref_model.parameters(), policy.parameters(), strict=True):
        r.mul_(1.0 - alpha).add_(p.detach().to(r.dtype), alpha=alpha)


class OptimizerStep:
    """Owns the trained model's optimizer, schedule, grad scaler and checkpoints for one job.

    `reference` is the separate reference module that `sync_ref_model` moves towards the policy every
    `ref_model_sync_steps` steps (None when the config does not ask for it); its weights travel in the
    checkpoint's algorithm state because after a mix they are no longer the initial ones.
    """

    def __init__(
        self,
        ctx: TrainContext,
        model: Any,
        tokenizer: Any,
        total_steps: int,
        reference: torch.nn.Module | None = None,
    ) -> None:
        cfg = ctx.spec.config
        self.ctx, self.cfg, self.model, self.tokenizer = ctx, cfg, model, tokenizer
        self.total = total_steps
        self.reference = reference if getattr(cfg, "sync_ref_model", False) else None
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.dtype == torch.float16)
        self.checkpointer = Checkpointer(ctx.out_dir / "checkpoints", cfg.save_total_limit)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.step_count = 0
        self.lr = self.scheduler.get_last_lr()[0]

    # ------------------------------------------------------------------------------------------ resume

    def resume(self) -> dict[str, Any] | None:
        """When the job resumes, load the latest checkpoint (weights, optimizer, schedule, scaler, RNG, a
        moved reference) and return its saved state (`step`, `data_position`, `algorithm_state`)."""
        ctx = self.ctx
        if not ctx.resume:
            return None
        latest = self.checkpointer.latest()
        if latest is None:
            ctx.events.log("resume requested but no checkpoint found; starting from step 0", level="warning")
            return None
        state = self.checkpointer.load(
            latest, self.model, self.optimizer, self.scheduler, self.scaler, map_location=ctx.device
        )
        saved = state.get("algorithm_state") or {}
        if self.reference is not None and REFERENCE_KEY in saved:
            self.reference.load_state_dict(saved[REFERENCE_KEY])
        self.step_count = ctx.step = int(state["step"])
        ctx.events.log(f"resumed from {latest} at step {self.step_count}")
        return state

    # ------------------------------------------------------------------------------------ one step

    @property
    def done(self) -> bool:
        return self.step_count >= self.total

    def backward(self, loss: torch.Tensor) -> None:
        """Backward one micro-batch loss (scaled when training in float16)."""
        self.scaler.scale(loss).backward()

    def step(self, metrics: StepMetrics) -> None:
        """Unscale, clip to `max_grad_norm`, step the optimizer and the schedule, clear gradients, mix the
        reference when due. Adds `train/grad_norm` (the norm before clipping) to `metrics`."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.params, self.cfg.max_grad_norm)
        # A diverged step must not reach the weights (one host sync per step); fp16 scaling skips such steps.
        if not self.scaler.is_enabled() and not bool(torch.isfinite(grad_norm)):
            raise NonFiniteLoss(self.step_count + 1, "gradient")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.ctx.step = self.step_count
        cfg = self.cfg
        if self.reference is not None and self.step_count % cfg.ref_model_sync_steps == 0:
            mix_into_reference(self.reference, self.model, cfg.ref_model_mixup_alpha)
        metrics.add_sum("train/grad_norm", grad_norm)

    # ------------------------------------------------------------------------------------ reporting

    @property
    def log_due(self) -> bool:
        return self.step_count % self.cfg.logging_steps == 0 or self.done

    def report(self, metrics: StepMetrics, epoch: float) -> bool:
        """A progress event after every step; the accumulated metrics (with the learning rate the step
        used and the epoch) every `logging_steps` steps and after the last. Returns whether it logged."""
        ctx = self.ctx
        ctx.events.progress(step=self.step_count, total_steps=self.total, epoch=epoch)
        if not self.log_due:
            return False
        metrics.set("train/learning_rate", self.lr)
        metrics.set("train/epoch", epoch)
        ctx.events.metrics(self.step_count, metrics.compute())
        return True

    # ---------------------------------------------------------------------------------- checkpoints

    def save_due(self, data_position: dict[str, int] | None, algorithm_state: dict[str, Any] | None) -> None:
        """A checkpoint every `save_steps` steps and after the last one."""
        if self.step_count % self.cfg.save_steps == 0 or self.done:
            self.save(data_position, algorithm_state)

    def save(self, data_position: dict[str, int] | None, algorithm_state: dict[str, Any] | None) -> Path:
        state = dict(algorithm_state or {})
        if self.reference is not None:
            state[REFERENCE_KEY] = {k: v.detach().cpu() for k, v in self.reference.state_dict().items()}
        path = self.checkpointer.save(
            self.step_count,
            self.model,
            self.tokenizer,
            self.optimizer,
            self.scheduler,
            data_position=data_position,
            algorithm_state=state,
            scaler=self.scaler,
        )
        self.ctx.events.checkpoint(self.step_count, str(path), kept=self.checkpointer.all())
        return path

    def save_final(self) -> Path:
        """The trained model (or LoRA adapter) and tokenizer in Hugging Face format under DIR/final."""
        from engine.models import save_model

        return save_model(self.model, self.tokenizer, self.ctx.out_dir / "final")
