"""Pad tokenized examples into right-padded batches trimmed to their longest row.

A batch carries `logits_to_keep` K: the smallest suffix of the sequence that covers every target token
of every row, and the loss mask cut to that suffix (B, K), which is what `engine.logprobs.token_logprobs`
takes. Host-side counts (`num_tokens`, ...) are plain ints computed before anything moves to the device,
so the loops can build the global normaliser of an optimizer step without a device sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.data.tokenize import PreferenceExample, SFTExample


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T) long, right-padded
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    loss_mask: torch.Tensor  # (B, K) float, 1 where the token at T-K+t is a target
    logits_to_keep: int  # K
    num_tokens: int  # targets in this batch (host int)
    num_rows: int
    target_index: torch.Tensor  # (num_tokens,) long: loss_mask.reshape(-1).nonzero(), built on the host

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.loss_mask.to(device, non_blocking=True),
            self.logits_to_keep,
            self.num_tokens,
            self.num_rows,
            self.target_index.to(device, non_blocking=True),
        )


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def pad_rows(
    rows: list[list[int]], masks: list[list[int]], pad_id: int, pad_to_multiple_of: int | None = None
) -> TokenBatch:
    """Right-pad token rows (with per-token target masks) into a TokenBatch."""
    T = _round_up(max(len(r) for r in rows), pad_to_multiple_of)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    full_mask = torch.zeros((B, T), dtype=torch.float32)
    first = T
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
        full_mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        nz = next((j for j, v in enumerate(m) if v), len(m))
        first = min(first, nz)
    full_mask[:, 0] = 0.0  # nothing predicts the first token
    K = max(1, T - max(first, 1))
    loss_mask = full_mask[:, T - K :].contiguous()
    index = loss_mask.reshape(-1).nonzero().squeeze(-1)
    return TokenBatch(ids, attn, loss_mask, K, int(index.numel()), B, index)


def collate_sft(examples: list[SFTExample], pad_id: int, pad_to_multiple_of: int | None = None) -> TokenBatch:
    return pad_rows(
        [e.input_ids for e in examples], [e.loss_mask for e in examples], pad_id, pad_to_multiple_of
    )


@dataclass
class PreferenceTokenBatch:
    """2B rows: [prompt+chosen]_1..B then [prompt+rejected]_1..B (one forward for both)."""

    tokens: TokenBatch
    num_pairs: int
    num_chosen_tokens: int  # completion tokens of the chosen rows (host int)
    chosen_lengths: torch.Tensor  # (B,) float
    rejected_lengths: torch.Tensor  # (B,) float

    def to(self, device: torch.device | str) -> PreferenceTokenBatch:
        return PreferenceTokenBatch(
            self.tokens.to(device),
            self.num_pairs,
            self.num_chosen_tokens,
            self.chosen_lengths.to(device),
            self.rejected_lengths.to(device),
        )


def collate_preferences(
    examples: list[PreferenceExample], pad_id: int, pad_to_multiple_of: int | None = None
) -> PreferenceTokenBatch:
    rows, masks = [], []
    for which in ("chosen_ids", "rejected_ids"):
        for e in examples:
            comp = getattr(e, which)
            rows.append(e.prompt_ids + comp)
            masks.append([0] * len(e.prompt_ids) + [1] * len(comp))
    tokens = pad_rows(rows, masks, pad_id, pad_to_multiple_of)
    chosen = [len(e.chosen_ids) for e in examples]
    return PreferenceTokenBatch(
        tokens,
        num_pairs=len(examples),
        num_chosen_tokens=sum(chosen),
        chosen_lengths=torch.tensor(chosen, dtype=torch.float32),
        rejected_lengths=torch.tensor([len(e.rejected_ids) for e in examples], dtype=torch.float32),
    )
