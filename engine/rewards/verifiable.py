"""Rule-based rewards on the completion text: accuracy, format, think_format, length (Kimi), cosine_scaled.

- `accuracy`: 1.0 when the last number of the completion equals the gold `answer`/`solution` (no partial
  credit), 0.0 otherwise, None when the gold answer has no number.
- `format`: 1.0 when the completion is `<think>...</think>` followed by `<answer>...</answer>` (the
  DeepSeek-R1 format, arXiv:2501.12948), else 0.0.
- `think_format`: 1.0 when the completion starts with `<think>`, opens no second `<think>`, and closes
  `</think>` (TRL `think_format_reward`), else 0.0.
- `length`: Kimi k1.5 length reward (arXiv:2501.12599, Sec. 2.3.3) within each group of completions of the
  same prompt: lambda = 0.5 - (len - min_len) / (max_len - min_len); correct -> lambda, wrong -> min(0, lambda);
  all lengths equal -> 0. Lengths are token counts.
- `cosine_scaled`: cosine length scaling of correctness (arXiv:2502.03373): with p = min(len / max_len, 1),
  r = v_min + (v_max - v_min)(1 + cos(pi p)) / 2, where (v_min, v_max) = (0.5, 1.0) for a correct answer and
  (-0.5, -1.0) for a wrong one (short wrong answers are punished most). `max_len` defaults to the job's
  `max_completion_length`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from engine.rewards.parsing import completion_text, gold_values, is_correct
from engine.rewards.registry import NamedReward, RewardContext, Rewards, register

_R1_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
_THINK_FORMAT = re.compile(r"^<think>(?!.*<think>).*?</think>.*$", re.DOTALL)

COSINE_CORRECT = (0.5, 1.0)  # (value at max length, value at length 0)
COSINE_WRONG = (-0.5, -1.0)


def _correctness(completions: list[Any], columns: dict[str, Any], name: str) -> list[bool | None]:
    golds = gold_values(columns, name)
    if len(golds) != len(completions):
        raise ValueError(f"reward {name!r}: {len(golds)} gold answers for {len(completions)} completions")
    return [is_correct(c, g) for c, g in zip(completions, golds, strict=True)]


@register("accuracy")
def accuracy(spec: Any, ctx: RewardContext) -> NamedReward:
    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        return [None if ok is None else float(ok) for ok in _correctness(completions, columns, "accuracy")]

    return NamedReward("accuracy", fn)


@register("format")
def format_reward(spec: Any, ctx: RewardContext) -> NamedReward:
    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        return [1.0 if _R1_FORMAT.match(completion_text(c)) else 0.0 for c in completions]

    return NamedReward("format", fn)


@register("think_format")
def think_format(spec: Any, ctx: RewardContext) -> NamedReward:
    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        return [1.0 if _THINK_FORMAT.match(completion_text(c)) else 0.0 for c in completions]

    return NamedReward("think_format", fn)


def _group_key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)


@register("length")
def length(spec: Any, ctx: RewardContext) -> NamedReward:
    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        correct = _correctness(list(completions), columns, "length")
        lengths = [len(ids) for ids in completion_ids]
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(_group_key(p), []).append(i)
        out: Rewards = [0.0] * len(completions)
        for rows in groups.values():
            lo, hi = min(lengths[i] for i in rows), max(lengths[i] for i in rows)
            for i in rows:
                lam = 0.0 if hi == lo else 0.5 - (lengths[i] - lo) / (hi - lo)
                out[i] = None if correct[i] is None else (lam if correct[i] else min(0.0, lam))
        return out

    return NamedReward("length", fn)


@register("cosine_scaled")
def cosine_scaled(spec: Any, ctx: RewardContext) -> NamedReward:
    max_len = spec.max_len or ctx.max_completion_length

    def fn(prompts, completions, completion_ids, columns) -> Rewards:
        out: Rewards = []
        for ok, ids in zip(
            _correctness(list(completions), columns, "cosine_scaled"), completion_ids, strict=True
        ):
            if ok is None:
                out.append(None)
                continue
            v_min, v_max = COSINE_CORRECT if ok else COSINE_WRONG
            progress = min(len(ids) / max_len, 1.0)
            out.append(v_min + 0.5 * (v_max - v_min) * (1.0 + math.cos(math.pi * progress)))
        return out

    return NamedReward("cosine_scaled", fn)
