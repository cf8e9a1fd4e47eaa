"""Reward modelling: a Bradley-Terry sequence classifier on preference pairs.

    final_dir = train(spec, ctx)        # spec.algorithm == "reward"; the pieces: class `Reward`

The model is a sequence classifier with exactly one label: for `tiny:llama` a `LlamaForSequenceClassification`
built from the tiny config, its decoder weights copied from the tiny causal LM and its `score` head seeded;
otherwise `AutoModelForSequenceClassification` from the model's folder or hub id (a causal-LM checkpoint gets
a fresh head). Its config carries the tokenizer's pad token, and the reward r(x, y) is the logit of the last
token that is not padding (transformers' pooling). With `peft_config` the adapter is a sequence-classification
LoRA whose `score` head is fully trained.

Per micro-batch of B pairs (whole sequences, prompt prepended; over-long pairs dropped, see
`engine.data.reward_pairs`): one forward over 2B rows (chosen first), then `engine.losses.reward_loss`:
-log s(r+ - r- - margin) (margin from the dataset's optional `margin` column) plus
`center_rewards_coefficient` (r+ + r-)^2, both normalised by the pairs of the optimizer step. Metrics
`reward/accuracy`, `reward/margin`, `reward/mean_reward`, `reward/centering`, `reward/loss`,
`train/num_tokens`. Not logged: the min/max reward of a step (the step metrics are sums and means).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from engine.algorithms.common import StepMetrics, TrainContext
from engine.algorithms.offline import OfflineAlgorithm
from engine.algorithms.offline_data import reward_pairs
from engine.data.reward_pairs import RewardTokenBatch, collate_reward_pairs
from engine.losses import reward_loss
from engine.models import (
    TINY_SEED,
    add_lora,
    build_tiny_model,
    disable_dropout,
    resolve_model_path,
)


def build_tiny_classifier(model_ref: str = "tiny:llama") -> Any:
    """A one-label LlamaForSequenceClassification on the tiny causal LM's decoder (same weights); the score
    head is seeded, and the global RNG is left untouched."""
    from transformers import LlamaForSequenceClassification

    causal = build_tiny_model(model_ref)
    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    config.architectures = ["LlamaForSequenceClassification"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForSequenceClassification(config)
    model.model.load_state_dict(causal.model.state_dict())
    return model


def _lora(model: Any, lora: Any, gradient_checkpointing: bool) -> Any:
    if gradient_checkpointing:
        model.enable_input_require_grads()
    return add_lora(
        model, lora, "SEQ_CLS"
    )  # peft adds the `score` head to modules_to_save: it trains in full


def load_reward_model(
    spec: Any, tokenizer: Any, device: torch.device | str, dtype: torch.dtype, cache_dir: Path | None = None
) -> Any:
    """The trainable one-label classifier of a reward job (float32 weights; a LoRA base in `dtype`)."""
    cfg, lora = spec.config, spec.peft_config
    weight_dtype = dtype if lora is not None else torch.float32
    if spec.model.startswith("tiny:"):
        model = build_tiny_classifier(spec.model).to(weight_dtype)
    else:
        from transformers import AutoModelForSequenceClassification

        path = resolve_model_path(spec.model, cache_dir)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=weight_dtype)
    if model.config.num_labels != 1:
        raise ValueError(
            f"a reward model needs exactly one label; {spec.model} has {model.config.num_labels}"
        )
    model.config.pad_token_id = tokenizer.pad_token_id  # pooling picks the last non-pad token
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        model = _lora(model, lora, cfg.gradient_checkpointing)
    model.train()
    return model.to(device)


class Reward(OfflineAlgorithm):
    """A batch is a `RewardTokenBatch`; counts: the pairs of the step."""

    def prepare(self, dataset: Any = None) -> list[Any]:
        return reward_pairs(self.spec, self.ctx, self.tokenizer, dataset)

    def load_model(self) -> Any:
        return load_reward_model(
            self.spec, self.tokenizer, self.ctx.device, self.ctx.dtype, self.ctx.cache_dir
        )

    def collate(self, indices: list[int], split: str = "train") -> RewardTokenBatch:
        source = self.examples if split == "train" else self.eval_examples
        return collate_reward_pairs([source[i] for i in indices], self.pad_id).to(self.ctx.device)

    def counts(self, batches: list[RewardTokenBatch]) -> int:
        return sum(b.num_pairs for b in batches)

    def micro_step(self, batch: RewardTokenBatch, num_pairs: int, metrics: StepMetrics) -> torch.Tensor:
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        rewards = out.logits[:, 0].float()  # (2B,) chosen first
        n = batch.num_pairs
        loss = reward_loss(
            rewards[:n],
            rewards[n:],
            num_pairs,
            margin=batch.margin,
            center_rewards_coefficient=self.cfg.center_rewards_coefficient,
        )
        for name, value in loss.metrics.items():
            metrics.add_sum(name, value)
        metrics.add_sum("train/num_tokens", float(batch.num_tokens))
        return loss.loss


def train(spec: Any, ctx: TrainContext) -> Path:
    return Reward(spec, ctx).train()
