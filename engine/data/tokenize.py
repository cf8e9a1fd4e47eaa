"""Chat templates and tokenization with loss masks, for supervised rows and preference pairs.

    examples, dropped = tokenize_sft(rows, "messages", tokenizer, max_length=1024)
    pairs, dropped = tokenize_preferences(rows, tokenizer, max_prompt_length=512, max_length=1024)

Pieces are tokenized separately and concatenated (prompt, then completion), so the completion tokens are
exactly what the model would generate after that prompt, and the mask boundary is exact. Conversations are
rendered by the tokenizer's chat template; the text of each assistant turn is found by rendering the
conversation up to that turn with and without it, which works for any template that renders earlier turns
identically when later ones are added (a template that does not raises a clear error). Standard (string)
completions get the EOS token appended when missing. Batching and padding live in `collate.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.data.formats import DataFormatError, RowError, split_implicit_prompt


@dataclass
class SFTExample:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is a training target


@dataclass
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def render(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataFormatError(
            "this model's tokenizer has no chat template, so conversational rows cannot be used; "
            "give standard rows (plain strings) or pick a chat model"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def prompt_text(tokenizer: Any, prompt: Any) -> str:
    """The text a model is prompted with: a chat-templated conversation (with the generation prompt) or
    the string itself."""
    if isinstance(prompt, list):
        return render(tokenizer, prompt, add_generation_prompt=True)
    return prompt


def encode(tokenizer: Any, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _template_error(row: int) -> DataFormatError:
    return DataFormatError(
        "the model's chat template does not render earlier turns the same way when later turns are added, so "
        "the assistant tokens cannot be located; use prompt/completion rows instead",
        [RowError(row, "messages", "template is not prefix-consistent")],
    )


def conversation_segments(
    tokenizer: Any, messages: list[dict[str, Any]], row: int = 0
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_turn) pieces that concatenate to the full render."""
    full = render(tokenizer, messages)
    pieces: list[tuple[str, bool]] = []
    done = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and before.startswith(full[:done]) and full.startswith(upto)):
            raise _template_error(row)
        if len(before) > done:
            pieces.append((before[done:], False))
        pieces.append((upto[len(before) :], True))
        done = len(upto)
    if done < len(full):
        pieces.append((full[done:], False))
    return pieces


def _completion_text(
    tokenizer: Any, prompt: list[dict[str, Any]], completion: list[dict[str, Any]], row: int
) -> tuple[str, str]:
    before = render(tokenizer, prompt, add_generation_prompt=True)
    full = render(tokenizer, prompt + completion)
    if not full.startswith(before):
        raise _template_error(row)
    return before, full[len(before) :]


def _eos_id(tokenizer: Any, eos_token: str | None) -> int | None:
    if eos_token:
        ids = tokenizer.convert_tokens_to_ids(eos_token)
        if ids is None or ids == tokenizer.unk_token_id:
            raise ValueError(f"config.eos_token {eos_token!r} is not a token of this tokenizer")
        return int(ids)
    return tokenizer.eos_token_id


def _with_eos(ids: list[int], eos_id: int | None) -> list[int]:
    return ids + [eos_id] if eos_id is not None and (not ids or ids[-1] != eos_id) else ids


def _truncate(
    ids: list[int], mask: list[int], max_length: int | None, mode: str
) -> tuple[list[int], list[int]]:
    if max_length is None or len(ids) <= max_length:
        return ids, mask
    if mode == "keep_end":
        return ids[-max_length:], mask[-max_length:]
    return ids[:max_length], mask[:max_length]


