"""Kahneman-Tversky optimisation (arXiv 2402.01306) on unpaired feedback.

    final_dir = train(spec, ctx)        # spec.algorithm == "kto"; the pieces: class `KTO`

Data: unpaired (prompt, completion, label) rows, or preference pairs, which are unpaired and shuffled
(`engine.data.unpaired`). Per micro-batch of B rows: one policy forward over the rows (sums of completion
log-probs), their reference log-probs (a frozen copy of the initial policy, or the LoRA policy with its
adapter disabled, under inference mode; or precomputed once with `precompute_ref_log_probs`), and for
`loss_type: kto` the reference point z0 from B mismatched rows (x_i, y'_i), the policy side under no_grad:
z0 = max(0, mean(log pi - log ref)) over the micro-batch, a constant. `kto` / `apo_zero_unpaired` come from
`engine.losses.kto_loss`, normalised by the rows of the whole optimizer step; metrics `rewards/*`,
`logps/*`, `kto/kl`, `kto/loss`. With several processes z0 is the mean over the KL rows of every rank's
share of the micro-batch (one all-reduce), so it is the z0 one process computes on the same global batch.

`padding_free`: the rows (and KL rows) of a micro-batch run as one row without padding (per-row position
ids, no attention across rows), with the same per-row log-probs. What KTO and BCO share (unpaired rows,
their counts, `padding_free`) is `UnpairedAlgorithm`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine import distributed
from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.offline import OfflineAlgorithm
from engine.algorithms.offline_data import unpaired_examples
from engine.algorithms.reference import lookup, precompute, reference_logps, summed_logps
from engine.data.unpaired import UnpairedExample, UnpairedTokenBatch, collate_unpaired
from engine.losses import KTOLossConfig, UnpairedBatch, UnpairedCounts, kto_loss, kto_reference_point
from engine.models import Reference, load_reference


class UnpairedAlgorithm(OfflineAlgorithm):
    """Unpaired rows (`offline_data.unpaired_examples`); a batch has `.batch`, an `UnpairedTokenBatch`."""

    with_kl = False  # whether rows carry KTO's mismatched completions

    def prepare(self, dataset: Any = None) -> list[Any]:
        return unpaired_examples(self.spec, self.ctx, self.tokenizer, dataset, with_kl=self.with_kl)

    def collate_rows(self, indices: list[int], split: str) -> UnpairedTokenBatch:
        source = self.examples if split == "train" else self.eval_examples
        rows = [source[i] for i in indices]
        return collate_unpaired(rows, self.pad_id, self.with_kl, pack=self.cfg.padding_free).to(
            self.ctx.device
        )

    def ghost(self, batch: Any) -> Any:
        return replace(batch, ghost=True)

    def counts(self, batches: list[Any]) -> UnpairedCounts:
        """Rows, desirable and undesirable rows of an optimizer step (host ints)."""
        return UnpairedCounts(
            num_rows=sum(i.batch.num_rows for i in batches),
            num_desirable=sum(i.batch.num_desirable for i in batches),
            num_undesirable=sum(i.batch.num_undesirable for i in batches),
        )


@dataclass
class KTOItem:
    batch: UnpairedTokenBatch  # on the device
    ref_logps: torch.Tensor | None  # (B,) precomputed reference log-probs of the rows, or None
    ref_kl_logps: torch.Tensor | None  # (B,) same for the KL rows
    ghost: bool = False  # a stand-in batch (see `OfflineAlgorithm.ghost`): adds nothing to z0


def global_sum_count(values: torch.Tensor, ghost: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of `values` over every rank's share of a micro-batch, in float64 (a ghost batch adds
    nothing); with one process, those of `values`."""
    count = torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)
    part = torch.stack([values.detach().double().sum(), count])
    if ghost:
        part = torch.zeros_like(part)
    distributed.all_reduce_sum_(part)
    return part[0], part[1]


def kl_reference(kl_logps: torch.Tensor, kl_ref_logps: torch.Tensor, ghost: bool = False) -> torch.Tensor:
    """KTO's z0 for a micro-batch: max(0, mean of log pi - log ref over its KL rows), the mean taken over
    every rank's rows when there are several processes."""
    if not distributed.current().active:
        return kto_reference_point(kl_logps, kl_ref_logps)
    total, n = global_sum_count(kl_logps - kl_ref_logps, ghost)
    return (total / n).to(kl_logps.dtype).clamp(min=0)


