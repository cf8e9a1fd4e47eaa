"""Binary classifier optimisation (arXiv 2404.04656) on unpaired feedback.

    final_dir = train(spec, ctx)        # spec.algorithm == "bco"; the pieces: class `BCO`

Data as KTO (`kto.UnpairedAlgorithm`: unpaired rows, or preference pairs unpaired and shuffled). Per
micro-batch of B rows: one policy forward (sums of completion log-probs), reference log-probs under
inference mode (frozen copy of the initial policy, or the LoRA policy with its adapter disabled), and
`engine.losses.bco_loss`: rewards r = beta (log pi - log ref), the running reward mean delta updated with the
micro-batch's vector of rewards before the loss (training only; evaluation leaves it alone), desirable
-log s(r - delta), undesirable -log s(-(r - delta)), summed over the rows of the optimizer step. delta is
saved with every checkpoint and restored on resume. With several processes delta is updated with the
rewards of every rank's share of the micro-batch (one all-reduce of their sum and count), as one process
updates it with the whole micro-batch. Metrics `rewards/*`, `logps/*`, `bco/delta`,
`bco/loss`.

Not supported: underlying-distribution matching (UDM), which needs an embedding model for the prompts;
job specs cannot name one, so `prompt_sample_size`, `min_density_ratio` and `max_density_ratio` have no
effect (as in TRL without `embedding_func`); the dry run and the job's first events warn when one is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import distributed
from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.kto import UnpairedAlgorithm, global_sum_count
from engine.algorithms.reference import reference_logps, summed_logps
from engine.data.unpaired import UnpairedTokenBatch
from engine.losses import BCOLossConfig, BCOState, UnpairedBatch, UnpairedCounts, bco_loss
from engine.models import Reference, load_reference


@dataclass
class BCOItem:
    batch: UnpairedTokenBatch  # on the device
    ghost: bool = False  # a stand-in batch (see `OfflineAlgorithm.ghost`): adds nothing to delta


class BCO(UnpairedAlgorithm):
    """A batch is a `BCOItem`; counts: `UnpairedCounts` of the step; state: the running reward mean."""

    def after_load(self) -> None:
        # The reference is taken before any step (and before a resume loads trained weights into the policy).
        self.ref: Reference = load_reference(self.spec, self.model, self.ctx.device, self.ctx.dtype)
        self.loss_cfg = BCOLossConfig.from_spec(self.cfg)
        self.state = BCOState()

    def collate(self, indices: list[int], split: str = "train") -> BCOItem:
        return BCOItem(self.collate_rows(indices, split))

    def micro_step(self, item: BCOItem, counts: UnpairedCounts, metrics: StepMetrics) -> torch.Tensor:
        tokens, labels = item.batch.tokens, item.batch.labels
        batch = UnpairedBatch(summed_logps(self.model, tokens), reference_logps(self.ref, tokens), labels)
        # delta moves with training batches only (TRL: do_train); evaluation runs in eval mode
        update = self.model.training
        if update and distributed.current().active:  # fold in the rewards of every rank's rows
            rewards = self.loss_cfg.beta * (batch.logps - batch.ref_logps)
            total, n = global_sum_count(rewards, item.ghost)
            self.state.running.update((total / n).reshape(1), count=float(n))
            update = False
        out = bco_loss(batch, self.loss_cfg, counts, self.state, update_state=update)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        return out.loss

    def state_dict(self) -> dict[str, Any]:
        return {"bco": self.state.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if "bco" in saved:
            self.state.load_state_dict(saved["bco"])


def train(spec: Any, ctx: TrainContext) -> Path:
    return BCO(spec, ctx).train()
