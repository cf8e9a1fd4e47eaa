"""The `hf` rollout backend: the policy itself samples, through the decode loop of `engine.rollout.decode`.

Sampling runs under `torch.inference_mode()` with the model switched to eval mode (dropout off) and back;
outputs are cloned out of inference mode so they can feed a training forward. Sampling log-probs are those
of the processed distribution the tokens were drawn from (after repetition penalty, temperature, top-k,
top-p, min-p); without filters (top_k None/0, top_p 1, min_p None, no repetition penalty) they equal the
training forward's `token_logprobs(..., temperature=temperature)`. Nothing is synced: the sampler *is* the
policy. Vision-language models get each prompt's pixel inputs (`vision`, one dict or None per prompt).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.rollout.base import (
    RolloutBackend,
    RolloutOutput,
    SamplingParams,
    completion_mask_and_truncation,
    left_pad,
    trim_right,
)
from engine.rollout.decode import decode


class HFRollout(RolloutBackend):
    name = "hf"

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        num_generations: int,
        params: SamplingParams,
        vision: Sequence[dict[str, torch.Tensor] | None] | None = None,
    ) -> RolloutOutput:
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1 (got {num_generations})")
        ids, mask = left_pad(prompt_ids, params.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        prefill = None
        if vision is not None:
            from engine.multimodal.prompts import concat_vision

            batch = concat_vision(list(vision))
            prefill = None if batch is None else {k: v.to(self.device) for k, v in batch.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                completion, logps = decode(self.model, ids, mask, num_generations, params, prefill)
                comp_mask, truncated = completion_mask_and_truncation(completion, params.eos_token_ids)
                logps = logps.masked_fill(comp_mask == 0, 0.0) if params.return_logps else None
                ids = ids.repeat_interleave(num_generations, dim=0)
                mask = mask.repeat_interleave(num_generations, dim=0)
        finally:
            self.model.train(was_training)
        result = RolloutOutput(
            prompt_ids=ids.clone(),
            prompt_mask=mask.clone(),
            completion_ids=completion.clone(),
            completion_mask=comp_mask.clone(),
            is_truncated=truncated.clone(),
            sampling_logps=None if logps is None else logps.clone(),
        )
        return trim_right(result, params.pad_token_id)
