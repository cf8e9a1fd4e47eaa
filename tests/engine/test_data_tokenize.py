import pytest
import torch

from engine.data.collate import collate_preferences, collate_sft
from engine.data.formats import DataFormatError
from engine.data.tokenize import conversation_segments, tokenize_preferences, tokenize_sft


def _targets(tok, ex):
    return tok.decode([i for i, m in zip(ex.input_ids, ex.loss_mask, strict=True) if m])


def test_standard_prompt_completion_masks_the_prompt_and_appends_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    [ex], dropped = tokenize_sft([{"prompt": "Q: 1+1?", "completion": " 2"}], "prompt_completion", tok)
    assert dropped == 0
    assert tok.decode(ex.input_ids) == "Q: 1+1? 2<|im_end|>"
    assert ex.loss_mask == [0] * len("Q: 1+1?") + [1] * (len(" 2") + 1)


def test_completion_only_loss_false_trains_on_every_token_but_the_first(tiny_tokenizer):
    [ex], _ = tokenize_sft(
        [{"prompt": "ab", "completion": "c"}], "prompt_completion", tiny_tokenizer, completion_only_loss=False
    )
    assert ex.loss_mask == [0, 1, 1, 1]


def test_conversational_prompt_completion_masks_the_templated_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    row = {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "yo"}],
    }
    [ex], _ = tokenize_sft([row], "prompt_completion", tok)
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex.input_ids) == prompt + "yo<|im_end|>\n"
    assert _targets(tok, ex) == "yo<|im_end|>\n"


def test_messages_train_on_every_assistant_turn_only(tiny_tokenizer):
    tok = tiny_tokenizer
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    [ex], _ = tokenize_sft([{"messages": msgs}], "messages", tok)
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(ex.input_ids) == rendered
    assert _targets(tok, ex) == "b<|im_end|>\nd<|im_end|>\n"
    # segments concatenate back to the rendered conversation
    assert "".join(t for t, _ in conversation_segments(tok, msgs)) == rendered


def test_text_rows_train_on_all_tokens(tiny_tokenizer):
    [ex], _ = tokenize_sft([{"text": "abc"}], "text", tiny_tokenizer)
    assert ex.loss_mask == [0, 1, 1, 1]  # a, b, c, eos; the first token has nothing before it


def test_truncation_keeps_the_start_and_drops_rows_without_targets(tiny_tokenizer):
    rows = [{"prompt": "abcdef", "completion": "gh"}, {"prompt": "a", "completion": "bc"}]
    out, dropped = tokenize_sft(rows, "prompt_completion", tiny_tokenizer, max_length=4)
    assert dropped == 1
    # "abcdefgh<eos>" cut to "abcd" has no completion token left; "abc<eos>" fits
    assert tiny_tokenizer.decode(out[0].input_ids) == "abc<|im_end|>"


def test_template_that_is_not_prefix_consistent_is_refused(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    # a template that prints the number of messages first: earlier turns render differently later
    tok.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(DataFormatError, match="prefix"):
        tokenize_sft([{"messages": msgs}], "messages", tok)


def test_preference_pairs_share_the_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [
        {"prompt": "Q?", "chosen": " yes", "rejected": " no"},
        {"chosen": "Q? A: good", "rejected": "Q? A: bad"},
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "y"}],
            "rejected": [{"role": "assistant", "content": "n"}],
        },
    ]
    pairs, dropped = tokenize_preferences(rows, tok)
    assert dropped == 0
    assert (tok.decode(pairs[0].prompt_ids), tok.decode(pairs[0].chosen_ids)) == ("Q?", " yes<|im_end|>")
    assert (tok.decode(pairs[1].prompt_ids), tok.decode(pairs[1].rejected_ids)) == ("Q? A:", " bad<|im_end|>")
    assert tok.decode(pairs[2].prompt_ids).endswith("<|im_start|>assistant\n")
    assert tok.decode(pairs[2].chosen_ids) == "y<|im_end|>\n"


def test_preference_truncation_keeps_the_end_of_the_prompt(tiny_tokenizer):
    rows = [{"prompt": "abcdef", "chosen": "xyz", "rejected": "uv"}]
    [pair], _ = tokenize_preferences(rows, tiny_tokenizer, max_prompt_length=3, max_length=5)
    assert tiny_tokenizer.decode(pair.prompt_ids) == "def"
    assert tiny_tokenizer.decode(pair.chosen_ids) == "xy" and tiny_tokenizer.decode(pair.rejected_ids) == "uv"


def test_collate_sft_pads_right_and_keeps_the_smallest_covering_suffix(tiny_tokenizer):
    rows = [{"prompt": "abcd", "completion": "e"}, {"prompt": "a", "completion": "bc"}]
    examples, _ = tokenize_sft(rows, "prompt_completion", tiny_tokenizer)
    batch = collate_sft(examples, pad_id=0)
    # row lengths 6 and 4 (eos appended); targets start at 4 and 1 -> K = T - 1 = 5
    assert batch.input_ids.shape == (2, 6)
    assert batch.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch.logits_to_keep == 5
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.num_tokens == 5


def test_collate_preferences_stacks_chosen_then_rejected(tiny_tokenizer):
    pairs, _ = tokenize_preferences(
        [
            {"prompt": "ab", "chosen": "c", "rejected": "de"},
            {"prompt": "a", "chosen": "bcd", "rejected": "e"},
        ],
        tiny_tokenizer,
    )
    pb = collate_preferences(pairs, pad_id=0)
    t = pb.tokens
    assert t.input_ids.shape[0] == 4 and pb.num_pairs == 2
    assert pb.chosen_lengths.tolist() == [2.0, 4.0] and pb.rejected_lengths.tolist() == [3.0, 2.0]
    assert pb.num_chosen_tokens == 6
    per_row = t.loss_mask.sum(-1).tolist()
    assert per_row == [2.0, 4.0, 3.0, 2.0]
    # every target position holds a completion token of its row
    full = torch.zeros_like(t.input_ids, dtype=torch.float32)
    full[:, -t.logits_to_keep :] = t.loss_mask
    assert tiny_tokenizer.decode(t.input_ids[0][full[0] > 0]) == "c<|im_end|>"


def test_messages_loss_on_all_tokens_only_when_asked(tiny_tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    [all_tokens], _ = tokenize_sft(
        [{"messages": msgs}], "messages", tiny_tokenizer, completion_only_loss=False
    )
    assert sum(all_tokens.loss_mask) == len(all_tokens.input_ids) - 1
    [assistant], _ = tokenize_sft(
        [{"messages": msgs}], "messages", tiny_tokenizer, completion_only_loss=False, assistant_only_loss=True
    )
    assert _targets(tiny_tokenizer, assistant) == "b<|im_end|>\n"
