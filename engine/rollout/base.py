"""The rollout interface: prompts (token ids) in, `num_generations` sampled completions per prompt out.

A backend returns a `RolloutOutput` whose rows are grouped by prompt (rows `i*G .. i*G+G-1` belong to prompt
`i`), prompts left-padded, completions right-padded and trimmed to the longest one. The completion mask is 1
on every generated token up to and including the first EOS; a completion without EOS is *truncated*.
Backends sample only; they never compute rewards, advantages or training log-probs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, with the GRPO config's names and meanings (`top_k` None or 0 = disabled)."""

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    return_logps: bool = False  # also return the sampling distribution's log-probs of the sampled tokens
    suppress_token_ids: tuple[int, ...] = ()  # never sampled (a VLM's image placeholder tokens)

    def __post_init__(self) -> None:
        if not self.eos_token_ids:
            raise ValueError("sampling needs at least one EOS token id (the tokenizer has no eos_token)")


@dataclass
class RolloutOutput:
    prompt_ids: torch.Tensor  # (N, P) long, left-padded
    prompt_mask: torch.Tensor  # (N, P) long, 1 on prompt tokens
    completion_ids: torch.Tensor  # (N, C) long, right-padded with pad_token_id
    completion_mask: torch.Tensor  # (N, C) long, 1 on generated tokens up to and including the first EOS
    is_truncated: torch.Tensor  # (N,) bool, True when no EOS was generated
    sampling_logps: torch.Tensor | None = None  # (N, C) float32, log-probs under the sampling distribution
    policy_version: int | None = None  # the policy version (optimizer step) the sampler generated with

    @property
    def completion_lengths(self) -> torch.Tensor:  # (N,)
        return self.completion_mask.sum(dim=1)

    def completion_id_lists(self) -> list[list[int]]:
        """The completions without padding, as Python lists (one host transfer)."""
        lengths = self.completion_lengths.tolist()
        rows = self.completion_ids.tolist()
        return [row[:n] for row, n in zip(rows, lengths, strict=True)]


class RolloutBackend(ABC):
    """Generates completions; `sync_weights` makes the sampler use the policy's current weights."""

    name: str
    needs_first_sync = False  # True when the sampler may hold other weights than the policy at start
    seeded = False  # True when `generate` takes `seeds`, one per completion, that alone fix its samples

    @abstractmethod
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_generations: int, params: SamplingParams
    ) -> RolloutOutput: ...

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:  # noqa: B027
        """Push the policy's weights (policy version `version`) to the sampler; a no-op when the sampler *is*
        the policy (in-process backends share weights)."""

    def close(self) -> None:  # noqa: B027  (nothing to release for in-process backends)
        """Release what the backend holds outside this process (a server it started)."""


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (N, max_len), padded on the left."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def completion_mask_and_truncation(
    completion_ids: torch.Tensor, eos_token_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask 1 up to and including the first EOS of each row; truncated = no EOS in the row. Shapes (N, C), (N,)."""
    is_eos = torch.isin(completion_ids, torch.as_tensor(list(eos_token_ids), device=completion_ids.device))
    has_eos = is_eos.any(dim=1)
    width = completion_ids.shape[1]
    first = torch.where(
        has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, width, dtype=torch.long)
    )
    positions = torch.arange(width, device=completion_ids.device).unsqueeze(0)
    mask = (positions <= first.unsqueeze(1)).long()
    return mask, ~has_eos


def trim_right(out: RolloutOutput, pad_token_id: int) -> RolloutOutput:
    """Cut completion columns beyond the longest completion and reset padding to `pad_token_id`."""
    width = int(out.completion_mask.sum(dim=1).max().item()) if out.completion_mask.numel() else 0
    width = max(width, 1)
    mask = out.completion_mask[:, :width]
    ids = out.completion_ids[:, :width].masked_fill(mask == 0, pad_token_id)
    logps = None if out.sampling_logps is None else out.sampling_logps[:, :width] * mask
    return RolloutOutput(
        out.prompt_ids, out.prompt_mask, ids, mask, out.is_truncated, logps, out.policy_version
    )


def output_from_token_rows(
    prompt_ids: Sequence[Sequence[int]],
    num_generations: int,
    completions: Sequence[Sequence[int]],
    logps: Sequence[Sequence[float]],
    params: SamplingParams,
    policy_version: int | None = None,
) -> RolloutOutput:
    """A `RolloutOutput` from a sampler that returns token lists (vLLM): `completions` holds
    `num_generations` rows per prompt, in prompt order, each ending at its stop token (or cut at
    `max_new_tokens`), with one sampling log-prob per token in `logps`. Completions are right-padded, the
    mask is 1 on every returned token, a row that does not end with an EOS id is truncated, prompts are
    left-padded and repeated per generation, and columns past the longest completion are trimmed."""
    if len(completions) != len(prompt_ids) * num_generations:
        raise ValueError(
            f"{len(completions)} completions for {len(prompt_ids)} prompts x {num_generations} generations"
        )
    if any(len(lp) != len(r) for r, lp in zip(completions, logps, strict=True)):
        raise ValueError("every completion needs one sampling log-prob per token")
    n, width = len(completions), max(1, max((len(r) for r in completions), default=0))
    ids = torch.full((n, width), params.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    samp = torch.zeros((n, width), dtype=torch.float32)
    for i, (r, lp) in enumerate(zip(completions, logps, strict=True)):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
        samp[i, : len(lp)] = torch.as_tensor(list(lp), dtype=torch.float32)
    truncated = [not r or r[-1] not in params.eos_token_ids for r in completions]
    p_ids, p_mask = left_pad(prompt_ids, params.pad_token_id)
    out = RolloutOutput(
        prompt_ids=p_ids.repeat_interleave(num_generations, dim=0),
        prompt_mask=p_mask.repeat_interleave(num_generations, dim=0),
        completion_ids=ids,
        completion_mask=mask,
        is_truncated=torch.as_tensor(truncated, dtype=torch.bool),
        sampling_logps=samp,
        policy_version=policy_version,
    )
    return trim_right(out, params.pad_token_id)
