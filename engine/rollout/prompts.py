"""Prompts for online training: encoding (chat template, left truncation) and a resumable prompt sampler.

    sampler = PromptSampler(num_rows=len(rows), seed=42, shuffle=True)
    indices = sampler.take(4)                      # the next 4 prompts, wrapping into the next epoch
    ids = PromptEncoder(tokenizer, max_prompt_length=512).encode(rows[i]["prompt"])

The sampler walks a seeded permutation per epoch; `position` / `restore()` round-trip through checkpoints.
The encoder renders chat prompts with the tokenizer's template (generation prompt added), tokenizes without
extra special tokens (the template carries them), and keeps the *last* `max_prompt_length` tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.data.tokenize import cap_messages, encode, prompt_text


class PromptSampler:
    def __init__(self, num_rows: int, seed: int, shuffle: bool = True) -> None:
        if num_rows < 1:
            raise ValueError("the dataset has no prompts")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.epoch, self.index = 0, 0
        self._order = self._plan(0)

    def _plan(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_rows, generator=gen).tolist()

    @property
    def epoch_float(self) -> float:
        return self.epoch + self.index / self.num_rows

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    @property
    def drawn(self) -> int:
        """How many prompts were taken so far over all epochs (restored with the position)."""
        return self.epoch * self.num_rows + self.index

    def restore(self, position: dict[str, int]) -> None:
        self.epoch, self.index = int(position["epoch"]), int(position["index"])
        self._order = self._plan(self.epoch)

    def take(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if self.index >= self.num_rows:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._plan(self.epoch)
            out.append(self._order[self.index])
            self.index += 1
        return out


class PromptEncoder:
    """Token ids of a prompt (string or chat messages), cached per row, left-truncated to the budget."""

    def __init__(self, tokenizer: Any, max_prompt_length: int | None) -> None:
        self.tokenizer, self.max_prompt_length = tokenizer, max_prompt_length
        self._cache: dict[int, list[int]] = {}

    def encode(self, prompt: Any) -> list[int]:
        limit = self.max_prompt_length
        text = prompt_text(self.tokenizer, cap_messages(self.tokenizer, prompt, limit, keep="end"))
        ids = encode(self.tokenizer, text, limit=limit, keep="end")
        if not ids:
            raise ValueError("a prompt rendered to zero tokens; every prompt needs some text")
        return ids

    def row(self, index: int, prompt: Any) -> list[int]:
        if index not in self._cache:
            self._cache[index] = self.encode(prompt)
        return self._cache[index]


def display_prompt(prompt: Any) -> str:
    """A short human-readable prompt for sample logs: the string, or the last message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        content = prompt[-1].get("content", "")
        if isinstance(content, list):  # parts of an image prompt: text kept, images marked
            return "".join(
                "[image] " if isinstance(p, dict) and p.get("type") == "image" else str(p.get("text", ""))
                for p in content
                if isinstance(p, dict)
            )
        return str(content)
    return str(prompt)
