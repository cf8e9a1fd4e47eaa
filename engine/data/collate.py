"""Pad tokenized examples into right-padded batches trimmed to their longest row.

A batch carries `logits_to_keep` K: the smallest suffix of the sequence that covers every target token
of every row, and the loss mask cut to that suffix (B, K), which is what `engine.logprobs.token_logprobs`
takes. Host-side counts (`num_tokens`, ...) are plain ints computed before anything moves to the device,
so the loops can build the global normaliser of an optimizer step without a device sync.

With `pack=True` a batch also carries its rows laid end to end without padding (`engine.logprobs.Packed`):
the decoder runs on that, and the per-token results land on the same (B, K) grid, so the losses do not
change. `pack_bins` groups examples into packs of at most `capacity` tokens (best-fit decreasing).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from engine.data.tokenize import PreferenceExample, SFTExample
from engine.logprobs import Packed


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T) long, right-padded
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    loss_mask: torch.Tensor  # (B, K) float, 1 where the token at T-K+t is a target
    logits_to_keep: int  # K
    num_tokens: int  # targets in this batch (host int)
    num_rows: int
    target_index: torch.Tensor  # (num_tokens,) long: loss_mask.reshape(-1).nonzero(), built on the host
    packed: Packed | None = None  # the rows without padding, when the batch is packed

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.loss_mask.to(device, non_blocking=True),
            self.logits_to_keep,
            self.num_tokens,
            self.num_rows,
            self.target_index.to(device, non_blocking=True),
            None if self.packed is None else self.packed.to(device),
        )


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def pad_rows(
    rows: list[list[int]],
    masks: list[list[int]],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
    pack: bool = False,
) -> TokenBatch:
    """Right-pad token rows (with per-token target masks) into a TokenBatch; `pack`: also lay them end to end."""
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
    packed = _packed(rows, index, T, K) if pack else None
    return TokenBatch(ids, attn, loss_mask, K, int(index.numel()), B, index, packed)


def _packed(rows: list[list[int]], index: torch.Tensor, T: int, K: int) -> Packed:
    """Rows end to end; each target (i, c) of the (B, K) grid is token T-K+c of row i, scored one earlier."""
    lengths = torch.tensor([len(r) for r in rows])
    offsets = lengths.cumsum(0) - lengths
    ids = torch.tensor([t for r in rows for t in r], dtype=torch.long).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0)
    row, col = index // K, index % K
    source = (
        offsets[row] + (T - K + col) - 1
    )  # never before its row's start: a row's first token is no target
    return Packed(ids, positions, source, ids[0].index_select(0, source + 1))


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices grouped into bins of at most `capacity` tokens, best-fit decreasing (an example longer
    than `capacity` gets a bin of its own)."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted: the best fit is the first with enough room
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - lengths[i], b))
    return bins


def collate_sft(
    examples: list[SFTExample], pad_id: int, pad_to_multiple_of: int | None = None, pack: bool = False
) -> TokenBatch:
    return pad_rows(
        [e.input_ids for e in examples], [e.loss_mask for e in examples], pad_id, pad_to_multiple_of, pack
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
    examples: list[PreferenceExample], pad_id: int, pad_to_multiple_of: int | None = None, pack: bool = False
) -> PreferenceTokenBatch:
    rows, masks = [], []
    for which in ("chosen_ids", "rejected_ids"):
        for e in examples:
            comp = getattr(e, which)
            rows.append(e.prompt_ids + comp)
            masks.append([0] * len(e.prompt_ids) + [1] * len(comp))
    tokens = pad_rows(rows, masks, pad_id, pad_to_multiple_of, pack)
    chosen = [len(e.chosen_ids) for e in examples]
    return PreferenceTokenBatch(
        tokens,
        num_pairs=len(examples),
        num_chosen_tokens=sum(chosen),
        chosen_lengths=torch.tensor(chosen, dtype=torch.float32),
        rejected_lengths=torch.tensor([len(e.rejected_ids) for e in examples], dtype=torch.float32),
    )
