"""Preference pairs for reward modelling: whole sequences (prompt + response) and an optional `margin`.

    examples, dropped = tokenize_reward_pairs(rows, tokenizer, max_length=1024)
    batch = collate_reward_pairs(examples[:8], pad_id)    # input_ids (2B, T): chosen_1..B, rejected_1..B

As TRL's `RewardTrainer`: an explicit prompt is prepended to both responses, an implicit one is
the shared start of the two (`engine.data.tokenize.preference_example`, which also appends EOS to plain
strings and applies the chat template to conversations); pairs where either side is longer than
`max_length` are dropped, not truncated. `margin`, when the dataset has that column, must be a number on
every row. Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.data.formats import DataFormatError, RowError
from engine.data.tokenize import preference_example


@dataclass
class RewardExample:
    chosen_ids: list[int]  # prompt + chosen response
    rejected_ids: list[int]  # prompt + rejected response
    margin: float | None = None

    @property
    def length(self) -> int:
        return max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class RewardTokenBatch:
    """2B right-padded rows: chosen_1..B then rejected_1..B, scored in one forward."""

    input_ids: torch.Tensor  # (2B, T) long
    attention_mask: torch.Tensor  # (2B, T) long, 1 on real tokens
    margin: torch.Tensor | None  # (B,) float, or None when the dataset has no margin column
    num_pairs: int
    num_tokens: int  # real tokens of the 2B rows (host int)

    def to(self, device: torch.device | str) -> RewardTokenBatch:
        return RewardTokenBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            None if self.margin is None else self.margin.to(device),
            self.num_pairs,
            self.num_tokens,
        )


def read_margins(rows: list[dict[str, Any]]) -> list[float] | None:
    """The `margin` column as floats, None when no row has one; a row missing it or holding a non-number
    is an error naming the row."""
    if not any("margin" in row for row in rows):
        return None
    errors = []
    for i, row in enumerate(rows):
        value = row.get("margin")
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(RowError(i, "margin", f"expected a number on every row, got {value!r}"))
    if errors:
        raise DataFormatError(f"{len(errors)} row(s) with a bad margin", errors)
    return [float(row["margin"]) for row in rows]


def tokenize_reward_pairs(
    rows: list[dict[str, Any]], tokenizer: Any, *, max_length: int | None = 1024
) -> tuple[list[RewardExample], int]:
    """(pairs, number dropped because a side is longer than `max_length` tokens)."""
    margins = read_margins(rows)
    out, dropped = [], 0
    limit = None if max_length is None else max_length + 1  # enough to see that a side is too long
    for i, row in enumerate(rows):
        ex = preference_example(row, tokenizer, i, prompt_limit=limit, completion_limit=limit)
        chosen, rejected = ex.prompt_ids + ex.chosen_ids, ex.prompt_ids + ex.rejected_ids
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            dropped += 1
            continue
        out.append(RewardExample(chosen, rejected, None if margins is None else margins[i]))
    return out, dropped


def collate_reward_pairs(
    examples: list[RewardExample], pad_id: int, pad_to_multiple_of: int | None = None
) -> RewardTokenBatch:
    rows = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    width = max(len(r) for r in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
    has_margin = examples[0].margin is not None
    margin = torch.tensor([e.margin for e in examples], dtype=torch.float32) if has_margin else None
    return RewardTokenBatch(ids, attn, margin, len(examples), sum(len(r) for r in rows))
