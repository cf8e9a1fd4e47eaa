"""Unpaired feedback for KTO and BCO: tokenize (prompt, completion, label) rows, unpair preference pairs,
give each row KTO's mismatched completion, and batch.

    examples, dropped = tokenize_unpaired(rows, fmt, tokenizer, max_length=1024, max_prompt_length=512)
    assign_kl_completions(examples, max_length=1024)       # only for KTO's `kto` loss
    batch = collate_unpaired(examples[:4], pad_id, with_kl=True)

A preference dataset is unpaired here: every pair becomes a desirable row (prompt, chosen)
and an undesirable row (prompt, rejected), and the rows are then shuffled (seeded), so that no stretch of the
data holds a single label. A row tokenizes exactly like one side of a preference pair
(`engine.data.tokenize.preference_example`: chat template for conversations, EOS appended to plain strings)
and is truncated by the same rule as DPO pairs: the prompt to `max_prompt_length` (keep_end: its last
tokens), the completion to `max_completion_length`, then to what `max_length` leaves after the prompt.

KTO's reference point z0 is estimated on mismatched pairs (x_i, y'_i) where y'_i is another row's
completion. TRL rotates completions inside each batch; here the partner is fixed once per dataset (the
nearest earlier row, cyclically, whose prompt differs), so the KL rows do not depend on how batches are
drawn and their reference log-probs can be precomputed. Nothing here runs a model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.data.collate import TokenBatch, pad_rows
from engine.data.tokenize import pair_limits, preference_example

KL_SEARCH = 64  # rows looked back for a partner with another prompt


@dataclass
class UnpairedExample:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool  # True = desirable
    kl_completion_ids: list[int] | None = None  # another row's completion, cut to fit (KTO's KL rows)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + max(len(self.completion_ids), len(self.kl_completion_ids or ()))


@dataclass
class UnpairedTokenBatch:
    """B unpaired rows [prompt+completion]_1..B, and with KTO's KL rows [prompt+other completion]_1..B."""

    tokens: TokenBatch
    kl_tokens: TokenBatch | None
    labels: torch.Tensor  # (B,) bool, True = desirable
    num_rows: int
    num_desirable: int  # host ints, known before any forward
    num_undesirable: int

    def to(self, device: torch.device | str) -> UnpairedTokenBatch:
        return UnpairedTokenBatch(
            self.tokens.to(device),
            None if self.kl_tokens is None else self.kl_tokens.to(device),
            self.labels.to(device),
            self.num_rows,
            self.num_desirable,
            self.num_undesirable,
        )


def _fit(
    prompt: list[int],
    completion: list[int],
    max_length: int | None,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    truncation_mode: str,
) -> tuple[list[int], list[int]]:
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:] if truncation_mode == "keep_end" else prompt[:max_prompt_length]
    if max_completion_length is not None:
        completion = completion[:max_completion_length]
    if max_length is not None:
        completion = completion[: max(max_length - len(prompt), 0)]
    return prompt, completion


def tokenize_unpaired(
    rows: list[dict[str, Any]],
    fmt: str,
    tokenizer: Any,
    *,
    max_length: int | None = 1024,
    max_prompt_length: int | None = 512,
    max_completion_length: int | None = None,
    truncation_mode: str = "keep_end",
    seed: int = 0,
) -> tuple[list[UnpairedExample], int]:
    """(examples, number of rows dropped: empty prompt or completion after truncation).

    `fmt` is "unpaired" (rows keep their order) or "preference" (each pair gives a desirable and an
    undesirable row; the result is shuffled with `seed`)."""
    if fmt not in ("unpaired", "preference"):
        raise ValueError(f"unpaired data must be 'unpaired' or 'preference' rows, not {fmt!r}")
    prompt_limit, completion_limit = pair_limits(max_length, max_prompt_length, max_completion_length)
    keep = "end" if truncation_mode == "keep_end" else "start"
    limits = {"prompt_limit": prompt_limit, "completion_limit": completion_limit, "prompt_keep": keep}
    raw: list[tuple[list[int], list[int], bool]] = []
    for i, row in enumerate(rows):
        if fmt == "unpaired":
            side = {"prompt": row["prompt"], "chosen": row["completion"], "rejected": row["completion"]}
            ex = preference_example(side, tokenizer, i, **limits)
            raw.append((ex.prompt_ids, ex.chosen_ids, bool(row["label"])))
        else:
            ex = preference_example(row, tokenizer, i, **limits)
            raw.append((ex.prompt_ids, ex.chosen_ids, True))
            raw.append((ex.prompt_ids, ex.rejected_ids, False))
    if fmt == "preference":
        random.Random(seed).shuffle(raw)
    out, dropped = [], 0
    for prompt, completion, label in raw:
        p, c = _fit(prompt, completion, max_length, max_prompt_length, max_completion_length, truncation_mode)
        if not p or not c:
            dropped += 1
            continue
        out.append(UnpairedExample(p, c, label))
    return out, dropped


def assign_kl_completions(examples: list[UnpairedExample], max_length: int | None = None) -> None:
    """Give every example the completion of the nearest earlier example (cyclically) whose prompt differs,
    cut to what `max_length` leaves after its own prompt. In place. The search looks back at most
    `KL_SEARCH` rows; when none of them has another prompt the previous row is used (the pair is then
    matched, the best that data allows)."""
    n = len(examples)
    for i, ex in enumerate(examples):
        partner = (i - 1) % n
        for back in range(1, min(n, KL_SEARCH + 1)):
            j = (i - back) % n
            if examples[j].prompt_ids != ex.prompt_ids:
                partner = j
                break
        kl = examples[partner].completion_ids
        if max_length is not None:
            kl = kl[: max(max_length - len(ex.prompt_ids), 0)]
        examples[i] = replace(ex, kl_completion_ids=kl)


def collate_unpaired(
    examples: list[UnpairedExample],
    pad_id: int,
    with_kl: bool = False,
    pad_to_multiple_of: int | None = None,
    pack: bool = False,
) -> UnpairedTokenBatch:
    """Right-padded rows (completion tokens are the targets); with `with_kl` the KL rows as well; `pack`:
    each also laid end to end without padding (`TokenBatch.packed`)."""

    def rows(which: str) -> TokenBatch:
        ids, masks = [], []
        for e in examples:
            comp = getattr(e, which) or []
            ids.append(e.prompt_ids + comp)
            masks.append([0] * len(e.prompt_ids) + [1] * len(comp))
        return pad_rows(ids, masks, pad_id, pad_to_multiple_of, pack)

    if with_kl and any(e.kl_completion_ids is None for e in examples):
        raise ValueError("with_kl needs kl_completion_ids: call assign_kl_completions first")
    desirable = sum(e.label for e in examples)
    return UnpairedTokenBatch(
        tokens=rows("completion_ids"),
        kl_tokens=rows("kl_completion_ids") if with_kl else None,
        labels=torch.tensor([e.label for e in examples], dtype=torch.bool),
        num_rows=len(examples),
        num_desirable=desirable,
        num_undesirable=len(examples) - desirable,
    )
