"""Supervised fine-tuning: completion-only token loss over prompt/completion, messages or text rows.

    final_dir = train(spec, ctx)        # spec.algorithm == "sft"; the pieces: class `SFT`

What counts as a target token (`engine.data.tokenize.sft_example`): the completion of prompt/completion
rows, every assistant turn of messages rows (its end-of-turn tokens included), every token of text rows;
`completion_only_loss: false` trains on all tokens (of messages rows too, unless `assistant_only_loss`). The loss (`nll`, `chunked_nll`, `dft`) comes from
`engine.losses.sft_loss`, normalised by the target tokens of the whole optimizer step. With `config.bema`
a bias-corrected EMA of the weights (`engine.losses.bema.BEMA`) is kept on the CPU and saved to
`DIR/final/bema`.

`padding_free`: each micro-batch runs as one row without padding (per-row position ids, no attention across
rows). `packing`: examples are first grouped into packs of at most `max_length` tokens (best-fit decreasing;
`packing_strategy` "bfd", "bfd_split" and "bfd-requeue" pack alike, because examples are already truncated
to `max_length`), a pack counts as one row of `per_device_train_batch_size`, and batches run padding-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.algorithms.common import BatchStream, StepMetrics, TrainContext
from engine.algorithms.offline import OfflineAlgorithm
from engine.algorithms.offline_data import sft_examples
from engine.algorithms.reference import completion_stats
from engine.data.collate import TokenBatch, collate_sft, pack_bins
from engine.losses import sft_loss
from engine.models import save_model


def _bema(cfg: Any, model: torch.nn.Module) -> Any:
    from engine.losses.bema import BEMA

    b = cfg.bema
    return BEMA(
        {n: p for n, p in model.named_parameters() if p.requires_grad},
        update_freq=b.update_freq,
        ema_power=b.ema_power,
        bias_power=b.bias_power,
        lag=b.lag,
        update_after=b.update_after,
        multiplier=b.multiplier,
        min_ema_multiplier=b.min_ema_multiplier,
        device="cpu",
    )


class SFT(OfflineAlgorithm):
    """A batch is a `TokenBatch` of examples (or packs of examples); counts: the step's target tokens."""

    def prepare(self, dataset: Any = None) -> list[Any]:
        return sft_examples(self.spec, self.ctx, self.tokenizer, dataset)

    def after_load(self) -> None:
        cfg = self.cfg
        lengths = [len(e.input_ids) for e in self.examples]
        # what one row of a training batch holds: an example, or a pack of examples
        self.units = [[i] for i in range(len(self.examples))]
        if cfg.packing:
            self.units = pack_bins(lengths, cfg.max_length or max(lengths))
            self.ctx.events.log(
                f"packing: {len(self.examples)} examples in {len(self.units)} packs of <= {cfg.max_length} tokens"
            )
        self.unit_lengths = [sum(lengths[i] for i in u) for u in self.units]
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.bema = _bema(cfg, self.model) if cfg.bema is not None else None

    def stream(self) -> BatchStream:
        return BatchStream(self.unit_lengths, self.cfg.per_device_train_batch_size, self.cfg.seed)

    def collate(self, indices: list[int], split: str = "train") -> TokenBatch:
        cfg = self.cfg
        if split == "train":
            chosen = [self.examples[i] for u in indices for i in self.units[u]]
        else:
            chosen = [self.eval_examples[i] for i in indices]
        pack = cfg.packing or cfg.padding_free
        return collate_sft(chosen, self.pad_id, cfg.pad_to_multiple_of, pack).to(self.ctx.device)

    def counts(self, batches: list[TokenBatch]) -> int:
        return sum(b.num_tokens for b in batches)

    def micro_step(self, batch: TokenBatch, num_tokens: int, metrics: StepMetrics) -> torch.Tensor:
        logps = completion_stats(self.model, batch)["logps"]
        out = sft_loss(logps, batch.loss_mask, self.cfg.loss_type, num_tokens)
        for name, value in out.metrics.items():
            metrics.add_sum(name, value)
        metrics.add_sum("train/num_tokens", float(batch.num_tokens))
        return out.loss

    def on_step_end(self, step: int) -> None:
        if self.bema is not None:
            self.bema.step(step, self.trainable)

    def state_dict(self) -> dict[str, Any]:
        return {"bema": self.bema.state_dict()} if self.bema is not None else {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if self.bema is not None:
            self.bema.load_state_dict(saved["bema"])

    def save_extra(self, final: Path) -> None:
        if self.bema is None:
            return
        with torch.no_grad():
            for name, value in self.bema.weights.items():
                self.trainable[name].copy_(value)
        save_model(self.model, self.tokenizer, final / "bema")


def train(spec: Any, ctx: TrainContext) -> Path:
    return SFT(spec, ctx).train()
