"""Text helpers shared by the verifiable rewards: completion text, the last number, the gold answer.

Deliberately small: numbers are compared as plain decimals (thousands separators removed); there is no
symbolic math verification (no LaTeX, fractions or units).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# A number not glued to a preceding digit, so "7-5" reads as 7 and 5, while " -5" reads as -5.
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
GOLD_COLUMNS = ("answer", "solution")


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or the content of the last message of a chat completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content") or "")
    raise TypeError(
        f"a completion must be a string or a list of chat messages, got {type(completion).__name__}"
    )


def last_number(text: str) -> float | None:
    """The last number in `text` (e.g. "7 + 5 = 12." -> 12.0), or None when there is none."""
    found = _NUMBER.findall(_THOUSANDS.sub("", text))
    return float(found[-1]) if found else None


def gold_values(columns: Mapping[str, Any], reward_name: str) -> list[Any]:
    """The per-sample gold answers: the `answer` column, else `solution`; a clear error when neither exists."""
    for col in GOLD_COLUMNS:
        if col in columns:
            return list(columns[col])
    raise KeyError(
        f"reward {reward_name!r} needs an 'answer' or 'solution' column in the dataset "
        f"(got columns {sorted(columns) or 'none'})"
    )


def gold_number(gold: Any) -> float | None:
    """A gold answer as a number: numbers pass through, text gives its last number (GSM8K '#### 72' -> 72)."""
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, int | float):
        return float(gold) if math.isfinite(gold) else None
    return last_number(str(gold))


def is_correct(completion: Any, gold: Any) -> bool | None:
    """True/False when the gold answer parses (no partial credit), None when it does not."""
    target = gold_number(gold)
    if target is None:
        return None
    got = last_number(completion_text(completion))
    return got is not None and math.isclose(got, target, rel_tol=0.0, abs_tol=1e-9)
