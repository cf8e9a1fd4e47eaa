"""The `hf` rollout backend: transformers `generate` on the policy itself (CPU, single GPU, tests).

Sampling runs under `torch.inference_mode()` with the model switched to eval mode (dropout off) and back;
outputs are cloned out of inference mode so they can feed a training forward. Sampling log-probs come from
the processed scores (after temperature / top-k / top-p / min-p) and are only computed when asked for,
because they keep one (N, V) tensor per generated step. Nothing is synced: the sampler *is* the policy.
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


class HFRollout(RolloutBackend):
    name = "hf"

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    def _generation_kwargs(self, p: SamplingParams) -> dict:
        kwargs = {
            "do_sample": True,
            "max_new_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k or 0,  # 0 = no top-k filter (transformers' own default would be 50)
            "repetition_penalty": p.repetition_penalty,
            "eos_token_id": list(p.eos_token_ids),
            "pad_token_id": p.pad_token_id,
            "use_cache": True,
        }
        if p.min_p is not None:
            kwargs["min_p"] = p.min_p
        if p.return_logps:
            kwargs.update(return_dict_in_generate=True, output_scores=True)
        return kwargs

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_generations: int, params: SamplingParams
    ) -> RolloutOutput:
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1 (got {num_generations})")
        ids, mask = left_pad(prompt_ids, params.pad_token_id)
        ids = ids.repeat_interleave(num_generations, dim=0).to(self.device)
        mask = mask.repeat_interleave(num_generations, dim=0).to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, **self._generation_kwargs(params)
                )
                sequences = out.sequences if params.return_logps else out
                completion = sequences[:, ids.shape[1] :]
                logps = None
                if params.return_logps:
                    scores = torch.stack(out.scores, dim=1).float()  # (N, C, V) processed scores
                    logps = scores.log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
                comp_mask, truncated = completion_mask_and_truncation(completion, params.eos_token_ids)
                if logps is not None:
                    logps = logps.masked_fill(comp_mask == 0, 0.0)
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
