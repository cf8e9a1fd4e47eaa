"""Generation batches: `Sampled` (completions + raw rewards), `ScoredRollout` (+ advantages, log-probs) and
the trimmed `MicroBatch`es cut from it.

The GRPO loop fills one `ScoredRollout` per generation (completions, loss mask, advantages, optionally old /
reference / sampling log-probs) and trains on row subsets of it. Row lengths are kept on the host, so cutting
a micro-batch and trimming it to its longest prompt and completion needs no device->host sync. Rows are
grouped by prompt (`num_generations` consecutive rows) until the loop shuffles them into slices.

Rows with the same prompt: `prompt_keys` (one key per row, equal keys for equal prompt tokens) makes each
micro-batch say which of its rows share a prompt (`MicroBatch.shared`), so the log-prob forward can run
each distinct prompt once (`engine.prefix`); `split_by_prompt` cuts a step so that groups stay together.

Image prompts: `vision` holds each row's pixel inputs (a dict of tensors, shared by the G rows of a prompt,
or None for a row without images); a micro-batch concatenates those of its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from engine.prefix import SharedPrompts
from engine.rollout.base import RolloutOutput


@dataclass
class MicroBatch:
    input_ids: Tensor  # (b, P + C) prompt (left-padded) then completion (right-padded)
    attention_mask: Tensor  # (b, P + C)
    loss_mask: Tensor  # (b, C) 1 on completion tokens that count in the loss
    advantages: Tensor  # (b,)
    logits_to_keep: int  # C
    old_logps: Tensor | None = None  # (b, C)
    ref_logps: Tensor | None = None  # (b, C)
    sampling_logps: Tensor | None = None  # (b, C)
    vision: dict[str, Tensor] | None = None  # pixel inputs of the rows' images, in row order
    shared: SharedPrompts | None = None  # rows that share a prompt (None: every prompt is distinct)

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class ScoredRollout:
    prompt_ids: Tensor  # (N, P) left-padded
    prompt_mask: Tensor  # (N, P)
    completion_ids: Tensor  # (N, C) right-padded
    completion_mask: Tensor  # (N, C) 1 on generated tokens (through EOS)
    loss_mask: Tensor  # (N, C) completion_mask, with truncated rows zeroed if mask_truncated_completions
    advantages: Tensor  # (N,)
    prompt_lengths: list[int]
    completion_lengths: list[int]
    loss_tokens: list[int]  # loss_mask row sums
    sampling_logps: Tensor | None = None  # (N, C)
    old_logps: Tensor | None = None  # (N, C)
    ref_logps: Tensor | None = None  # (N, C)
    policy_version: int = 0  # the optimizer step whose weights sampled these rows
    vision: list[dict[str, Tensor] | None] | None = None  # per row: pixel inputs of its prompt's images
    prompt_keys: list[int] | None = None  # per row: equal for equal prompt tokens (None: do not share)
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.completion_lengths)

    def micro_batch(self, rows: Sequence[int]) -> MicroBatch:
        """Rows `rows`, trimmed to their longest prompt (left) and completion (right)."""
        if not rows:
            raise ValueError("a micro-batch needs at least one row")
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.prompt_ids.device)
        p_width = max(self.prompt_lengths[i] for i in rows)
        c_width = max(1, max(self.completion_lengths[i] for i in rows))
        p_ids = self.prompt_ids.index_select(0, index)[:, -p_width:]
        p_mask = self.prompt_mask.index_select(0, index)[:, -p_width:]
        c_ids = self.completion_ids.index_select(0, index)[:, :c_width]
        c_mask = self.completion_mask.index_select(0, index)[:, :c_width]

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index)[:, :c_width]

        shared = None if self.prompt_keys is None else SharedPrompts.of([self.prompt_keys[i] for i in rows])

        return MicroBatch(
            input_ids=torch.cat([p_ids, c_ids], dim=1),
            attention_mask=torch.cat([p_mask, c_mask], dim=1),
            loss_mask=self.loss_mask.index_select(0, index)[:, :c_width],
            advantages=self.advantages.index_select(0, index),
            logits_to_keep=c_width,
            old_logps=cut(self.old_logps),
            ref_logps=cut(self.ref_logps),
            sampling_logps=cut(self.sampling_logps),
            vision=None
            if self.vision is None
            else _vision([self.vision[i] for i in rows], self.prompt_ids.device),
            shared=None if shared is None else shared.to(self.prompt_ids.device),
        )

    def total_length(self, row: int) -> int:
        return self.prompt_lengths[row] + self.completion_lengths[row]


def split_by_length(rows: Sequence[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """`rows` sorted by `lengths[row]` and cut into `parts` contiguous, nearly equal chunks (none empty
    unless there are fewer rows than parts). Similar lengths together keep padding small."""
    return _cut(sorted(rows, key=lambda r: lengths[r]), parts)


def _cut(ordered: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(ordered)))
    base, extra = divmod(len(ordered), parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        out.append(ordered[start : start + size])
        start += size
    return out


def split_by_prompt(
    rows: Sequence[int], keys: Sequence[int], lengths: Sequence[int], parts: int
) -> list[list[int]]:
    """`rows` cut into `parts` contiguous, nearly equal chunks like `split_by_length`, but with the rows of
    one prompt (equal `keys[row]`) next to each other, so a prompt's rows share as few chunks as the cut
    allows and its prompt runs once per chunk; prompts are ordered by their longest row, rows within one
    by length."""
    longest: dict[int, int] = {}
    for r in rows:
        longest[keys[r]] = max(longest.get(keys[r], 0), lengths[r])
    ordered = sorted(rows, key=lambda r: (longest[keys[r]], keys[r], lengths[r]))
    return _cut(ordered, parts)


@dataclass
class Sampled:
    """Generated and rewarded completions before advantages: what dynamic sampling and GFPO filter.

    `rewards` is (N, K) float32 on the host, one column per reward function, NaN where a reward gave None.
    """

    out: RolloutOutput
    ids: list[list[int]]  # completion token ids without padding
    texts: list[str]  # decoded completions
    prompts: list[Any]  # the dataset prompt of each row
    rewards: Tensor  # (N, K)
    truncated: list[bool]
    vision: list[dict[str, Tensor] | None] | None = None  # per row (see ScoredRollout)

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, rows: Sequence[int]) -> Sampled:
        index = torch.as_tensor(list(rows), dtype=torch.long)
        dev = index.to(self.out.completion_ids.device)
        o = self.out
        out = RolloutOutput(
            prompt_ids=o.prompt_ids.index_select(0, dev),
            prompt_mask=o.prompt_mask.index_select(0, dev),
            completion_ids=o.completion_ids.index_select(0, dev),
            completion_mask=o.completion_mask.index_select(0, dev),
            is_truncated=o.is_truncated.index_select(0, dev),
            sampling_logps=None if o.sampling_logps is None else o.sampling_logps.index_select(0, dev),
            policy_version=o.policy_version,
        )
        return Sampled(
            out=out,
            ids=[self.ids[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            prompts=[self.prompts[r] for r in rows],
            rewards=self.rewards.index_select(0, index),
            truncated=[self.truncated[r] for r in rows],
            vision=None if self.vision is None else [self.vision[r] for r in rows],
        )

    def cpu(self) -> Sampled:
        """The same rows with every tensor on the host (to send to other processes)."""
        o = self.out
        out = RolloutOutput(
            prompt_ids=o.prompt_ids.cpu(),
            prompt_mask=o.prompt_mask.cpu(),
            completion_ids=o.completion_ids.cpu(),
            completion_mask=o.completion_mask.cpu(),
            is_truncated=o.is_truncated.cpu(),
            sampling_logps=None if o.sampling_logps is None else o.sampling_logps.cpu(),
            policy_version=o.policy_version,
        )
        return replace(self, out=out, rewards=self.rewards.cpu())

    @staticmethod
    def concat(parts: Sequence[Sampled], pad_token_id: int) -> Sampled:
        """Rows of several generations in one batch (prompts re-padded left, completions right)."""
        if len(parts) == 1:
            return parts[0]
        outs = [p.out for p in parts]
        p_width = max(o.prompt_ids.shape[1] for o in outs)
        c_width = max(o.completion_ids.shape[1] for o in outs)
        logps = [o.sampling_logps for o in outs]
        out = RolloutOutput(
            prompt_ids=torch.cat([_pad(o.prompt_ids, p_width, pad_token_id, left=True) for o in outs]),
            prompt_mask=torch.cat([_pad(o.prompt_mask, p_width, 0, left=True) for o in outs]),
            completion_ids=torch.cat([_pad(o.completion_ids, c_width, pad_token_id) for o in outs]),
            completion_mask=torch.cat([_pad(o.completion_mask, c_width, 0) for o in outs]),
            is_truncated=torch.cat([o.is_truncated for o in outs]),
            sampling_logps=None
            if any(lp is None for lp in logps)
            else torch.cat([_pad(lp, c_width, 0.0) for lp in logps]),  # type: ignore[arg-type]
            policy_version=_oldest([o.policy_version for o in outs]),
        )
        return Sampled(
            out=out,
            ids=[x for p in parts for x in p.ids],
            texts=[x for p in parts for x in p.texts],
            prompts=[x for p in parts for x in p.prompts],
            rewards=torch.cat([p.rewards for p in parts]),
            truncated=[x for p in parts for x in p.truncated],
            vision=None if any(p.vision is None for p in parts) else [x for p in parts for x in p.vision],  # type: ignore[union-attr]
        )


def _vision(items: list[dict[str, Tensor] | None], device: torch.device) -> dict[str, Tensor] | None:
    from engine.multimodal.prompts import concat_vision

    batch = concat_vision(items)
    return None if batch is None else {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _oldest(versions: list[int | None]) -> int | None:
    known = [v for v in versions if v is not None]
    return min(known) if known else None


def _pad(t: Tensor, width: int, value: float, left: bool = False) -> Tensor:
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    fill = torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([fill, t] if left else [t, fill], dim=1)
