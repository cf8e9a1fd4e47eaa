"""Chat templates and tokenization with loss masks, for supervised rows and preference pairs.

    examples, dropped = tokenize_sft(rows, "messages", tokenizer, max_length=1024)
    pairs, dropped = tokenize_preferences(rows, tokenizer, max_prompt_length=512, max_length=1024)

Pieces are tokenized separately and concatenated (prompt, then completion), so the completion tokens are
exactly what the model would generate after that prompt, and the mask boundary is exact. Conversations are
rendered by the tokenizer's chat template; the text of each assistant turn is found by rendering the
conversation up to that turn with and without it, which works for any template that renders earlier turns
identically when later ones are added (a template that does not raises a clear error). Standard (string)
completions get the EOS token appended when missing. Batching and padding live in `collate.py`.

Memory is bounded by the configured lengths, not by the row: before the tokenizer sees a text (or a chat
template renders a message), the text is cut to a character budget of `(limit + 8) x` the longest token
of the vocabulary (no `limit` tokens can span more characters), from the side the truncation keeps; the
tokens are then cut exactly. A 10 MB row with `max_length` 1024 costs a few hundred kilobytes.
"""

from __future__ import annotations

import weakref
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


SLACK_TOKENS = 8  # tokens of characters kept beyond the limit, so the cut never changes the kept tokens
_token_chars: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def max_token_chars(tokenizer: Any) -> int:
    """The most characters one token of `tokenizer` can stand for (its longest vocabulary entry; byte-level
    tokens are at least as long as the text they encode)."""
    if tokenizer not in _token_chars:
        _token_chars[tokenizer] = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
    return _token_chars[tokenizer]


def char_budget(tokenizer: Any, limit: int | None) -> int | None:
    """Characters that certainly hold `limit` tokens (and some to spare); None: no limit."""
    return None if limit is None else (max(limit, 0) + SLACK_TOKENS) * max_token_chars(tokenizer)


def cap_text(tokenizer: Any, text: str, limit: int | None, keep: str = "start") -> str:
    """`text` cut to the character budget of `limit` tokens, keeping its start or its end."""
    budget = char_budget(tokenizer, limit)
    if budget is None or len(text) <= budget:
        return text
    return text[-budget:] if keep == "end" else text[:budget]


def cap_messages(tokenizer: Any, messages: Any, limit: int | None, keep: str = "start") -> Any:
    """Chat messages whose string contents are cut to the character budget of `limit` tokens."""
    if limit is None or not isinstance(messages, list):
        return messages
    return [
        {**m, "content": cap_text(tokenizer, m["content"], limit, keep)}
        if isinstance(m, dict) and isinstance(m.get("content"), str)
        else m
        for m in messages
    ]


def encode(
    tokenizer: Any,
    text: str,
    add_special_tokens: bool = False,
    *,
    limit: int | None = None,
    keep: str = "start",
) -> list[int]:
    """Token ids of `text`; with `limit`, only its first (keep="start") or last (keep="end") `limit` tokens,
    and the tokenizer only ever sees the character budget of `limit` tokens."""
    ids = list(
        tokenizer(cap_text(tokenizer, text, limit, keep), add_special_tokens=add_special_tokens)["input_ids"]
    )
    if limit is None or len(ids) <= limit:
        return ids
    return ids[-limit:] if keep == "end" and limit > 0 else ids[:limit]


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


