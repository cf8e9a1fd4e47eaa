"""The shape of an offline algorithm: a small class whose pieces the offline loop calls.

    algo = SFT(spec, ctx)
    algo.setup()                                   # tokenizer, data, model (and reference)
    batch = algo.collate([0, 1, 2])                # one micro-batch on the device
    counts = algo.counts([batch])                  # the global counts of an optimizer step
    loss = algo.micro_step(batch, counts, metrics) # forward + loss, normalised by `counts`
    final_dir = algo.train()                       # setup, then `run_offline_loop` (each step: step.py)

A subclass says how to read its data (`prepare`), build a batch (`collate`), count a step (`counts`) and
score a micro-batch (`micro_step`); optional: option checks before anything loads (`check`), what to load
after the policy (`after_load`: a reference, a weight average), what its checkpoints carry
(`state_dict` / `load_state_dict`), a hook after each optimizer step (`on_step_end`) and more files in
DIR/final (`save_extra`). `micro_step` depends on nothing but its arguments and what `setup` loaded, so it
can be called alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from engine import distributed
from engine.algorithms.common import (
    BatchStream,
    StepMetrics,
    TrainContext,
    offline_evaluator,
    total_optimizer_steps,
)
from engine.algorithms.step import OptimizerStep
from engine.models import load_policy, load_tokenizer


@dataclass
class OfflineParts:
    """What an offline algorithm plugs into `run_offline_loop`.

    collate(indices) -> batch: builds one micro-batch on the device.
    counts(batches) -> Any: the global counts of one optimizer step (host ints, computed before any forward).
    micro_step(batch, counts, metrics) -> loss: forward + loss (globally normalised), adds its metrics.
    on_step_end(step): optional hook after each optimizer step (e.g. weight averaging).
    state_dict()/load_state_dict(d): optional algorithm state saved in checkpoints.
    save_extra(final_dir): optional hook to write more into DIR/final (e.g. averaged weights).
    evaluate() -> metrics: optional; run every `eval_steps` and after the last step (`evaluate_offline`).
    ghost(batch) -> batch: optional; marks the stand-in batch of a rank with no rows of its own in a short
        last batch (its loss is zeroed; a micro-step that all-reduces statistics must add nothing for it).
    on_start(stepper): optional; gets the job's `OptimizerStep` before the first micro-batch is collated
        (e.g. to sample with the policy through `stepper.zero.for_generation()` under ZeRO-3).
    """

    model: Any
    tokenizer: Any
    stream: BatchStream
    collate: Callable[[list[int]], Any]
    counts: Callable[[list[Any]], Any]
    micro_step: Callable[[Any, Any, StepMetrics], torch.Tensor]
    on_step_end: Callable[[int], None] | None = None
    state_dict: Callable[[], dict[str, Any]] | None = None
    load_state_dict: Callable[[dict[str, Any]], None] | None = None
    save_extra: Callable[[Path], None] | None = None
    on_resume: Callable[[int], None] | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    ghost: Callable[[Any], Any] | None = None
    on_start: Callable[[Any], None] | None = None


def run_offline_loop(
    ctx: TrainContext, parts: OfflineParts, reference: torch.nn.Module | None = None
) -> Path:
    """Gradient accumulation over the stream's micro-batches, each optimizer step taken by `OptimizerStep`
    (which also mixes `reference` when the config asks for `sync_ref_model`). Returns DIR/final."""
    cfg = ctx.spec.config
    ga = cfg.gradient_accumulation_steps
    procs = distributed.current()
    if procs.active:  # plan micro-batches of the global size; each rank takes its share of every one
        old = parts.stream
        parts.stream = BatchStream(old.lengths, old.batch_size * procs.world, old.seed, old.shuffle)
    total = total_optimizer_steps(cfg, parts.stream.batches_per_epoch)
    stepper = OptimizerStep(ctx, parts.model, parts.tokenizer, total, reference=reference)
    if parts.on_start is not None:
        parts.on_start(stepper)
    state = stepper.resume()
    if state is not None:
        if state.get("data_position"):
            parts.stream.restore(state["data_position"])
        if parts.load_state_dict is not None:
            parts.load_state_dict(state.get("algorithm_state") or {})
        if parts.on_resume is not None:
            parts.on_resume(stepper.step_count)

    metrics = StepMetrics(ctx.device)
    parts.model.train()
    while not stepper.done:
        shares = [(distributed.shard(rows, procs), rows) for rows in parts.stream.take(ga)]
        # A rank whose share is empty (a short last batch) runs its first row with the loss zeroed, so
        # every rank runs the same number of forwards and backwards (ZeRO-3 gathers parameters in them).
        batches = [(parts.collate(mine or rows[:1]), not mine) for mine, rows in shares]
        if parts.ghost is not None:
            batches = [(parts.ghost(b) if ghost else b, ghost) for b, ghost in batches]
        counts = distributed.all_reduce_counts(parts.counts([b for b, ghost in batches if not ghost]))
        for batch, ghost in batches:
            ctx.check_stop()
            with ctx.timer("forward"), ctx.autocast():
                loss = parts.micro_step(batch, counts, StepMetrics(ctx.device) if ghost else metrics)
            if ghost:
                loss = loss * 0.0
            stepper.backward(loss)
            metrics.add_sum("train/loss", loss.detach())
        stepper.step(metrics)
        metrics.end_step()
        step = stepper.step_count
        if parts.on_step_end is not None:
            parts.on_step_end(step)
        stepper.report(metrics, parts.stream.epoch_float)
        if parts.evaluate is not None and ((cfg.eval_steps and step % cfg.eval_steps == 0) or stepper.done):
            ctx.events.metrics(step, parts.evaluate())
        stepper.save_due(parts.stream.position, parts.state_dict() if parts.state_dict else None)
    final = stepper.save_final()
    if parts.save_extra is not None:
        parts.save_extra(final)
    return final


class OfflineAlgorithm:
    """Base of the offline algorithms (SFT, DPO, KTO, BCO, CPO, reward)."""

    def __init__(self, spec: Any, ctx: TrainContext) -> None:
        self.spec, self.ctx, self.cfg = spec, ctx, spec.config
        self.tokenizer: Any = None
        self.model: Any = None
        self.examples: list[Any] = []
        self.eval_examples: list[Any] = []

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Check the options, then load the tokenizer, the training (and evaluation) rows and the model."""
        spec, ctx = self.spec, self.ctx
        self.check()
        self.tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
        self.examples = self.prepare()
        self.eval_examples = self.prepare(spec.eval_dataset) if spec.eval_dataset else []
        self.model = self.load_model()
        self.after_load()

    def check(self) -> None:
        """Refuse option combinations this algorithm cannot honour (before anything is loaded)."""

    def prepare(self, dataset: Any = None) -> list[Any]:
        """The tokenized rows of the job's dataset, or of `dataset` (the evaluation set)."""
        raise NotImplementedError

    def load_model(self) -> Any:
        return load_policy(self.spec, self.ctx.device, self.ctx.dtype, self.ctx.cache_dir)

    def after_load(self) -> None:
        """Load what the algorithm needs besides the policy (a reference model, ...)."""

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    # -------------------------------------------------------------------------------------- one step

    def collate(self, indices: list[int], split: str = "train") -> Any:
        """The micro-batch of rows `indices` of the training (or "eval") rows, on the device."""
        raise NotImplementedError

    def counts(self, batches: list[Any]) -> Any:
        """The global counts of one optimizer step's micro-batches (host ints, before any forward)."""
        raise NotImplementedError

    def micro_step(self, batch: Any, counts: Any, metrics: StepMetrics) -> torch.Tensor:
        """This micro-batch's share of the step's loss (normalised by `counts`); adds its metrics."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- around steps

    def stream(self) -> BatchStream:
        """The micro-batch order of training: length-bucketed over the training rows."""
        return BatchStream(
            [e.length for e in self.examples], self.cfg.per_device_train_batch_size, self.cfg.seed
        )

    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step."""

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state saved with every checkpoint."""
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore `state_dict()` on resume."""

    def save_extra(self, final: Path) -> None:
        """Write more into DIR/final after the model."""

    def ghost(self, batch: Any) -> Any:
        """The stand-in micro-batch of a rank whose share of a short last batch is empty (a copy of a row
        whose loss the loop zeroes). Algorithms that all-reduce statistics inside `micro_step` mark it so
        that it adds nothing to them."""
        return batch

    def reference_module(self) -> torch.nn.Module | None:
        """The separate reference module that `sync_ref_model` moves towards the policy (None: none)."""
        return None

    # ------------------------------------------------------------------------------------------- train

    def train(self) -> Path:
        """Set up, then run the offline loop; returns DIR/final."""
        self.setup()
        evaluate = offline_evaluator(
            self.ctx,
            self.model,
            len(self.eval_examples),
            self.cfg.per_device_eval_batch_size,
            partial(self.collate, split="eval"),
            self.counts,
            self.micro_step,
        )
        parts = OfflineParts(
            model=self.model,
            tokenizer=self.tokenizer,
            stream=self.stream(),
            collate=self.collate,
            counts=self.counts,
            micro_step=self.micro_step,
            on_step_end=self.on_step_end,
            state_dict=self.state_dict,
            load_state_dict=self.load_state_dict,
            save_extra=self.save_extra,
            evaluate=evaluate,
            ghost=self.ghost,
        )
        return run_offline_loop(self.ctx, parts, reference=self.reference_module())
