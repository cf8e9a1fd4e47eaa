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

Several processes (`engine.distributed`): the loops all-reduce their counts, so each rank's loss is its
share of the global loss and the gradient of the global batch is the *sum* of the ranks' gradients.
Without DeepSpeed the gradients are summed with one all-reduce per step (plain data parallelism: every rank
keeps the whole model and optimizer). With `distributed.distributed_type: DEEPSPEED` the model is handed to
a DeepSpeed engine (ZeRO stage 0-3, optional CPU offload, bf16/fp16) that reduces and partitions
gradients, optimizer state and, at stage 3, parameters; DeepSpeed averages gradients over ranks, so the
loss it backwards is multiplied by the world size. The loops keep calling the model as before: its calls
are routed through the engine. Only rank 0 writes events, checkpoint metadata and the final model.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch

from engine import distributed
from engine.algorithms.common import (
    STATE_FILE,
    Checkpointer,
    StepMetrics,
    TrainContext,
    allocate_adamw_state,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    rng_state,
    set_rng_state,
)
from engine.algorithms.zero import ZeroEngine, use_deepspeed
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
        self.procs = distributed.current()
        self.checkpointer = Checkpointer(ctx.out_dir / "checkpoints", cfg.save_total_limit)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.step_count = 0
        self.steps_run = 0  # optimizer steps this run took (a resumed job starts again at 0)
        self.zero_gradient_steps = 0  # of those, the ones whose gradient was exactly 0 (when it was read)
        self.zero: ZeroEngine | None = None
        if use_deepspeed(ctx.spec):
            self.zero = ZeroEngine(ctx, model, total_steps, self.procs)
            self.optimizer, self.scheduler = self.zero.optimizer, self.zero.scheduler
            self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=False)
        else:
            self.optimizer = build_optimizer(model, cfg)
            allocate_adamw_state(self.optimizer)
            self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)
            self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.dtype == torch.float16)
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
        if self.zero is not None:
            self.zero.load(latest)
            state = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)
        else:
            state = self.checkpointer.load(
                latest, self.model, self.optimizer, self.scheduler, self.scaler, map_location=ctx.device
            )
        if self.procs.active:  # each rank continues its own random stream
            set_rng_state(torch.load(latest / f"rng-{self.procs.rank}.pt", weights_only=False))
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
        with self.ctx.timer("backward"):
            if self.zero is not None:
                self.zero.backward(loss)
            else:
                self.scaler.scale(loss).backward()

    def step(self, metrics: StepMetrics) -> None:
        """Unscale, clip to `max_grad_norm`, step the optimizer and the schedule, clear gradients, mix the
        reference when due. Adds `train/grad_norm` (the norm before clipping) to `metrics`."""
        with self.ctx.timer("optimizer"):
            self._step(metrics)

    def _step(self, metrics: StepMetrics) -> None:
        self.lr = self.scheduler.get_last_lr()[0]
        if self.zero is not None:
            grad_norm: Any = self.zero.step()
        else:
            if self.procs.active:
                _sum_gradients(self.params)
            self.scaler.unscale_(self.optimizer)
            grad_norm = clip_gradients(self.params, self.cfg.max_grad_norm)
            # A diverged step must not reach the weights (one host sync per step); fp16 scaling skips such steps.
            if not self.scaler.is_enabled():
                norm = float(grad_norm)
                if not math.isfinite(norm):
                    raise NonFiniteLoss(self.step_count + 1, "gradient")
                self.zero_gradient_steps += norm == 0.0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.steps_run += 1
        self.ctx.step = self.step_count
        cfg = self.cfg
        if self.reference is not None and self.step_count % cfg.ref_model_sync_steps == 0:
            mix_into_reference(self.reference, self.model, cfg.ref_model_mixup_alpha)
        metrics.add_sum("train/grad_norm", grad_norm, replicated=True)

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
        ctx.timer.flush(metrics)
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
        """`checkpoint-<step>/`: the model in Hugging Face format, `trainer_state.pt` (step, optimizer,
        schedule, scaler, RNG, data position, algorithm state), one RNG file per rank when there are
        several, and under DeepSpeed its own `deepspeed/` folder (optimizer state shards)."""
        state = dict(algorithm_state or {})
        if self.reference is not None:
            state[REFERENCE_KEY] = {k: v.detach().cpu() for k, v in self.reference.state_dict().items()}
        procs, step = self.procs, self.step_count
        if not procs.active and self.zero is None:
            path = self.checkpointer.save(
                step,
                self.model,
                self.tokenizer,
                self.optimizer,
                self.scheduler,
                data_position=data_position,
                algorithm_state=state,
                scaler=self.scaler,
            )
            self.ctx.events.checkpoint(step, str(path), kept=self.checkpointer.all())
            return path
        tmp = self.checkpointer.begin(step) if procs.is_main else self.checkpointer.temporary(step)
        distributed.barrier()
        torch.save(rng_state(), tmp / f"rng-{procs.rank}.pt")
        if self.zero is not None:
            self.zero.save(tmp)
        self._write_model(tmp)
        distributed.barrier()
        path = tmp
        if procs.is_main:
            optimizer = None if self.zero is not None else self.optimizer
            scheduler = None if self.zero is not None else self.scheduler
            path = self.checkpointer.commit(
                step, tmp, optimizer, scheduler, data_position, state, scaler=self.scaler
            )
            self.ctx.events.checkpoint(step, str(path), kept=self.checkpointer.all())
        distributed.barrier()
        return path

    def _write_model(self, path: Path) -> None:
        """The whole model in Hugging Face format (ZeRO-3 shards gathered first), written by rank 0."""
        from engine.models import save_model

        gather = self.zero.gathered() if self.zero is not None else contextlib.nullcontext()
        with gather:
            if self.procs.is_main:
                save_model(self.model, self.tokenizer, path)

    def save_final(self) -> Path:
        """The trained model (or LoRA adapter) and tokenizer in Hugging Face format under DIR/final; a
        warning first when some steps had a zero gradient (a run with none but such steps gets the event
        writer's degenerate-run warning instead)."""
        n, run = self.zero_gradient_steps, self.steps_run
        if 0 < n < run:
            self.ctx.events.log(
                f"{n} of {run} optimizer steps had a zero gradient and did not change the model: every loss "
                "term was 0 (online jobs: rewards equal within every group with beta 0, or no completion token "
                "left in the loss; see rollout/frac_reward_zero_std and the samples)",
                level="warning",
            )
        final = self.ctx.out_dir / "final"
        self._write_model(final)
        distributed.barrier()
        return final


def _sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every gradient over the ranks with one all-reduce of a flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    distributed.all_reduce_sum_(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