def _keep(truncation_mode: str) -> str:
    return "end" if truncation_mode == "keep_end" else "start"


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
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> SFTExample:
    """One row -> tokens + loss mask.

    prompt_completion: loss on the completion only (unless `completion_only_loss` is False).
    messages: loss on every assistant turn, its end-of-turn tokens included (all tokens if
    `completion_only_loss` is False and `assistant_only_loss` is not set). text: loss on every token.
    With `max_length`, every piece is tokenized only as far as the cut to `max_length` tokens
    (`truncation_mode`) can reach, so the result may be longer than `max_length` but cutting it gives
    exactly the cut of the whole row.
    """
    eos_id = _eos_id(tokenizer, eos_token)
    only_completion = completion_only_loss is not False
    keep = _keep(truncation_mode)

    def enc(text: str, special: bool = False) -> list[int]:
        return encode(tokenizer, text, add_special_tokens=special, limit=max_length, keep=keep)

    if fmt == "text":
        ids = _with_eos(enc(row[text_field], special=True), eos_id)
        return SFTExample(ids, [1] * len(ids))
    if fmt == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):
            before, comp = _completion_text(
                tokenizer,
                cap_messages(tokenizer, prompt, max_length, keep),
                cap_messages(tokenizer, completion, max_length, keep),
                index,
            )
            p_ids, c_ids = enc(before), enc(comp)
        else:
            p_ids = enc(prompt, special=True)
            c_ids = _with_eos(enc(completion), eos_id)
        return SFTExample(p_ids + c_ids, [0 if only_completion else 1] * len(p_ids) + [1] * len(c_ids))
    if fmt == "messages":
        only_assistant = only_completion or assistant_only_loss
        segments = conversation_segments(
            tokenizer, cap_messages(tokenizer, row["messages"], max_length, keep), index
        )
        if keep == "end":  # the last max_length tokens: walk the pieces backwards
            segments = segments[::-1]
        ids: list[int] = []
        mask: list[int] = []
        for text, is_assistant in segments:
            room = None if max_length is None else max_length - len(ids)
            if room is not None and room <= 0:
                break
            piece = encode(tokenizer, text, limit=room, keep=keep)
            bit = 1 if (is_assistant or not only_assistant) else 0
            if keep == "end":
                ids, mask = piece + ids, [bit] * len(piece) + mask
            else:
                ids, mask = ids + piece, mask + [bit] * len(piece)
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
            max_length=max_length,
            truncation_mode=truncation_mode,
        )
        ids, mask = _truncate(ex.input_ids, ex.loss_mask, max_length, truncation_mode)
        mask = [0] + mask[1:]  # the first token is never predicted
        if len(ids) < 2 or not any(mask):
            dropped += 1
            continue
        out.append(SFTExample(ids, mask))
    return out, dropped


def preference_example(
    row: dict[str, Any],
    tokenizer: Any,
    index: int = 0,
    *,
    prompt_limit: int | None = None,
    completion_limit: int | None = None,
    prompt_keep: str = "end",
) -> PreferenceExample:
    """One preference row -> prompt/chosen/rejected token ids (explicit or implicit prompt).

    With limits, the prompt is tokenized only as far as its first/last (`prompt_keep`) `prompt_limit`
    tokens and each completion as far as its first `completion_limit` tokens (EOS appended after)."""
    if "prompt" in row:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"])

    def enc(text: str, limit: int | None, keep: str, special: bool = False) -> list[int]:
        return encode(tokenizer, text, add_special_tokens=special, limit=limit, keep=keep)

    if isinstance(chosen, list):
        prompt = cap_messages(tokenizer, prompt, prompt_limit, prompt_keep)
        chosen = cap_messages(tokenizer, chosen, completion_limit)
        rejected = cap_messages(tokenizer, rejected, completion_limit)
        before, chosen_text = _completion_text(tokenizer, prompt, chosen, index)
        _, rejected_text = _completion_text(tokenizer, prompt, rejected, index)
        return PreferenceExample(
            enc(before, prompt_limit, prompt_keep),
            enc(chosen_text, completion_limit, "start"),
            enc(rejected_text, completion_limit, "start"),
        )
    eos_id = tokenizer.eos_token_id
    return PreferenceExample(
        enc(prompt, prompt_limit, prompt_keep, special=True),
        _with_eos(enc(chosen, completion_limit, "start"), eos_id),
        _with_eos(enc(rejected, completion_limit, "start"), eos_id),
    )


def pair_limits(
    max_length: int | None, max_prompt_length: int | None, max_completion_length: int | None
) -> tuple[int | None, int | None]:
    """(prompt, completion) token counts that a cut to these lengths can keep, plus one so that "too long"
    stays visible: a pair's pieces never need more tokens than this."""
    prompt = min((n for n in (max_prompt_length, max_length) if n is not None), default=None)
    completion = min((n for n in (max_completion_length, max_length) if n is not None), default=None)
    return (
        None if prompt is None else prompt + 1,
        None if completion is None else completion + 1,
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
    prompt_limit, completion_limit = pair_limits(max_length, max_prompt_length, max_completion_length)
    out, dropped = [], 0
    for i, row in enumerate(rows):
        ex = preference_example(
            row,
            tokenizer,
            i,
            prompt_limit=prompt_limit,
            completion_limit=completion_limit,
            prompt_keep=_keep(truncation_mode),
        )
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
