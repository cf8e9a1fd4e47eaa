"""Contrastive preference optimisation and its reference-free relatives (CPO, SimPO, AlphaPO).

    final_dir = train(spec, ctx)        # spec.algorithm == "cpo"; the pieces: class `CPO`

Per micro-batch of B prompt/chosen/rejected pairs (tokenized and truncated as for DPO, keep_end prompts):
one policy forward over 2B rows ([prompt+chosen]_1..B, [prompt+rejected]_1..B), summed completion log-probs,
completion lengths (the per-token scores of `ipo`, `simpo`, `alphapo`) and, when `cpo_alpha`
is not 0, the chosen rows' summed NLL. No reference model is ever loaded. `engine.losses.cpo_loss` turns
them into the pairwise loss (`sigmoid`, `hinge`, `ipo`, `simpo`, `alphapo`; AlphaPO reward shaping for any
type when `alpha` != 0) normalised by the pairs of the optimizer step, plus `cpo_alpha` times the NLL
normalised by the chosen completion tokens of the step; `alphapo` resolves `cpo_alpha` to 0
(`CPOConfig`). Metrics `rewards/*`, `logps/*`, `cpo/nll_loss`, `cpo/loss`.
`padding_free`: the chosen and rejected rows of a micro-batch run as one row without padding (per-row
position ids, no attention across rows), with the same per-row log-probs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.offline import OfflineAlgorithm
from engine.algorithms.offline_data import preference_pairs
from engine.algorithms.reference import summed_logps
from engine.data.collate import PreferenceTokenBatch, collate_preferences
from engine.losses import CPOLossConfig, PreferenceBatch, cpo_loss


class CPO(OfflineAlgorithm):
    """A batch is a `PreferenceTokenBatch`; counts: (pairs, chosen completion tokens) of the step."""

    def prepare(self, dataset: Any = None) -> list[Any]:
        return preference_pairs(self.spec, self.ctx, self.tokenizer, dataset)

    def after_load(self) -> None:
        self.loss_cfg = CPOLossConfig.from_spec(self.cfg)
        self.needs_nll = self.loss_cfg.cpo_alpha != 0.0

    def collate(self, indices: list[int], split: str = "train") -> PreferenceTokenBatch:
        source = self.examples if split == "train" else self.eval_examples
        rows = [source[i] for i in indices]
        return collate_preferences(rows, self.pad_id, pack=self.cfg.padding_free).to(self.ctx.device)

    def counts(self, batches: list[PreferenceTokenBatch]) -> tuple[int, int]:
        return sum(b.num_pairs for b in batches), sum(b.num_chosen_tokens for b in batches)

    def micro_step(
        self, batch: PreferenceTokenBatch, counts: tuple[int, int], metrics: StepMetrics
    ) -> torch.Tensor:
        n = batch.num_pairs
        seq = summed_logps(self.model, batch.tokens)  # (2B,) chosen first
        pb = PreferenceBatch(
            chosen_logps=seq[:n],
            rejected_logps=seq[n:],
            chosen_lengths=batch.chosen_lengths,
            rejected_lengths=batch.rejected_lengths,
            chosen_nll=-seq[:n] if self.needs_nll else None,
        )
        num_pairs, num_chosen_tokens = counts
        out = cpo_loss(pb, self.loss_cfg, num_pairs, num_chosen_tokens)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        return out.loss


def train(spec: Any, ctx: TrainContext) -> Path:
    return CPO(spec, ctx).train()