def check_weights(cfg: Any, examples: list[UnpairedExample], ctx: TrainContext) -> None:
    """Warn when lambda_D n_D / (lambda_U n_U) is outside [1, 4/3] (KTO paper, Eq. 8; TRL's guidance)."""
    n_d = sum(e.label for e in examples)
    n_u = len(examples) - n_d
    if n_d == 0 or n_u == 0 or cfg.undesirable_weight == 0:
        return
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    if not 1 - 1e-9 <= ratio <= 4 / 3 + 1e-9:
        ctx.events.log(
            f"desirable_weight * {n_d} desirable / (undesirable_weight * {n_u} undesirable) = {ratio:.3f}; "
            "the KTO paper recommends a value in [1, 4/3]: adjust desirable_weight or undesirable_weight",
            "warning",
        )


class KTO(UnpairedAlgorithm):
    """A batch is a `KTOItem`; counts: `UnpairedCounts` of the step."""

    def __init__(self, spec: Any, ctx: TrainContext) -> None:
        super().__init__(spec, ctx)
        self.with_kl = self.cfg.loss_type == "kto"

    def prepare(self, dataset: Any = None) -> list[Any]:
        examples = super().prepare(dataset)
        if dataset is None:
            check_weights(self.cfg, examples, self.ctx)
        return examples

    def after_load(self) -> None:
        ctx = self.ctx
        self.loss_cfg = KTOLossConfig.from_spec(self.cfg)
        # The reference is taken before any step (and before a resume loads trained weights into the policy).
        self.ref: Reference | None = load_reference(self.spec, self.model, ctx.device, ctx.dtype)
        self.tables: dict[str, torch.Tensor] = {}
        if self.cfg.precompute_ref_log_probs:
            for split, source in (("train", self.examples), ("eval", self.eval_examples)):
                if source:
                    self.tables[split] = self._precompute(source)
            ctx.events.log(f"precomputed reference log-probs for {len(self.examples)} rows")
            self.ref = None  # frees a separate copy (a LoRA reference is the policy itself: nothing to free)

    def _precompute(self, source: list[UnpairedExample]) -> torch.Tensor:
        """(N, 2) reference log-probs of every row and of its KL row (0 without KL rows)."""
        ref = self.ref
        assert ref is not None

        def score(batch: UnpairedTokenBatch) -> torch.Tensor:
            rows = reference_logps(ref, batch.tokens)
            kl = (
                reference_logps(ref, batch.kl_tokens)
                if batch.kl_tokens is not None
                else torch.zeros_like(rows)
            )
            return torch.stack([rows, kl], dim=1)

        collate = lambda ex: collate_unpaired(ex, self.pad_id, self.with_kl)  # noqa: E731
        return precompute(source, collate, self.cfg.per_device_train_batch_size, score, self.ctx)

    def collate(self, indices: list[int], split: str = "train") -> KTOItem:
        batch = self.collate_rows(indices, split)
        pre = lookup(self.tables.get(split), indices, self.ctx.device)
        if pre is None:
            return KTOItem(batch, None, None)
        return KTOItem(batch, pre[:, 0], pre[:, 1] if self.with_kl else None)

    def micro_step(self, item: KTOItem, counts: UnpairedCounts, metrics: StepMetrics) -> torch.Tensor:
        batch = item.batch
        logps = summed_logps(self.model, batch.tokens)
        ref_logps = item.ref_logps if item.ref_logps is not None else reference_logps(self.ref, batch.tokens)
        z0 = None
        if batch.kl_tokens is not None:
            with torch.no_grad():  # z0 is a constant: the policy's KL forward gets no gradient
                kl_logps = summed_logps(self.model, batch.kl_tokens)
            kl_ref = item.ref_kl_logps
            if kl_ref is None:
                kl_ref = reference_logps(self.ref, batch.kl_tokens)
            z0 = kl_reference(kl_logps, kl_ref, item.ghost)
        out = kto_loss(UnpairedBatch(logps, ref_logps, batch.labels), self.loss_cfg, counts, kl_reference=z0)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        return out.loss


def train(spec: Any, ctx: TrainContext) -> Path:
    return KTO(spec, ctx).train()
