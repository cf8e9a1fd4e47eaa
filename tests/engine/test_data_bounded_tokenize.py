"""Truncation to the configured lengths happens before tokenising: the tokenizer never sees more than the
character budget of the limit, and the tokens kept are exactly those of tokenising the whole row and
cutting afterwards."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from engine.data.reward_pairs import tokenize_reward_pairs
from engine.data.sources import read_file
from engine.data.tokenize import char_budget, max_token_chars, tokenize_preferences, tokenize_sft
from engine.data.unpaired import tokenize_unpaired
from engine.rollout.prompts import PromptEncoder


class Recording:
    """A tokenizer that records the length of every text it is asked to tokenise."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[int] = []

    def __call__(self, text: str, **kw: Any) -> Any:
        self.seen.append(len(text))
        return self.inner(text, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def bpe_tokenizer() -> Any:
    """A byte-level BPE with real merges (trained here on a small corpus), so cuts inside words matter."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    words = ["train", "model", "token", "loss", "reward", "policy", "the", "of", "and", "gradient"]
    corpus = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(200)]
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<eos>", bos_token="<bos>", pad_token="<eos>"
    )
    from engine.models import CHATML_TEMPLATE

    tok.chat_template = CHATML_TEMPLATE
    return tok


def _text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    words = ["train", "model", "tokens", "lossy", "rewarding", "policy", "the", "of", "and", "gradients", "x"]
    return " ".join(rng.choice(words) for _ in range(n_words))


def _full(tok: Any, text: str, special: bool = False) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_text_rows_keep_exactly_the_tokens_of_the_whole_row(bpe_tokenizer, mode):
    tok = Recording(bpe_tokenizer)
    rows = [{"text": _text(3000, seed)} for seed in range(5)]
    [*examples], _ = tokenize_sft(rows, "text", tok, max_length=50, truncation_mode=mode)
    budget = char_budget(bpe_tokenizer, 50)
    assert max(tok.seen) <= budget < len(rows[0]["text"])
    for row, ex in zip(rows, examples, strict=True):
        whole = _full(bpe_tokenizer, row["text"]) + [bpe_tokenizer.eos_token_id]
        assert ex.input_ids == (whole[:50] if mode == "keep_start" else whole[-50:])


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_prompt_completion_rows_keep_exactly_the_tokens_of_the_whole_row(bpe_tokenizer, mode):
    tok = Recording(bpe_tokenizer)
    # the long side is the one the cut runs through, so both prompt and completion tokens are kept
    short, long = _text(8, 1), _text(2000, 2)
    row = (
        {"prompt": short, "completion": " " + long}
        if mode == "keep_start"
        else {"prompt": long, "completion": " " + short}
    )
    [ex], _ = tokenize_sft([row], "prompt_completion", tok, max_length=40, truncation_mode=mode)
    assert max(tok.seen) <= char_budget(bpe_tokenizer, 40)
    p = _full(bpe_tokenizer, row["prompt"], special=True)
    c = _full(bpe_tokenizer, row["completion"]) + [bpe_tokenizer.eos_token_id]
    whole, mask = p + c, [0] * len(p) + [1] * len(c)
    cut = slice(0, 40) if mode == "keep_start" else slice(len(whole) - 40, None)
    assert ex.input_ids == whole[cut]
    assert ex.loss_mask == [0] + mask[cut][1:]


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_conversations_render_and_tokenise_only_the_budget(tiny_tokenizer, mode):
    tok = Recording(tiny_tokenizer)
    messages = [
        {"role": "user", "content": "r" * 10},
        {"role": "assistant", "content": "a" * 200_000},
        {"role": "user", "content": "q" * 200_000},
        {"role": "assistant", "content": "b" * 200_000},
    ]
    [ex], _ = tokenize_sft([{"messages": messages}], "messages", tok, max_length=30, truncation_mode=mode)
    assert max(tok.seen) <= char_budget(tiny_tokenizer, 30)
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    whole = _full(tiny_tokenizer, rendered)
    assert ex.input_ids == (whole[:30] if mode == "keep_start" else whole[-30:])
    assert any(ex.loss_mask)


def test_preference_pairs_keep_exactly_the_tokens_of_the_whole_pair(bpe_tokenizer):
    tok = Recording(bpe_tokenizer)
    row = {"prompt": _text(3000, 3), "chosen": " " + _text(3000, 4), "rejected": " " + _text(5, 5)}
    [pair], dropped = tokenize_preferences(
        [row],
        tok,
        max_length=60,
        max_prompt_length=20,
        max_completion_length=None,
        truncation_mode="keep_end",
    )
    assert dropped == 0
    assert max(tok.seen) <= char_budget(bpe_tokenizer, 61)  # one more than kept: "too long" stays visible
    eos = bpe_tokenizer.eos_token_id
    assert pair.prompt_ids == _full(bpe_tokenizer, row["prompt"], special=True)[-20:]
    assert pair.chosen_ids == (_full(bpe_tokenizer, row["chosen"]) + [eos])[:40]
    assert pair.rejected_ids == _full(bpe_tokenizer, row["rejected"]) + [eos]


def test_unpaired_and_reward_rows_are_bounded_too(bpe_tokenizer):
    tok = Recording(bpe_tokenizer)
    long = _text(5000, 6)
    [ex], _ = tokenize_unpaired(
        [{"prompt": long, "completion": " " + long, "label": True}],
        "unpaired",
        tok,
        max_length=30,
        max_prompt_length=10,
    )
    assert ex.prompt_ids == _full(bpe_tokenizer, long, special=True)[-10:]
    assert ex.completion_ids == _full(bpe_tokenizer, " " + long)[:20]
    # reward pairs drop a side longer than max_length; the bound still sees that it is too long
    kept, dropped = tokenize_reward_pairs(
        [
            {"prompt": "a", "chosen": " " + long, "rejected": " b"},
            {"prompt": "a", "chosen": " c", "rejected": " b"},
        ],
        tok,
        max_length=30,
    )
    assert (len(kept), dropped) == (1, 1)
    assert max(tok.seen) <= char_budget(bpe_tokenizer, 31)


def test_online_prompts_keep_the_last_tokens_of_the_bounded_text(bpe_tokenizer):
    tok = Recording(bpe_tokenizer)
    text = _text(4000, 7)
    ids = PromptEncoder(tok, max_prompt_length=16).encode(text)
    assert ids == _full(bpe_tokenizer, text)[-16:]
    chat = [{"role": "user", "content": text}]
    ids = PromptEncoder(tok, max_prompt_length=16).encode(chat)
    rendered = bpe_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ids == _full(bpe_tokenizer, rendered)[-16:]
    assert max(tok.seen) <= char_budget(bpe_tokenizer, 16)


def test_a_multi_megabyte_row_read_from_a_file_reaches_the_tokenizer_bounded(tmp_path, tiny_tokenizer):
    """A single 12 MB row (under the per-row limit) costs the tokenizer the budget of max_length only."""
    path = tmp_path / "big.jsonl"
    big = "x" * (12 * 1024 * 1024)
    path.write_text(json.dumps({"prompt": "question? " * 4, "completion": big}) + "\n")
    rows = read_file(path)
    tok = Recording(tiny_tokenizer)
    [ex], _ = tokenize_sft(rows, "prompt_completion", tok, max_length=128)
    assert len(ex.input_ids) == 128
    assert tok.seen and max(tok.seen) <= char_budget(tiny_tokenizer, 128) == (128 + 8) * max_token_chars(
        tiny_tokenizer
    )
