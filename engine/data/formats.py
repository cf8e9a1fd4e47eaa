"""Dataset format detection and row-level validation.

Formats (names used in errors and by the loops):
    text               {"text": str}                                  (column name = dataset_text_field)
    messages           {"messages": [{"role", "content"}, ...]}       (ShareGPT "conversations" converted)
    prompt_completion  {"prompt", "completion"}                       strings, or lists of messages
    preference         {"prompt"?, "chosen", "rejected"}              explicit or implicit prompt
    unpaired           {"prompt", "completion", "label": bool}
    prompt_only        {"prompt", ...extra columns}                   (online algorithms; extras go to rewards)

Conversational values are lists of {"role": str, "content": str} dicts; standard values are strings; the
columns of one row must agree. Errors name the row (0-based) and the column, and say what to do. This
module does not tokenize.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FORMATS = ("text", "messages", "prompt_completion", "preference", "unpaired", "prompt_only")
ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_REPORTED = 20


@dataclass(frozen=True)
class RowError:
    row: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.message}"


class DataFormatError(ValueError):
    """A dataset that cannot be used as given. `errors` lists the offending rows (first 20)."""

    def __init__(self, message: str, errors: Iterable[RowError] = ()) -> None:
        self.errors = list(errors)
        detail = "; ".join(str(e) for e in self.errors[:MAX_REPORTED])
        more = len(self.errors) - MAX_REPORTED
        if more > 0:
            detail += f"; ... and {more} more"
        super().__init__(f"{message}: {detail}" if detail else message)


def detect_format(rows: list[dict[str, Any]], text_field: str = "text") -> str:
    """The format of a dataset, from the columns of its first row (all rows are validated afterwards)."""
    if not rows:
        raise DataFormatError("the dataset is empty: give it at least one row")
    first = rows[0]
    if not isinstance(first, dict):
        raise DataFormatError("rows must be JSON objects", [RowError(0, None, f"got {type(first).__name__}")])
    cols = set(first)
    if {"chosen", "rejected"} <= cols:
        return "preference"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "messages" in cols or "conversations" in cols:
        return "messages"
    if text_field in cols:
        return "text"
    if "prompt" in cols:
        return "prompt_only"
    raise DataFormatError(
        f"cannot tell the dataset format from the columns {sorted(cols)} of row 0; use one of: "
        f"{{'{text_field}'}}, {{'messages'}}, {{'prompt', 'completion'}}, {{'prompt', 'chosen', 'rejected'}}, "
        "{'prompt', 'completion', 'label'}, {'prompt'}"
    )


def is_conversational(value: Any) -> bool:
    return isinstance(value, list)


def _check_messages(value: Any, row: int, column: str, errors: list[RowError]) -> None:
    if not isinstance(value, list) or not value:
        errors.append(RowError(row, column, "expected a non-empty list of {'role', 'content'} messages"))
        return
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            errors.append(RowError(row, column, f"message {j} must be an object with 'role' and 'content'"))
            return
        if msg["role"] not in ROLES:
            errors.append(
                RowError(row, column, f"message {j} has role {msg['role']!r}; use one of {list(ROLES)}")
            )
            return
        if not isinstance(msg["content"], str):
            errors.append(
                RowError(
                    row, column, f"message {j} content must be a string, got {type(msg['content']).__name__}"
                )
            )
            return


def _check_value(
    value: Any, row: int, column: str, errors: list[RowError], conversational: bool | None
) -> None:
    """A string, or a message list; `conversational` (when known) is what the row's other columns use."""
    if value is None:
        errors.append(RowError(row, column, "is missing or null"))
    elif isinstance(value, str):
        if conversational:
            errors.append(RowError(row, column, "is a string but the row's prompt is a list of messages"))
        elif not value.strip() and column != "prompt":
            errors.append(RowError(row, column, "is an empty string"))
    elif isinstance(value, list):
        if conversational is False:
            errors.append(RowError(row, column, "is a list of messages but the row's prompt is a string"))
        else:
            _check_messages(value, row, column, errors)
    else:
        errors.append(
            RowError(row, column, f"expected a string or a list of messages, got {type(value).__name__}")
        )


def sharegpt_to_messages(conversations: list[dict[str, Any]]) -> list[dict[str, str]]:
    """ShareGPT `[{"from": "human", "value": ...}]` -> `[{"role": "user", "content": ...}]`."""
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
    }
    return [
        {"role": roles.get(str(m.get("from")), str(m.get("from"))), "content": str(m.get("value") or "")}
        for m in conversations
    ]


def normalise_rows(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Convert ShareGPT `conversations` to `messages` (other formats are returned unchanged)."""
    if fmt == "messages" and rows and "messages" not in rows[0]:
        return [
            {
                **{k: v for k, v in r.items() if k != "conversations"},
                "messages": sharegpt_to_messages(r.get("conversations") or []),
            }
            for r in rows
        ]
    return rows


def validate_rows(rows: list[dict[str, Any]], fmt: str, text_field: str = "text") -> None:
    """Raise DataFormatError listing every bad row (first 20 in the message) for format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {list(FORMATS)}")
    errors: list[RowError] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.append(RowError(i, None, f"expected an object, got {type(row).__name__}"))
            continue
        if fmt == "text":
            value = row.get(text_field)
            if not isinstance(value, str) or not value:
                errors.append(RowError(i, text_field, "expected a non-empty string"))
        elif fmt == "messages":
            _check_messages(row.get("messages"), i, "messages", errors)
        elif fmt in ("prompt_completion", "unpaired", "prompt_only"):
            prompt = row.get("prompt")
            _check_value(prompt, i, "prompt", errors, None)
            if fmt != "prompt_only":
                _check_value(row.get("completion"), i, "completion", errors, is_conversational(prompt))
            if fmt == "unpaired" and not isinstance(row.get("label"), bool):
                errors.append(RowError(i, "label", f"expected true or false, got {row.get('label')!r}"))
        elif fmt == "preference":
            prompt = row.get("prompt")
            conv = None
            if "prompt" in row:
                _check_value(prompt, i, "prompt", errors, None)
                conv = is_conversational(prompt)
            else:
                conv = is_conversational(row.get("chosen"))
            _check_value(row.get("chosen"), i, "chosen", errors, conv)
            _check_value(row.get("rejected"), i, "rejected", errors, conv)
        if len(errors) > 200:
            break
    if errors:
        raise DataFormatError(f"{len(errors)} invalid row(s) for the {fmt} format", errors)


def expect_format(
    rows: list[dict[str, Any]], allowed: Iterable[str], algorithm: str, text_field: str = "text"
) -> tuple[str, list[dict[str, Any]]]:
    """Detect, check the format is one `algorithm` accepts, normalise and validate. Returns (format, rows)."""
    allowed = tuple(allowed)
    fmt = detect_format(rows, text_field)
    if fmt not in allowed:
        raise DataFormatError(
            f"{algorithm} needs {' or '.join(allowed)} rows, but this dataset looks like {fmt} "
            f"(columns {sorted(rows[0])})"
        )
    rows = normalise_rows(rows, fmt)
    validate_rows(rows, fmt, text_field)
    return fmt, rows


def split_implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected) for a preference row without a prompt: the shared leading part.

    Strings: longest common prefix, cut back to the last whitespace so no word is split. Message lists: the
    shared leading messages.
    """
    if isinstance(chosen, list):
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        return chosen[:k], chosen[k:], rejected[k:]
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    cut = max(chosen.rfind(" ", 0, k), chosen.rfind("\n", 0, k))
    k = cut if cut > 0 else 0
    return chosen[:k], chosen[k:], rejected[k:]