def sft_example(
    row: dict[str, Any],
    fmt: str,
    tokenizer: Any,
    *,
    completion_only_loss: bool | None = None,
    assistant_only_loss: bool = False,
    text_field: str = "text",
    eos_token: str | None = None,
    index: int = 0,
) -> SFTExample:
    """One row -> tokens + loss mask.

    prompt_completion: loss on the completion only (unless `completion_only_loss` is False).
    messages: loss on every assistant turn, its end-of-turn tokens included (all tokens if
    `completion_only_loss` is False and `assistant_only_loss` is not set). text: loss on every token.
    """
    eos_id = _eos_id(tokenizer, eos_token)
    only_completion = completion_only_loss is not False
    if fmt == "text":
        ids = _with_eos(encode(tokenizer, row[text_field], add_special_tokens=True), eos_id)
        return SFTExample(ids, [1] * len(ids))
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):
            before, comp = _completion_text(tokenizer, prompt, completion, index)
            p_ids, c_ids = encode(tokenizer, before), encode(tokenizer, comp)
        else:
            p_ids = encode(tokenizer, prompt, add_special_tokens=True)
            c_ids = _with_eos(encode(tokenizer, completion), eos_id)
        return SFTExample(p_ids + c_ids, [0 if only_completion else 1] * len(p_ids) + [1] * len(c_ids))
    if fmt == "messages":
        ids: list[int] = []
        mask: list[int] = []
        for text, is_assistant in conversation_segments(tokenizer, row["messages"], index):
            piece = encode(tokenizer, text)
            ids += piece
            only_assistant = only_completion or assistant_only_loss
            mask += [1 if (is_assistant or not only_assistant) else 0] * len(piece)
        return SFTExample(ids, mask)
    raise DataFormatError(f"SFT cannot use {fmt} rows; give prompt/completion, messages or text rows")


def tokenize_sft(
    rows: list[dict[str, Any]],
    fmt: str,
    tokenizer: Any,
    *,
    max_length: int | None = 1024,
    truncation_mode: str = "keep_start",
    completion_only_loss: bool | None = None,
    assistant_only_loss: bool = False,
    text_field: str = "text",
    eos_token: str | None = None,
) -> tuple[list[SFTExample], int]:
    """(examples, number of rows dropped because no target token survived truncation)."""
    out, dropped = [], 0
    for i, row in enumerate(rows):
        ex = sft_example(
            row,
            fmt,
            tokenizer,
            completion_only_loss=completion_only_loss,
            assistant_only_loss=assistant_only_loss,
            text_field=text_field,
            eos_token=eos_token,
            index=i,
        )
        ids, mask = _truncate(ex.input_ids, ex.loss_mask, max_length, truncation_mode)
        mask = [0] + mask[1:]  # the first token is never predicted
        if len(ids) < 2 or not any(mask):
            dropped += 1
            continue
        out.append(SFTExample(ids, mask))
    return out, dropped


def preference_example(row: dict[str, Any], tokenizer: Any, index: int = 0) -> PreferenceExample:
    """One preference row -> prompt/chosen/rejected token ids (explicit or implicit prompt)."""
    if "prompt" in row:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"])
    if isinstance(chosen, list):
        before, chosen_text = _completion_text(tokenizer, prompt, chosen, index)
        _, rejected_text = _completion_text(tokenizer, prompt, rejected, index)
        return PreferenceExample(
            encode(tokenizer, before), encode(tokenizer, chosen_text), encode(tokenizer, rejected_text)
        )
    eos_id = tokenizer.eos_token_id
    return PreferenceExample(
        encode(tokenizer, prompt, add_special_tokens=True),
        _with_eos(encode(tokenizer, chosen), eos_id),
        _with_eos(encode(tokenizer, rejected), eos_id),
    )


def tokenize_preferences(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    *,
    max_length: int | None = 1024,
    max_prompt_length: int | None = 512,
    max_completion_length: int | None = None,
    truncation_mode: str = "keep_end",
) -> tuple[list[PreferenceExample], int]:
    """(pairs, number dropped). The prompt is cut to `max_prompt_length` (keep_end: its last tokens), the
    completions to `max_completion_length`, then to what `max_length` leaves after the prompt; a pair left
    with an empty prompt or completion is dropped."""
    out, dropped = [], 0
    for i, row in enumerate(rows):
        ex = preference_example(row, tokenizer, i)
        p, c, r = ex.prompt_ids, ex.chosen_ids, ex.rejected_ids
        if max_prompt_length is not None and len(p) > max_prompt_length:
            p = p[-max_prompt_length:] if truncation_mode == "keep_end" else p[:max_prompt_length]
        if max_completion_length is not None:
            c, r = c[:max_completion_length], r[:max_completion_length]
        if max_length is not None:
            room = max_length - len(p)
            c, r = c[: max(room, 0)], r[: max(room, 0)]
        if not p or not c or not r:
            dropped += 1
            continue
        out.append(PreferenceExample(p, c, r))
    return out, dropped
