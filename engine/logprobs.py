"""Per-token log-probabilities (and entropies) of the last K tokens, without full-batch float32 logits.

    logps, ents = token_logprobs(model, input_ids, attention_mask, logits_to_keep=K, with_entropy=True)

The decoder runs once to hidden states; the LM head, the float32 log-softmax and the gather then run over
chunks of `chunk_size` (row, position) pairs, so at most `chunk_size x vocab` float32 logits exist at any
time. With gradients enabled and more than one chunk, each chunk is activation-checkpointed: its logits
are recomputed in the backward pass instead of being kept for it. Passing `mask` skips the head entirely on positions that do
not count (padding, prompt), and their outputs are 0.

Position t of the K outputs scores `input_ids[:, T-K+t]` from the hidden state one position earlier (the
causal shift), so K <= T-1. Position ids come from the attention mask (cumsum - 1), which makes left- and
right-padded rows score exactly like unpadded ones. This module knows nothing about losses.

Vision-language models: `vision` (pixel inputs such as `pixel_values`, for the images of the batch's rows in
row order) makes the multimodal backbone (vision tower, projector, language model) produce the hidden
states, so image tokens carry image features; the LM head and everything after it are unchanged.

The pieces are public for loops that need more than log-probs from one decoder pass (distillation):
`target_hidden` (the hidden states that score the selected targets), `output_logits` (the LM head on a
chunk of them, float32) and `stats_from_hidden` (what `token_stats` computes, from those hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Float32 logits held at once, in elements: 2**26 elements = 256 MiB (about 1365 tokens of a 49k vocab).
LOGIT_BUDGET = 2**26


def _parts(model: Any) -> tuple[Any, Any, Any]:
    """(decoder that returns hidden states, LM head module, config) of a causal LM, peft-wrapped or not."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.config


def _multimodal_backbone(model: Any) -> Any:
    """The part of a vision-language model that turns (ids, pixel inputs) into final hidden states (vision
    tower, projector, language model; transformers names it `.model`)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "model", None)
    if backbone is None or not hasattr(base, "get_image_features"):
        raise ValueError(f"{type(base).__name__} is not a vision-language model; pixel inputs need one")
    return backbone


def _head_logits(head: Any, config: Any, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = head(hidden).float()
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, int | float) and scale != 1:
        logits = logits * scale
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def _chunk(
    head: Any,
    config: Any,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    with_log_sum_p2: bool,
) -> torch.Tensor:
    """(n, 1 + extras) float32: log p(target), then entropy and/or log sum_v p_v^2 when asked for."""
    logits = _head_logits(head, config, hidden, temperature)  # (n, V) float32
    logz = torch.logsumexp(logits, dim=-1)
    cols = [logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz]
    if with_entropy:
        probs = torch.softmax(logits, dim=-1)
        cols.append(logz - (probs * logits).sum(-1))
    if with_log_sum_p2:
        cols.append((torch.logsumexp(2 * logits, dim=-1) - 2 * logz).detach())
    return torch.stack(cols, dim=-1)


@dataclass
class Packed:
    """A batch's rows laid end to end in one row, with no padding (padding-free / packed batches).

    `input_ids` and `position_ids` are (1, S); position ids restart at 0 at each row, which is how the
    attention learns the row boundaries (block-diagonal causal attention on CPU, variable-length kernels
    where the model uses flash attention), so no token attends across rows. `source` (n,) holds, for each
    target of the batch's (B, K) grid in `target_index` order, the packed position of the hidden state that
    scores it (one before the target), and `targets` (n,) the target tokens."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    source: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> Packed:
        return Packed(
            *(
                t.to(device, non_blocking=True)
                for t in (self.input_ids, self.position_ids, self.source, self.targets)
            )
        )


