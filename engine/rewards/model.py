"""`reward_model`: score each (prompt, completion) with a sequence-classification model (one label).

The model is loaded once per job from `spec.model` (a local path or an HF id) with transformers'
`AutoModelForSequenceClassification`; the reward is `logits[:, 0]`. Chat prompts are rendered with the reward
model's own chat template (prompt messages + one assistant message), plain prompts are concatenated with the
completion. Inputs are right-padded, tokenized without extra special tokens, scored in chunks under
`torch.inference_mode()`. The metric name is the last path component of the model reference (as TRL does).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from engine.rewards.parsing import completion_text
from engine.rewards.registry import RewardContext, Rewards, register

CHUNK = 8


class SequenceClassifierReward:
    def __init__(self, model_ref: str, device: Any = "cpu", chunk_size: int = CHUNK) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = PurePath(model_ref.rstrip("/")).name or "reward_model"
        self.device, self.chunk_size = torch.device(device), chunk_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_ref)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(model_ref).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward model {model_ref!r} has {self.model.config.num_labels} labels; a reward model needs exactly 1"
            )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def _text(self, prompt: Any, completion: Any) -> str:
        answer = completion_text(completion)
        if isinstance(prompt, str):
            return prompt + answer
        messages = [*prompt, {"role": "assistant", "content": answer}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def __call__(self, prompts, completions, completion_ids, **columns) -> Rewards:
        import torch

        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        out: Rewards = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.chunk_size):
                enc = self.tokenizer(
                    texts[start : start + self.chunk_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(self.device)
                logits = self.model(**enc).logits
                out.extend(float(v) for v in logits[:, 0].float().cpu())
        return out


@register("reward_model")
def reward_model(spec: Any, ctx: RewardContext) -> SequenceClassifierReward:
    return SequenceClassifierReward(spec.model, device=ctx.device)
