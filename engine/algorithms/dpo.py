"""Direct preference optimisation and its loss family, on prompt/chosen/rejected pairs.

    final_dir = train(spec, ctx)        # spec.algorithm == "dpo"; the pieces: class `DPO`

Per micro-batch of B pairs: one policy forward over 2B rows ([prompt+chosen]_1..B, [prompt+rejected]_1..B),
per-token log-probs of the completion tokens (`engine.logprobs.token_stats`), summed per sequence (with
`ld_alpha`, LD-DPO's down-weighting of the tokens past the shorter response). Reference log-probs come from
a frozen copy of the initial policy, or for LoRA from the policy with its adapter disabled, under
`torch.inference_mode()`; with `reference_free` no reference is loaded at all, and with
`precompute_ref_log_probs` they are computed once before training and a separate reference copy is freed.
`sync_ref_model` (TR-DPO) mixes the policy into the reference (in `engine.algorithms.step`). Every
`loss_type` (list + `loss_weights`), `f_divergence_type`, `use_weighting` (WPO) and `rpo_alpha` is handled
by `engine.losses.dpo_loss`; this loop only assembles its inputs and logs its metrics (`rewards/*`,
`logps/*`, `dpo/*`). `padding_free`: each micro-batch's chosen and rejected rows run as one row without padding
(per-row position ids, no attention across rows); the results are the same per-token log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.offline import OfflineAlgorithm
from engine.algorithms.offline_data import preference_pairs
from engine.algorithms.reference import completion_stats, lookup, precompute, reference_logps
from engine.data.collate import PreferenceTokenBatch, collate_preferences
from engine.losses import DPOLossConfig, DPOState, PreferenceBatch, dpo_loss, ld_sequence_logps, wpo_weights
from engine.models import Reference, load_reference


@dataclass
class DPOItem:
    batch: PreferenceTokenBatch  # on the device
    ref_logps: torch.Tensor | None  # (2B,) precomputed reference sequence log-probs, chosen first, or None


def pair_sequence_logps(
    token_logps: torch.Tensor, batch: PreferenceTokenBatch, ld_alpha: float | None
) -> torch.Tensor:
    """(2B,) sums of completion log-probs of a pair batch (chosen rows first); with `ld_alpha` the LD-DPO
    weighting of each response against the length of the other one."""
    mask = batch.tokens.loss_mask
    if ld_alpha is None:
        return (token_logps * mask).sum(-1)
    other = torch.cat([batch.rejected_lengths, batch.chosen_lengths])
    return ld_sequence_logps(token_logps, mask, other, ld_alpha)


class DPO(OfflineAlgorithm):
    """A batch is a `DPOItem`; counts: (pairs, chosen completion tokens) of the step."""

    def check(self) -> None:
        cfg = self.cfg
        # refused at submission (engine.spec.unsupported): TR-DPO moves a separate, live reference model
        assert not cfg.sync_ref_model or not (
            cfg.reference_free or cfg.precompute_ref_log_probs or self.spec.peft_config
        )

    def prepare(self, dataset: Any = None) -> list[Any]:
        return preference_pairs(self.spec, self.ctx, self.tokenizer, dataset)

    def after_load(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.loss_cfg = DPOLossConfig.from_spec(cfg)
        self.state = DPOState()
        self.needs_nll = cfg.rpo_alpha is not None or "sft" in cfg.loss_type
        # The reference is taken before any step (and before a resume loads trained weights into the policy).
        self.ref: Reference | None = (
            None if cfg.reference_free else load_reference(self.spec, self.model, ctx.device, ctx.dtype)
        )
        self.tables: dict[str, torch.Tensor] = {}
        if self.ref is not None and cfg.precompute_ref_log_probs:
            for split, source in (("train", self.examples), ("eval", self.eval_examples)):
                if source:
                    self.tables[split] = self._precompute(source)
            ctx.events.log(f"precomputed reference log-probs for {len(self.examples)} pairs")
            self.ref = None  # frees a separate copy (a LoRA reference is the policy itself: nothing to free)

    def _precompute(self, source: list[Any]) -> torch.Tensor:
        """(N, 2) reference sequence log-probs (chosen, rejected) of every pair."""
        ref = self.ref
        assert ref is not None

        def score(batch: PreferenceTokenBatch) -> torch.Tensor:
            return self._reference(ref, batch).reshape(2, -1).T

        batch_size = self.cfg.precompute_ref_batch_size or self.cfg.per_device_train_batch_size
        return precompute(
            source, lambda ex: collate_preferences(ex, self.pad_id), batch_size, score, self.ctx
        )

    def _reference(self, ref: Reference, batch: PreferenceTokenBatch) -> torch.Tensor:
        return reference_logps(
            ref, batch.tokens, lambda logps: pair_sequence_logps(logps, batch, self.cfg.ld_alpha)
        )

    def reference_module(self) -> torch.nn.Module | None:
        return self.ref.model if self.ref is not None else None

    def collate(self, indices: list[int], split: str = "train") -> DPOItem:
        source = self.examples if split == "train" else self.eval_examples
        batch = collate_preferences([source[i] for i in indices], self.pad_id, pack=self.cfg.padding_free)
        pre = lookup(self.tables.get(split), indices, self.ctx.device)
        return DPOItem(batch.to(self.ctx.device), None if pre is None else pre.T.reshape(-1))

    def counts(self, items: list[DPOItem]) -> tuple[int, int]:
        return sum(i.batch.num_pairs for i in items), sum(i.batch.num_chosen_tokens for i in items)

    def micro_step(self, item: DPOItem, counts: tuple[int, int], metrics: StepMetrics) -> torch.Tensor:
        cfg, batch = self.cfg, item.batch
        n = batch.num_pairs
        stats = completion_stats(self.model, batch.tokens, with_log_sum_p2=cfg.use_weighting)
        logps, mask = stats["logps"], batch.tokens.loss_mask
        seq = pair_sequence_logps(logps, batch, cfg.ld_alpha)
        ref_seq = item.ref_logps
        if ref_seq is None and self.ref is not None:
            with self.ctx.timer("reference"):
                ref_seq = self._reference(self.ref, batch)
        weights = wpo_weights(logps.detach(), stats["log_sum_p2"], mask) if cfg.use_weighting else None
        pb = PreferenceBatch(
            chosen_logps=seq[:n],
            rejected_logps=seq[n:],
            ref_chosen_logps=None if ref_seq is None else ref_seq[:n],
            ref_rejected_logps=None if ref_seq is None else ref_seq[n:],
            chosen_lengths=batch.chosen_lengths,
            rejected_lengths=batch.rejected_lengths,
            chosen_nll=-(logps[:n] * mask[:n]).sum(-1) if self.needs_nll else None,
            chosen_weights=None if weights is None else weights[:n],
            rejected_weights=None if weights is None else weights[n:],
        )
        num_pairs, num_chosen_tokens = counts
        out = dpo_loss(pb, self.loss_cfg, num_pairs, num_chosen_tokens, self.state)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        metrics.add_sum("train/num_tokens", float(batch.tokens.num_tokens))  # chosen + rejected targets
        return out.loss

    def state_dict(self) -> dict[str, Any]:
        return {"dpo": self.state.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if "dpo" in saved:
            self.state.load_state_dict(saved["dpo"])


def train(spec: Any, ctx: TrainContext) -> Path:
    return DPO(spec, ctx).train()