def hidden_states(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    vision: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Final-layer hidden states (B, T, H) after the final norm. Position ids derive from the mask unless
    given; with `position_ids` and no mask, rows may hold several sequences (see `Packed`). `vision`: pixel
    inputs of a vision-language model (see the module doc)."""
    if vision:
        decoder = _multimodal_backbone(model)
    else:
        decoder, _, _ = _parts(model)
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        **(vision or {}),
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def target_hidden(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    index: torch.Tensor | None = None,
    vision: dict[str, torch.Tensor] | None = None,
    packed: Packed | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (n, H), targets (n,)): the hidden states that score the last K tokens and those tokens,
    rows flattened, restricted to the flattened positions `index` of the (B, K) grid when given.
    `vision`: pixel inputs of a vision-language model. `packed`: the same batch without padding (`Packed`,
    needs `index`, no images); the decoder runs on it instead, and the result is the same (n, H)
    selection in `index` order.

    For losses that need full-vocabulary logits (distillation): pass chunks of the hidden states to
    `output_logits` instead of materialising (B, K, V) logits."""
    if packed is not None:
        if vision:
            raise ValueError("packed batches carry no images; run image batches padded")
        if index is None:
            raise ValueError("a packed batch needs the target index of its (B, K) grid")
        hidden = hidden_states(model, packed.input_ids, None, packed.position_ids)[0]
        return hidden.index_select(0, packed.source), packed.targets
    B, T = input_ids.shape
    K = int(logits_to_keep)
    if not 1 <= K <= T - 1:
        raise ValueError(
            f"logits_to_keep must be in [1, T-1] = [1, {T - 1}] for sequences of length {T} (got {K})"
        )
    hidden = hidden_states(model, input_ids, attention_mask, vision=vision)[:, T - K - 1 : T - 1]
    flat_h = hidden.reshape(B * K, -1)
    flat_t = input_ids[:, T - K :].reshape(B * K)
    if index is not None:
        flat_h, flat_t = flat_h.index_select(0, index), flat_t.index_select(0, index)
    return flat_h, flat_t


def output_logits(model: Any, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Float32 logits (n, V) of the model's LM head on hidden states (n, H), with the model's logit
    scaling and soft-capping, divided by `temperature`."""
    _, head, config = _parts(model)
    return _head_logits(head, config, hidden, temperature)


def vocab_width(model: Any) -> int:
    """The number of logits the LM head produces (may exceed the tokenizer's size when padded)."""
    _, head, _ = _parts(model)
    return int(getattr(head, "out_features", None) or head.weight.shape[0])


def default_chunk_size(vocab_size: int) -> int:
    return max(1, LOGIT_BUDGET // max(1, vocab_size))


def token_stats(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_log_sum_p2: bool = False,
    chunk_size: int | None = None,
    mask: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    packed: Packed | None = None,
    vision: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token statistics (B, K) of the last K tokens: `logps`, and `entropies` / `log_sum_p2`
    (log sum_v p_v^2, detached; WPO weights) when asked for. See `token_logprobs`.

    `index` (optional, long): the flattened positions `mask.reshape(-1).nonzero()`, built on the host by
    the collator; passing it avoids the device sync that `nonzero()` costs on a GPU. `packed`: the same
    batch without padding (`Packed`, needs `index`); the decoder then runs on it and the results land on
    the same (B, K) grid. `vision`: pixel inputs of a vision-language model (not with `packed`)."""
    if index is None and mask is not None:
        index = mask.reshape(-1).nonzero().squeeze(-1)
    hidden, targets = target_hidden(
        model, input_ids, attention_mask, logits_to_keep, index, vision=vision, packed=packed
    )
    return stats_from_hidden(
        model,
        hidden,
        targets,
        (input_ids.shape[0], int(logits_to_keep)),
        index,
        temperature=temperature,
        with_entropy=with_entropy,
        with_log_sum_p2=with_log_sum_p2,
        chunk_size=chunk_size,
    )


def stats_from_hidden(
    model: Any,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    shape: tuple[int, int],
    index: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_log_sum_p2: bool = False,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """`token_stats` from the output of `target_hidden` (hidden (n, H), targets (n,)): the LM head runs
    over chunks and the results are scattered back to the (B, K) grid `shape` (at the flattened positions
    `index`, zeros elsewhere). Lets a loop that also needs other quantities from the same hidden states run
    the decoder once.

    With gradients on and more than one chunk, each chunk is activation-checkpointed (its logits are
    recomputed in the backward pass). A single chunk is not: its logits are kept for the backward, which
    needs that much memory at that moment anyway, so recomputing them would only cost a second LM head."""
    B, K = shape
    _, head, config = _parts(model)
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    size = chunk_size or default_chunk_size(vocab)
    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > size
    width = 1 + int(with_entropy) + int(with_log_sum_p2)
    parts = []
    for start in range(0, hidden.shape[0], size):
        h, t = hidden[start : start + size], targets[start : start + size]
        args = (head, config, h, t, temperature, with_entropy, with_log_sum_p2)
        parts.append(checkpoint(_chunk, *args, use_reentrant=False) if use_ckpt else _chunk(*args))
    # nothing to score (all masked): an empty result still connected to the graph, so backward() works
    flat = torch.cat(parts) if parts else hidden.new_zeros(0, width).float() + hidden.sum().float() * 0.0
    if index is not None:
        full = torch.zeros(B * K, width, dtype=torch.float32, device=hidden.device)
        flat = full.index_put((index,), flat)
    flat = flat.reshape(B, K, width)
    out = {"logps": flat[..., 0]}
    col = 1
    if with_entropy:
        out["entropies"] = flat[..., col]
        col += 1
    if with_log_sum_p2:
        out["log_sum_p2"] = flat[..., col]
    return out


def token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int | None = None,
    mask: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    packed: Packed | None = None,
    vision: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (B, K) of the last K tokens of `input_ids` (B, T), and their entropies (B, K) or None.

    `temperature` divides the logits (same as sampling). `mask` (B, K), optional: positions where it is 0 are
    not computed and come back as 0 (saves the LM head on padding); `index` is the same selection as
    flattened positions, precomputed on the host (no device sync); `packed`: run the decoder on the batch
    without padding (`Packed`); `vision`: pixel inputs of a vision-language model. Float32 outputs.
    """
    out = token_stats(
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        temperature=temperature,
        with_entropy=with_entropy,
        chunk_size=chunk_size,
        mask=mask,
        index=index,
        packed=packed,
        vision=vision,
    )
    return out["logps"], out.get("entropies")


def naive_token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    vision: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Reference implementation for tests: full logits, log_softmax, gather. Do not use in training."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **(vision or {})
    ).logits
    logits = logits[:, -logits_to_keep - 1 : -1].float() / temperature
    return F.log_softmax(logits, -1).gather(-1, input_ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1)
