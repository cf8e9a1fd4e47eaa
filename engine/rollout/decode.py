"""The transformers backend's decode loop: prefill each prompt once, then sample G continuations of it.

    completion_ids, logps = decode(model, prompt_ids, prompt_mask, num_generations, params)

- The key/value cache is a transformers `StaticCache` allocated once for prompt + `max_new_tokens`: nothing
  is concatenated per token, and the attention mask over it is fixed for the whole loop.
- Each distinct prompt is prefilled once and its cache rows are copied G times (G completions share it).
- Position ids follow the prompt's real length (left padding does not shift them), as in the training
  forward, so a token's log-prob here equals the training forward's for the same weights.
- Rows that ended (EOS) stop costing: the loop ends when every row has ended, and when at most
  `COMPACT_AT` of the rows in the batch are still running, the finished ones are dropped from the batch.
- Tokens are drawn by `engine.rollout.sampling.sample_next` (exact draws from the processed distribution);
  `params.suppress_token_ids` (a VLM's image placeholders) are removed from it first.

Vision-language models: `prefill_inputs` (pixel inputs of the B prompts, e.g. `pixel_values`) go to the
prefill forward only; the image features then live in the cache like any prompt token.

Returns completion ids (N, max_new_tokens) padded with `pad_token_id` after each row's first EOS, and the
log-probs of the drawn tokens under the processed (sampling) distribution, 0 on padding.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from engine.rollout.base import SamplingParams
from engine.rollout.sampling import sample_next

COMPACT_AT = 0.75  # drop finished rows once this share of the batch or less is still running


def _base(model: Any) -> Any:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_kwarg(base: Any) -> str:
    """The forward's name for the cache argument (`cache` in current transformers, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def decode(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    num_generations: int,
    params: SamplingParams,
    prefill_inputs: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import StaticCache

    base = _base(model)
    name = _cache_kwarg(base)
    device = prompt_ids.device
    B, P = prompt_ids.shape
    G, C = num_generations, params.max_new_tokens
    N = B * G
    cache = StaticCache(config=base.config, max_cache_len=P + C)
    # Slots 0..P-1 hold the left-padded prompt, slot P+t the t-th new token; causality hides future slots.
    attn = torch.cat([prompt_mask.long(), torch.ones(B, C, dtype=torch.long, device=device)], dim=1)
    position = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=prompt_ids,
        attention_mask=attn,
        position_ids=position,
        use_cache=True,
        logits_to_keep=1,
        **{name: cache},
        **(prefill_inputs or {}),
    )
    expand = torch.arange(B, device=device).repeat_interleave(G)
    cache.reorder_cache(expand)
    logits = out.logits[:, -1].index_select(0, expand)
    attn = attn.index_select(0, expand)
    next_pos = prompt_mask.long().sum(-1).index_select(0, expand)  # (N,) position of the next token
    seen = None
    if params.repetition_penalty != 1.0:
        vocab = logits.shape[-1]
        seen = torch.zeros(B, vocab + 1, dtype=torch.bool, device=device)
        seen.scatter_(1, prompt_ids.masked_fill(prompt_mask == 0, vocab), True)
        seen = seen[:, :vocab].index_select(0, expand)
    eos = torch.as_tensor(list(params.eos_token_ids), device=device)

    tokens_out = torch.full((N, C), params.pad_token_id, dtype=torch.long, device=device)
    logps_out = torch.zeros((N, C), dtype=torch.float32, device=device)
    rows = torch.arange(N, device=device)  # batch row -> output row
    running = torch.ones(N, dtype=torch.bool, device=device)
    suppress = torch.as_tensor(list(params.suppress_token_ids), dtype=torch.long, device=device)
    for t in range(C):
        if suppress.numel():
            logits = logits.index_fill(-1, suppress, float("-inf"))
        tokens, logps = sample_next(logits, params, seen)
        live = rows[running]
        tokens_out[live, t] = tokens[running]
        logps_out[live, t] = logps[running]
        running = running & ~torch.isin(tokens, eos)
        alive = int(running.sum())
        if alive == 0 or t == C - 1:
            break
        if alive <= COMPACT_AT * running.numel():
            keep = running.nonzero().squeeze(-1)
            cache.reorder_cache(keep)
            rows, running, tokens = rows[keep], running[keep], tokens[keep]
            attn, next_pos = attn[keep], next_pos[keep]
            seen = None if seen is None else seen[keep]
        if seen is not None:
            seen.scatter_(1, tokens.unsqueeze(-1), True)
        out = model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=attn,
            position_ids=next_pos.unsqueeze(-1),
            use_cache=True,
            logits_to_keep=1,
            **{name: cache},
        )
        logits = out.logits[:, -1]
        next_pos = next_pos + 1
    return tokens_out, logps_out
