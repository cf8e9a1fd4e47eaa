"""Log-probs of completions that share prompts, with each distinct prompt run through the decoder once.

    shared = SharedPrompts.of(prompt_keys)          # None when no two rows share a prompt
    stats = shared_prompt_stats(model, input_ids, attention_mask, K, shared.to(device), mask=loss_mask)

A batch of rows [prompt (left-padded) | completion (right-padded)] where several rows carry the same prompt
(GRPO's groups) would run that prompt once per row. Here the distinct prompts run once with a KV cache;
the cache is expanded to the rows that share each prompt (an index along the batch, so the gradients of
every completion flow back into its prompt), and the completion tokens run on it with the position ids and
attention mask the padded batch would give them. The prompt's last hidden state scores the first
completion token; the last completion token scores nothing and does not run. The statistics come from
`engine.logprobs.stats_from_hidden` on the same (B, K) grid as `engine.logprobs.token_stats`, so the
results equal the padded forward's up to float rounding.

`unsupported(model)` says in one line why a model cannot take this path (then use the padded one).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.logprobs import _parts, stats_from_hidden
from engine.models import unwrap


@dataclass
class SharedPrompts:
    """Which rows of a batch share a prompt: `first` (u,) a row holding each distinct prompt, `owner` (B,)
    each row's distinct prompt (an index into `first`). Built on the host, so no device sync."""

    first: torch.Tensor
    owner: torch.Tensor

    @classmethod
    def of(cls, keys: Sequence[Hashable]) -> SharedPrompts | None:
        """From one key per row (equal keys: the same prompt tokens); None when no key repeats."""
        slot: dict[Hashable, int] = {}
        first: list[int] = []
        owner: list[int] = []
        for row, key in enumerate(keys):
            if key not in slot:
                slot[key] = len(first)
                first.append(row)
            owner.append(slot[key])
        if len(first) == len(owner):
            return None
        return cls(torch.tensor(first, dtype=torch.long), torch.tensor(owner, dtype=torch.long))

    @property
    def num_prompts(self) -> int:
        return int(self.first.shape[0])

    def to(self, device: torch.device | str) -> SharedPrompts:
        return SharedPrompts(
            self.first.to(device, non_blocking=True), self.owner.to(device, non_blocking=True)
        )


def decoder_tokens(rows: int, width: int, logits_to_keep: int, prompts: int | None) -> int:
    """Token positions one forward runs through the decoder: every row's full width on the padded path,
    or each distinct prompt once plus every row's completion but its last token."""
    if prompts is None:
        return rows * width
    return prompts * (width - logits_to_keep) + rows * (logits_to_keep - 1)


def unsupported(model: Any) -> str | None:
    """Why `model` cannot run prompts once through a KV cache (None when it can)."""
    _, _, config = _parts(model)
    base = unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    checkpointing = getattr(type(base), "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(type(base), "is_gradient_checkpointing", None)
    if isinstance(checkpointing, property) and checkpointing.fget is not None and checkpointing.fget(base):
        return "activation checkpointing runs the decoder without a KV cache"
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        return f"{type(base).__name__} has attention layers other than full attention ({sorted(set(layer_types))})"
    if not getattr(base, "_supports_cache_class", True) or getattr(text, "is_encoder_decoder", False):
        return f"{type(base).__name__} has no KV cache to share"
    return None


def shared_prompt_hidden(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    shared: SharedPrompts,
    index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What `engine.logprobs.target_hidden` returns for the last K tokens (the completions) of
    `input_ids` (B, P + K), with each distinct prompt of `shared` run once: (hidden (n, H), targets (n,))."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    B, T = input_ids.shape
    K = int(logits_to_keep)
    P = T - K
    if not (K >= 1 and P >= 1):
        raise ValueError(f"logits_to_keep must be in [1, T-1] = [1, {T - 1}] (got {K})")
    decoder, _, _ = _parts(model)
    p_ids = input_ids.index_select(0, shared.first)[:, :P]
    p_mask = attention_mask.index_select(0, shared.first)[:, :P]
    out = decoder(
        input_ids=p_ids,
        attention_mask=p_mask,
        position_ids=(p_mask.long().cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
    )
    # prompts are left-padded, so every prompt's last position holds a token: it scores the first target
    first = out.last_hidden_state[:, -1].index_select(0, shared.owner).unsqueeze(1)  # (B, 1, H)
    parts = [first]
    if K > 1:
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        if not isinstance(cache, DynamicCache) or any(type(x) is not DynamicLayer for x in cache.layers):
            raise ValueError(f"{type(cache).__name__} is not a cache of full-attention layers")
        cache.batch_select_indices(shared.owner)  # (u, ...) -> (B, ...), differentiable
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, P : T - 1]
        out = decoder(
            input_ids=input_ids[:, P : T - 1],
            attention_mask=attention_mask[:, : T - 1],
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        parts.append(out.last_hidden_state)
    hidden = torch.cat(parts, dim=1).reshape(B * K, -1)
    targets = input_ids[:, P:].reshape(B * K)
    if index is not None:
        hidden, targets = hidden.index_select(0, index), targets.index_select(0, index)
    return hidden, targets


def shared_prompt_stats(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    shared: SharedPrompts,
    temperature: float = 1.0,
    with_entropy: bool = False,
    mask: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`engine.logprobs.token_stats` (`logps`, `entropies` when asked for) computed with each distinct
    prompt run once; same (B, K) grid, zeros where `mask` is 0."""
    if index is None and mask is not None:
        index = mask.reshape(-1).nonzero().squeeze(-1)
    hidden, targets = shared_prompt_hidden(model, input_ids, attention_mask, logits_to_keep, shared, index)
    return stats_from_hidden(
        model,
        hidden,
        targets,
        (input_ids.shape[0], int(logits_to_keep)),
        index,
        temperature=temperature,
        with_entropy=with_entropy,
    )
